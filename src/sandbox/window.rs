//! The sliding one-second window the sandbox counts Tencent's per-second quotas over
//! (reference §4). A plain struct fed an `Instant`, so it is tested without a clock; it holds
//! at most [`MAX_WINDOW_ARRIVALS`] arrivals, however fast clients send.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::MAX_QUOTA_PER_SECOND;

/// The sliding window Tencent's per-second frequency limits are counted over (reference §4).
pub(super) const QUOTA_WINDOW: Duration = Duration::from_secs(1);

/// Most arrivals a sliding window holds: one more than the largest quota, so a full window
/// still decides "over quota" exactly; `max_calls_in_window` saturates here.
pub const MAX_WINDOW_ARRIVALS: usize = MAX_QUOTA_PER_SECOND as usize + 1;

/// Arrival times within the last [`QUOTA_WINDOW`], oldest first.
///
/// Invariant: after `arrive(now)`, every instant held is in `(now - 1 s, now]`, and the window
/// holds min(arrivals in that second, [`MAX_WINDOW_ARRIVALS`]) of them.
#[derive(Debug, Default)]
pub(super) struct SlidingWindow {
    arrivals: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Records an arrival at `now` and returns how many arrivals the window holds, this one
    /// included. A call exactly 1 s older than `now` has left the window. A full window forgets
    /// its oldest arrival, the one that would have left first, so the count stays exact up to
    /// the bound.
    pub(super) fn arrive(&mut self, now: Instant) -> usize {
        while self
            .arrivals
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= QUOTA_WINDOW)
        {
            self.arrivals.pop_front();
        }
        if self.arrivals.len() == MAX_WINDOW_ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(now);
        self.arrivals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window counts arrivals in `(now - 1 s, now]`, so one exactly 1 s old has left it.
    #[test]
    fn sliding_window_forgets_arrivals_one_second_old() {
        let start = Instant::now();
        let mut window = SlidingWindow::default();
        assert_eq!(window.arrive(start), 1);
        assert_eq!(window.arrive(start + Duration::from_millis(500)), 2);
        assert_eq!(window.arrive(start + Duration::from_millis(999)), 3);
        assert_eq!(window.arrive(start + Duration::from_millis(1000)), 3);
        assert_eq!(window.arrive(start + Duration::from_millis(2500)), 1);
    }

    /// Regression test for issue 7, F10: a burst within one instant fills the window only up
    /// to `MAX_WINDOW_ARRIVALS`, which still tells the largest quota's last call from the next.
    #[test]
    fn sliding_window_holds_at_most_max_window_arrivals() {
        let now = Instant::now();
        let mut window = SlidingWindow::default();
        let counts: Vec<usize> = (0..MAX_WINDOW_ARRIVALS + 5)
            .map(|_| window.arrive(now))
            .collect();
        assert_eq!(counts[MAX_QUOTA_PER_SECOND as usize - 1], 10_000);
        assert_eq!(counts[MAX_QUOTA_PER_SECOND as usize], 10_001);
        assert_eq!(counts.last(), Some(&MAX_WINDOW_ARRIVALS));
        assert_eq!(window.arrivals.len(), MAX_WINDOW_ARRIVALS);
        assert_eq!(window.arrive(now + QUOTA_WINDOW), 1);
    }
}
