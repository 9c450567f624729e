//! What the sandbox keeps about the requests it received, for tests to assert on: per-command
//! call counts, the busiest sliding second, and the last requests with their query and body.
//!
//! Invariant: nothing here grows with what clients send (issue 7, F10). What a request may
//! leave behind is decided by [`Tracking`] before anything is kept:
//! - a malformed path, or a name outside the catalogue from a caller that is not authenticated,
//!   adds only to the total;
//! - a catalogue command is counted for every caller: a fixed set of names;
//! - a name outside the catalogue is counted only for an authenticated caller, and at most
//!   [`MAX_UNLISTED_COMMANDS`] such names are tracked;
//! - a query and body are recorded only for an authenticated caller: at most
//!   [`RECORDED_PER_COMMAND`] per command and [`MAX_RECORDED_BYTES`] in all, oldest first out;
//! - each sliding window holds at most `MAX_WINDOW_ARRIVALS` arrivals (`window`).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;

use bytes::Bytes;
use tokio::time::Instant;

use super::window::SlidingWindow;
use super::RecordedRequest;

/// Most requests recorded per command for [`super::Sandbox::requests`].
pub const RECORDED_PER_COMMAND: usize = 1000;

/// Most bytes all recorded requests take together ([`RecordedRequest::footprint`]); 16 bodies
/// of the largest size the sandbox reads fit.
pub const MAX_RECORDED_BYTES: usize = 16 * 1024 * 1024;

/// Most command names outside the sandbox's catalogue that get counters (authenticated callers
/// only); calls of further names add only to the total.
pub const MAX_UNLISTED_COMMANDS: usize = 64;

/// A request's command name as the stats may keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CommandName {
    /// In the sandbox's catalogue: a name from a fixed set.
    Listed(&'static str),
    /// Outside the catalogue; comes from an authenticated caller.
    Unlisted(String),
}

/// What a request may leave behind, decided before anything about it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tracking {
    /// A malformed path, or an unlisted name from a caller that is not authenticated: the
    /// request adds to the total and nothing else.
    Untracked,
    /// A catalogue command from a caller that is not authenticated: counted, never recorded.
    Counted(&'static str),
    /// An authenticated caller: counted and recorded under this name.
    Recorded(CommandName),
}

/// How much the sandbox holds about requests and their effects; every field has a fixed bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Command names with counters: catalogue ones plus at most [`MAX_UNLISTED_COMMANDS`].
    pub commands: usize,
    /// Requests recorded for [`super::Sandbox::requests`], all commands together.
    pub recorded_requests: usize,
    /// Their footprint in bytes, at most [`MAX_RECORDED_BYTES`].
    pub recorded_bytes: usize,
    /// Tencent-side frequency windows: one per (app, catalogue command) an admin has called.
    pub quota_windows: usize,
    /// Chatbots over all apps, at most `MAX_ROBOTS_PER_APP` each.
    pub robots: usize,
    /// Imported accounts over all apps, at most `MAX_ACCOUNTS_PER_APP` each.
    pub accounts: usize,
}

/// Everything received since start or the last `reset_counters`. Lives behind a mutex.
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Requests received, malformed and unauthenticated ones included; one number whatever
    /// clients send.
    total: u64,
    /// Counters per command name, keyed only as [`Tracking`] allows.
    commands: HashMap<Cow<'static, str>, CommandStats>,
    /// How many keys of `commands` are unlisted names; at most [`MAX_UNLISTED_COMMANDS`].
    unlisted: usize,
    /// Sum of the footprints of every recorded request; at most [`MAX_RECORDED_BYTES`].
    recorded_bytes: usize,
    /// Sequence number of the next recorded request: the oldest over all commands is evicted
    /// first when the byte budget is spent.
    next_seq: u64,
}

#[derive(Debug, Default)]
struct CommandStats {
    calls: u64,
    /// Arrivals in the last second, for `max_in_window`.
    window: SlidingWindow,
    max_in_window: u64,
    /// The last [`RECORDED_PER_COMMAND`] requests, oldest first, with their sequence numbers.
    recorded: VecDeque<(u64, RecordedRequest)>,
}

impl RecordedRequest {
    /// Bytes this record holds: the struct, its strings and the body. The body is copied when
    /// recorded, so its length is what it keeps alive.
    pub fn footprint(&self) -> usize {
        let query: usize = self
            .query
            .iter()
            .map(|(name, value)| size_of::<(String, String)>() + name.len() + value.len())
            .sum();
        size_of::<(u64, RecordedRequest)>()
            + self.method.len()
            + self.path.len()
            + query
            + self.body.len()
    }
}

