//! The tier's subscription to its apps' `inval` and `fill` channels, and the re-sending of
//! invalidations Redis did not take.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::{lock, Inner, REPUBLISH_EVERY};
use crate::fleet::{next_message, subscribe, PING_EVERY};

impl Inner {
    /// An `inval` message from another gateway: `<command> <gateway id>`.
    pub(super) fn on_invalidation(&self, channel: &str, payload: &[u8]) {
        let Some(cache) = self.cache.get().and_then(Weak::upgrade) else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        let Some((name, sender)) = payload.split_once(' ') else {
            return;
        };
        if sender.parse::<u64>() == Ok(self.id) {
            return; // our own: already done here
        }
        let Some(command) = self.commands.iter().position(|c| *c == name) else {
            return;
        };
        self.metrics.received.inc();
        for (app, &sdkappid) in self.sdkappids.iter().enumerate() {
            if channel == format!("{}:inval", self.app_tag(sdkappid)) {
                cache.invalidate_here(Some(app as u32), Some(command as u32), |_, _| {});
            }
        }
    }

    /// A `fill` message: `<notice> ok|failed`.
    pub(super) fn on_fill(&self, payload: &[u8]) {
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        let Some((notice, outcome)) = payload.rsplit_once(' ') else {
            return;
        };
        if let Some(wait) = lock(&self.waiting).get(notice) {
            if outcome == "failed" {
                wait.has_failed.store(true, Ordering::Release);
            }
            wait.notify.notify_one();
        }
    }

    pub(super) fn wake_every_waiter(&self) {
        for wait in lock(&self.waiting).values() {
            wait.notify.notify_one();
        }
    }

    pub(super) fn channels(&self) -> Vec<String> {
        let mut sdkappids = self.sdkappids.clone();
        sdkappids.sort_unstable();
        sdkappids.dedup();
        sdkappids
            .into_iter()
            .flat_map(|sdkappid| {
                let tag = self.app_tag(sdkappid);
                [format!("{tag}:inval"), format!("{tag}:fill")]
            })
            .collect()
    }
}

/// Keeps this gateway subscribed to its apps' `inval` and `fill` channels, for as long as the
/// tier lives. Every subscription drops every answer cached here: messages published while it
/// was not subscribed are lost (even before the first: requests are served meanwhile).
pub(super) async fn listen(inner: Weak<Inner>) {
    let mut is_first = true;
    loop {
        let Some(me) = inner.upgrade() else { return };
        if let Some((mut sink, mut stream)) = subscribe(&me.client, &me.channels()).await {
            if let Some(cache) = me.cache.get().and_then(Weak::upgrade) {
                cache.invalidate_here(None, None, |_, _| {});
            }
            if !is_first {
                tracing::info!(
                    "shared cache: subscribed again to Redis; answers cached here while \
                     it was not were dropped"
                );
            }
            me.load_scripts().await;
            me.metrics.subscribed.set(1);
            me.wake_every_waiter();
            drop(me);
            let mut heartbeat = tokio::time::interval(PING_EVERY);
            while let Some(message) = next_message(&mut sink, &mut stream, &mut heartbeat).await {
                let Some(me) = inner.upgrade() else { return };
                let channel = message.get_channel_name();
                if channel.ends_with(":fill") {
                    me.on_fill(message.get_payload_bytes());
                } else {
                    me.on_invalidation(channel, message.get_payload_bytes());
                }
            }
            let Some(me) = inner.upgrade() else { return };
            me.metrics.subscribed.set(0);
            // Messages may be lost from now on: answers cached here count as outdated
            // from the moment the subscription is back (see above).
            tracing::warn!("shared cache: lost the Redis subscription; reconnecting");
        }
        is_first = false;
        tokio::time::sleep(PING_EVERY).await;
    }
}

/// Re-sends pending invalidations every second until none is left.
pub(super) async fn republish(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REPUBLISH_EVERY).await;
        let Some(me) = inner.upgrade() else { return };
        if me.republish_pending().await {
            me.is_republishing.store(false, Ordering::Release);
            // One added after the last pass but before the flag fell is picked up here.
            if lock(&me.pending).is_empty() || me.is_republishing.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}
