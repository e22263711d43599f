//! How long the supervisor waits before it restarts the cluster.

use std::time::Duration;

/// Exponential backoff that forgets after a healthy run: a cluster that crashes at once again
/// and again (a broker that is down, a bad host) is restarted ever more slowly, while one that
/// ran a good while and crashed comes back after the first delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    healthy: Duration,
    next: Duration,
}

impl Backoff {
    /// `first` before the first restart, doubling up to `max`; a run of at least `healthy`
    /// starts over at `first`.
    pub const fn new(first: Duration, max: Duration, healthy: Duration) -> Self {
        Self {
            first,
            max,
            healthy,
            next: first,
        }
    }

    /// The delay before the restart that follows a run of `ran`.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= self.healthy {
            self.next = self.first;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

impl Default for Backoff {
    /// 1 s (the delay the bash supervisor always had, enough for the peers' links to reset),
    /// at most 30 s (a cluster waiting out a broker outage resumes within half a minute of its
    /// end), and a minute up counts as healthy (longer than any start: a start that crashes
    /// before it connected to its peers and the broker never resets the delay).
    fn default() -> Self {
        Self::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_after_short_runs_and_starts_over_after_a_healthy_one() {
        let s = Duration::from_secs;
        let mut backoff = Backoff::default();
        // (how long the cluster ran, the delay before its restart)
        let runs = [
            (s(0), s(1)),
            (s(2), s(2)),
            (s(5), s(4)),
            (s(0), s(8)),
            (s(59), s(16)),
            (s(1), s(30)),
            (s(1), s(30)),
            (s(60), s(1)),
            (s(3), s(2)),
            (s(3600), s(1)),
        ];
        for (i, (ran, delay)) in runs.into_iter().enumerate() {
            assert_eq!(
                backoff.after(ran),
                delay,
                "restart {i} after a run of {ran:?}"
            );
        }
    }
}
