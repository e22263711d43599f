//! Which downstream tiers are alive: the newest heartbeat heard on each open link.

use emostream_protocol::wire::LinkUp;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// A tier that has not been heard from in this long is dead to the tier above, even if its link
/// still looks open: three missed one-second heartbeats.
pub const SILENCE: Duration = Duration::from_secs(3);

/// How often a tier sends its heartbeat up.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Identifies one open link, so that a link's close removes exactly what it reported.
pub type LinkId = u64;

#[derive(Default)]
pub struct Roster {
    next_id: AtomicU64,
    // A std mutex: heartbeats are a few per second and no lock is held across an await.
    heard: Mutex<HashMap<LinkId, (Instant, LinkUp)>>,
}

impl Roster {
    pub fn open(&self) -> LinkId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn heard(&self, link: LinkId, up: LinkUp) {
        self.lock().insert(link, (Instant::now(), up));
    }

    pub fn close(&self, link: LinkId) {
        self.lock().remove(&link);
    }

    /// The latest heartbeat of every member heard within [`SILENCE`], by name. A member that
    /// reconnected can briefly have two links; its newest heartbeat wins.
    pub fn live(&self) -> Vec<LinkUp> {
        let now = Instant::now();
        let mut newest: HashMap<&str, (Instant, &LinkUp)> = HashMap::new();
        let heard = self.lock();
        for (at, up) in heard.values() {
            if now.duration_since(*at) >= SILENCE {
                continue;
            }
            let name = match up {
                LinkUp::Subscriber { name, .. } | LinkUp::Cluster { name, .. } => name.as_str(),
            };
            match newest.get(name) {
                Some((seen, _)) if seen >= at => {}
                _ => {
                    newest.insert(name, (*at, up));
                }
            }
        }
        let mut live: Vec<(&str, LinkUp)> = newest
            .into_iter()
            .map(|(n, (_, up))| (n, up.clone()))
            .collect();
        live.sort_by(|a, b| a.0.cmp(b.0));
        live.into_iter().map(|(_, up)| up).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LinkId, (Instant, LinkUp)>> {
        // Each update is a single insert or remove, so a poisoned map is still consistent.
        self.heard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str, viewers: u64) -> LinkUp {
        LinkUp::Subscriber {
            name: name.into(),
            url: format!("ws://{name}"),
            viewers,
            room: None,
            stream_room: None,
            carrying: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn members_leave_when_their_link_closes_or_falls_silent() {
        let roster = Roster::default();
        let (a, b, b_again) = (roster.open(), roster.open(), roster.open());
        roster.heard(a, sub("c0-s0", 1));
        roster.heard(b, sub("c0-s1", 2));
        assert_eq!(roster.live(), [sub("c0-s0", 1), sub("c0-s1", 2)]);

        tokio::time::advance(Duration::from_secs(2)).await;
        roster.heard(b_again, sub("c0-s1", 5));
        assert_eq!(
            roster.live(),
            [sub("c0-s0", 1), sub("c0-s1", 5)],
            "newest heartbeat wins"
        );

        roster.close(b_again);
        assert_eq!(roster.live(), [sub("c0-s0", 1), sub("c0-s1", 2)]);

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(roster.live(), [], "silent for 3 s");
        roster.heard(a, sub("c0-s0", 0));
        assert_eq!(roster.live(), [sub("c0-s0", 0)]);
    }
}