impl Stats {
    /// Counts an arrival at `now` as `tracking` allows.
    pub(super) fn arrive(&mut self, tracking: &Tracking, now: Instant) {
        self.total += 1;
        let name = match tracking {
            Tracking::Untracked => return,
            Tracking::Counted(name) => CommandName::Listed(name),
            Tracking::Recorded(name) => name.clone(),
        };
        if let Some(entry) = self.entry(name) {
            entry.calls += 1;
            let in_window = entry.window.arrive(now) as u64;
            entry.max_in_window = entry.max_in_window.max(in_window);
        }
    }

    /// Records an authenticated request under `name`, evicting the oldest records while the
    /// command holds more than [`RECORDED_PER_COMMAND`] or all hold more than
    /// [`MAX_RECORDED_BYTES`].
    pub(super) fn record(&mut self, name: &CommandName, mut request: RecordedRequest) {
        // A body sliced from hyper's read buffer would keep the whole buffer alive; a copy
        // keeps exactly what the footprint counts.
        request.body = Bytes::copy_from_slice(&request.body);
        let bytes = request.footprint();
        let seq = self.next_seq;
        let Some(entry) = self.entry(name.clone()) else {
            return;
        };
        entry.recorded.push_back((seq, request));
        let evicted = if entry.recorded.len() > RECORDED_PER_COMMAND {
            entry.recorded.pop_front().map_or(0, |(_, r)| r.footprint())
        } else {
            0
        };
        self.next_seq += 1;
        self.recorded_bytes = self.recorded_bytes + bytes - evicted;
        while self.recorded_bytes > MAX_RECORDED_BYTES {
            let Some(oldest) = self
                .commands
                .values_mut()
                .filter(|c| !c.recorded.is_empty())
                .min_by_key(|c| c.recorded.front().map(|(seq, _)| *seq))
            else {
                break;
            };
            if let Some((_, r)) = oldest.recorded.pop_front() {
                self.recorded_bytes -= r.footprint();
            }
        }
    }

    /// The counters for `name`, made if there is room: always for a listed name, and for an
    /// unlisted one while fewer than [`MAX_UNLISTED_COMMANDS`] are tracked.
    fn entry(&mut self, name: CommandName) -> Option<&mut CommandStats> {
        let key = match name {
            CommandName::Listed(name) => Cow::Borrowed(name),
            CommandName::Unlisted(name) => {
                if !self.commands.contains_key(name.as_str()) {
                    if self.unlisted >= MAX_UNLISTED_COMMANDS {
                        return None;
                    }
                    self.unlisted += 1;
                }
                Cow::Owned(name)
            }
        };
        Some(self.commands.entry(key).or_default())
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    pub(super) fn calls(&self, command: &str) -> u64 {
        self.commands.get(command).map_or(0, |c| c.calls)
    }

    pub(super) fn max_in_window(&self, command: &str) -> u64 {
        self.commands.get(command).map_or(0, |c| c.max_in_window)
    }

    pub(super) fn requests(&self, command: &str) -> Vec<RecordedRequest> {
        self.commands.get(command).map_or_else(Vec::new, |c| {
            c.recorded.iter().map(|(_, r)| r.clone()).collect()
        })
    }

    /// Fills the request-side fields of [`Retained`].
    pub(super) fn retained(&self, into: &mut Retained) {
        into.commands = self.commands.len();
        into.recorded_requests = self.commands.values().map(|c| c.recorded.len()).sum();
        into.recorded_bytes = self.recorded_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tls::test_support::{code, query_for, sandbox, signed_query};
    use super::super::SandboxOptions;
    use super::*;

    fn request(body_bytes: usize) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            path: "/v4/a/b".into(),
            query: Vec::new(),
            body: Bytes::from(vec![b' '; body_bytes]),
            error_code: 0,
            received_at: Instant::now(),
        }
    }

    fn unlisted(name: &str) -> CommandName {
        CommandName::Unlisted(name.to_owned())
    }

