//! Fleet-wide pauses as they happen (design/fleet.md §4.3): `pause.lua` publishes each pause
//! on the app's `ctl` channel, and every gateway listening there pauses the same budgets
//! here, voiding the slots it holds. Without that, a gateway would still use the slots it
//! reserved before the pause (up to the look-ahead, 250 ms), arriving at Tencent after the
//! 60007. A message lost (the subscription down) costs only that: the pause in Redis still
//! stops every new reservation, and the moved TAT keeps the first call after it in line.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;

use redis::aio::ConnectionManager;

use super::budget::FleetBudget;
use crate::throttle::{PauseReason, Throttle};

/// How often the subscription is checked with a PING (a silent partition is found within
/// about twice this), and how long a reconnect waits.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(1);

/// What a pause message from another gateway acts on.
#[derive(Debug)]
pub(super) struct Control {
    pub(super) local: Weak<Throttle>,
    /// Each budget's `(app, slot)` in `local`, and the budget (for its Redis keys, which a
    /// pass-through budget gets on its command's first call).
    pub(super) budgets: Vec<(u32, u32, Arc<FleetBudget<ConnectionManager>>)>,
    /// This gateway's id in its own messages.
    pub(super) id: u64,
}

/// The tag `pause.lua` publishes after the key and the time left: the reason and the sender.
pub(super) fn tag(reason: PauseReason, id: u64) -> String {
    let reason = match reason {
        PauseReason::FrequencyLimit => "limit",
        PauseReason::UserSigRejected => "usersig",
    };
    format!("{reason} {id}")
}

impl Control {
    /// The apps' `ctl` channels, each once.
    fn channels(&self) -> Vec<String> {
        // Every app has catalogue budgets, named from the start: each app's channel is here.
        let mut channels: Vec<String> = self
            .budgets
            .iter()
            .filter_map(|(_, _, budget)| Some(budget.keys_if_named()?.ctl.clone()))
            .collect();
        channels.sort_unstable();
        channels.dedup();
        channels
    }

    /// `<pause key> <µs left> <reason> <sender>`: pauses here every budget under that key.
    /// Returns whether the message was applied (not malformed, not this gateway's own).
    pub(super) fn on_message(&self, payload: &[u8]) -> bool {
        let Some(local) = self.local.upgrade() else {
            return false;
        };
        let Ok(payload) = std::str::from_utf8(payload) else {
            return false;
        };
        let mut fields = payload.split(' ');
        let (Some(key), Some(left), Some(reason), Some(sender), None) = (
            fields.next(),
            fields.next().and_then(|us| us.parse::<u64>().ok()),
            fields.next(),
            fields.next().and_then(|id| id.parse::<u64>().ok()),
            fields.next(),
        ) else {
            return false;
        };
        if sender == self.id {
            return false; // ours: paused here already, with its strike
        }
        let left = Duration::from_micros(left);
        let reason = match reason {
            "usersig" => PauseReason::UserSigRejected,
            _ => PauseReason::FrequencyLimit,
        };
        let mut applied = false;
        for (app, slot, fleet) in &self.budgets {
            let Some(keys) = fleet.keys_if_named() else {
                continue;
            };
            let budget = local.at(*app, *slot);
            if key == keys.lockout {
                budget.lock_out(left);
            } else if key == keys.command_pause || key == keys.app_pause {
                budget.hold(left, reason);
            } else {
                continue;
            }
            applied = true;
        }
        applied
    }
}

/// Subscribes a new connection of `client` to `channels`, each step bounded by
/// [`PING_EVERY`]; `None` if Redis did not answer.
pub(crate) async fn subscribe(
    client: &redis::Client,
    channels: &[String],
) -> Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    let pubsub = tokio::time::timeout(PING_EVERY, client.get_async_pubsub())
        .await
        .ok()?
        .ok()?;
    let (mut sink, stream) = pubsub.split();
    for channel in channels {
        tokio::time::timeout(PING_EVERY, sink.subscribe(channel))
            .await
            .ok()?
            .ok()?;
    }
    Some((sink, stream))
}

/// The next message, or `None` once the subscription is lost (closed, or a PING every
/// [`PING_EVERY`] went unanswered).
pub(crate) async fn next_message(
    sink: &mut redis::aio::PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    heartbeat: &mut tokio::time::Interval,
) -> Option<redis::Msg> {
    loop {
        tokio::select! {
            message = stream.next() => return message,
            _ = heartbeat.tick() => {
                let ping = sink.ping::<redis::Value>();
                if !matches!(tokio::time::timeout(PING_EVERY, ping).await, Ok(Ok(_))) {
                    return None;
                }
            }
        }
    }
}

/// Listens on the apps' `ctl` channels for as long as the throttle lives, reconnecting every
/// [`PING_EVERY`] while Redis cannot be reached.
pub(super) async fn listen(client: redis::Client, control: Arc<Control>) {
    let channels = control.channels();
    let mut is_first = true;
    while control.local.strong_count() > 0 {
        if let Some((mut sink, mut stream)) = subscribe(&client, &channels).await {
            if !is_first {
                tracing::info!("fleet: listening for pauses again");
            }
            let mut heartbeat = tokio::time::interval(PING_EVERY);
            while let Some(message) = next_message(&mut sink, &mut stream, &mut heartbeat).await {
                if control.local.strong_count() == 0 {
                    return;
                }
                control.on_message(message.get_payload_bytes());
            }
            tracing::warn!(
                "fleet: lost the Redis subscription for pauses; reconnecting (pauses still \
                 reach this gateway through its reservations)"
            );
        }
        is_first = false;
        tokio::time::sleep(PING_EVERY).await;
    }
}