    /// Regression test for issue 7, F10: a flood of made-up command names with a UserSig from
    /// the wrong key (and of a catalogue command, with a body) leaves no per-command counter,
    /// no recorded request and no Tencent-side state behind; only the total counts them.
    #[tokio::test]
    async fn unauthenticated_made_up_commands_leave_nothing_behind() {
        let (sandbox, client) = sandbox(SandboxOptions::default()).await;
        let forged = crate::usersig::mint(
            &crate::usersig::SecretKey::new("not-the-key"),
            super::super::tls::test_support::APP,
            "administrator",
            super::super::unix_now(0),
            86_400,
        );
        let query = query_for("administrator", forged.expose());
        let body = format!(r#"{{"padding":"{}"}}"#, "x".repeat(4096));
        for i in 0..200 {
            let path = format!("/v4/made_up/command_{i}?{query}");
            assert_eq!(code(&client, &sandbox, &path, &body).await, 60009);
        }
        let listed = format!("/v4/profile/portrait_get?{query}");
        assert_eq!(code(&client, &sandbox, &listed, &body).await, 70009);

        assert_eq!(sandbox.calls("made_up/command_0"), 0);
        assert!(sandbox.requests("profile/portrait_get").is_empty());
        assert_eq!(sandbox.total_calls(), 201);
        assert_eq!(
            sandbox.retained(),
            Retained {
                commands: 1, // profile/portrait_get, a catalogue name, is counted
                ..Retained::default()
            }
        );
        assert_eq!(sandbox.calls("profile/portrait_get"), 1);
    }

    /// An authenticated caller gets counters for at most `MAX_UNLISTED_COMMANDS` names outside
    /// the catalogue; further names are answered but add only to the total (issue 7, F10).
    #[tokio::test]
    async fn authenticated_unlisted_names_are_capped() {
        let (sandbox, client) = sandbox(SandboxOptions::default()).await;
        let query = signed_query();
        for i in 0..MAX_UNLISTED_COMMANDS + 10 {
            let path = format!("/v4/made_up/command_{i}?{query}");
            assert_eq!(code(&client, &sandbox, &path, "{}").await, 60009);
        }
        let retained = sandbox.retained();
        assert_eq!(retained.commands, MAX_UNLISTED_COMMANDS);
        assert_eq!(retained.recorded_requests, MAX_UNLISTED_COMMANDS);
        assert_eq!(sandbox.calls("made_up/command_0"), 1);
        let first_untracked = format!("made_up/command_{MAX_UNLISTED_COMMANDS}");
        assert_eq!(sandbox.calls(&first_untracked), 0);
        assert_eq!(sandbox.total_calls(), (MAX_UNLISTED_COMMANDS + 10) as u64);
        // Catalogue commands are still tracked once the unlisted names are used up.
        let listed = format!("/v4/profile/portrait_get?{query}");
        assert_eq!(code(&client, &sandbox, &listed, "{}").await, 0);
        assert_eq!(sandbox.calls("profile/portrait_get"), 1);
    }

    /// A command keeps its last `RECORDED_PER_COMMAND` requests, oldest out first.
    #[test]
    fn each_command_keeps_its_last_requests() {
        let mut stats = Stats::default();
        let name = CommandName::Listed("profile/portrait_get");
        for code in 0..RECORDED_PER_COMMAND as i64 + 5 {
            stats.record(
                &name,
                RecordedRequest {
                    error_code: code,
                    ..request(0)
                },
            );
        }
        let kept = stats.requests("profile/portrait_get");
        assert_eq!(kept.len(), RECORDED_PER_COMMAND);
        assert_eq!(kept[0].error_code, 5);
        let mut retained = Retained::default();
        stats.retained(&mut retained);
        assert_eq!(
            retained.recorded_bytes,
            RECORDED_PER_COMMAND * request(0).footprint()
        );
    }

    /// Many authenticated 1 MiB bodies under many names never hold more than
    /// `MAX_RECORDED_BYTES`; the oldest records go first, whatever their command (issue 7, F10).
    #[test]
    fn recorded_bytes_stay_within_the_budget() {
        let mut stats = Stats::default();
        let big = request(1024 * 1024);
        let per_request = big.footprint();
        for i in 0..40 {
            stats.record(&unlisted(&format!("a/b{i}")), big.clone());
        }
        let mut retained = Retained::default();
        stats.retained(&mut retained);
        let fits = MAX_RECORDED_BYTES / per_request;
        assert_eq!(retained.recorded_requests, fits);
        assert_eq!(retained.recorded_bytes, fits * per_request);
        assert!(stats.requests("a/b0").is_empty());
        assert!(stats.requests(&format!("a/b{}", 40 - fits - 1)).is_empty());
        assert_eq!(stats.requests(&format!("a/b{}", 40 - fits)).len(), 1);
        assert_eq!(stats.requests("a/b39").len(), 1);
    }

    /// Untracked arrivals add to the total only; a counted one never records.
    #[test]
    fn tracking_decides_what_an_arrival_leaves() {
        let mut stats = Stats::default();
        let now = Instant::now();
        stats.arrive(&Tracking::Untracked, now);
        stats.arrive(&Tracking::Counted("profile/portrait_get"), now);
        stats.arrive(&Tracking::Recorded(unlisted("a/b")), now);
        assert_eq!(stats.total(), 3);
        assert_eq!(stats.calls("profile/portrait_get"), 1);
        assert_eq!(stats.calls("a/b"), 1);
        assert_eq!(stats.commands.len(), 2);
        assert_eq!(stats.unlisted, 1);
    }
}
