//! The live streams: a bounded set, so that the streams every tier below carries are bounded
//! whatever names clients send.
//!
//! A stream is open from its first accepted tap until `stream_idle_s` without one. Opening one
//! takes a place under `max_live_streams` and a token from the client's bucket of new streams;
//! a tap for an open stream takes neither. The alternative, an allow-list the platform manages
//! (config and an admin endpoint), would make every new creator stream wait for an operator or
//! an integration; a bound and a per-client rate keep streams on demand, as a platform's
//! creators expect, and still bound the cost below.
//!
//! The open streams live in a sharded map (as the rate limiters): a tap touches one shard for a
//! lookup. Streams past their idle time are swept from a shard when a new stream needs a place
//! and the set is full, at most once a second, so a client knocking at a full set costs one
//! sweep a second, not one per request.

use emostream_protocol::limits::RateLimiter;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

/// How often a full set is swept for idle streams at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Open streams by name, each with its last accepted tap.
type Shard = Mutex<HashMap<Box<str>, Instant>>;

pub struct LiveStreams {
    shards: Box<[Shard]>,
    hasher: RandomState,
    open: AtomicUsize,
    max: usize,
    idle: Duration,
    new_streams: RateLimiter<IpAddr>,
    last_sweep: Mutex<Option<Instant>>,
}

/// Why a stream could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_live_streams` are open.
    Full { max: usize },
    /// The client opened its most new streams for now; retry after this long.
    TooManyNew { retry_after: Duration },
}

impl LiveStreams {
    pub fn new(max: usize, idle: Duration, new_per_s: u32, new_burst: u32) -> Self {
        LiveStreams {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            open: AtomicUsize::new(0),
            max,
            idle,
            new_streams: RateLimiter::new(new_per_s, new_burst),
            last_sweep: Mutex::new(None),
        }
    }

    /// A tap of `client` for `stream` at `now`: fine if the stream is open (it stays open
    /// `idle` from now), else opened if there is room and the client may open another.
    pub fn admit(&self, stream: &str, client: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let shard = self.shard(stream);
        if let Some(last) = lock(shard).get_mut(stream) {
            if now.saturating_duration_since(*last) < self.idle {
                *last = now;
                return Ok(());
            }
        }
        if self.open.load(Ordering::Relaxed) >= self.max {
            self.sweep(now);
            if self.open.load(Ordering::Relaxed) >= self.max {
                return Err(Refused::Full { max: self.max });
            }
        }
        if let Some(ip) = client {
            self.new_streams
                .take(&ip, 1, now)
                .map_err(|retry_after| Refused::TooManyNew { retry_after })?;
        }
        let mut streams = lock(shard);
        match streams.insert(stream.into(), now) {
            // Opened again after its idle time, or by another request just now: no new place.
            Some(_) => {}
            None => {
                self.open.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Streams open now (some may be past their idle time until the next sweep).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn shard(&self, stream: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(stream) as usize) % SHARDS]
    }

    /// Forgets every stream past its idle time, unless a sweep ran within [`SWEEP_EVERY`].
    fn sweep(&self, now: Instant) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY) {
                return;
            }
            *last = Some(now);
        }
        for shard in &self.shards {
            let mut streams = lock(shard);
            let before = streams.len();
            streams.retain(|_, last| now.saturating_duration_since(*last) < self.idle);
            self.open
                .fetch_sub(before - streams.len(), Ordering::Relaxed);
        }
    }
}

fn lock(
    shard: &Mutex<HashMap<Box<str>, Instant>>,
) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Instant>> {
    // A map of stream names to instants is consistent between any two statements.
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_full_set_refuses_new_streams_until_one_goes_idle_and_open_ones_keep_tapping() {
        let idle = Duration::from_secs(10);
        let streams = LiveStreams::new(2, idle, 100, 100);
        let t0 = Instant::now();
        assert_eq!(streams.admit("a", ip(1), t0), Ok(()));
        assert_eq!(streams.admit("b", ip(2), t0), Ok(()));
        assert_eq!(streams.admit("c", ip(3), t0), Err(Refused::Full { max: 2 }));
        // Open streams take taps whoever sends them, and stay open.
        let t1 = t0 + Duration::from_secs(8);
        assert_eq!(streams.admit("a", ip(3), t1), Ok(()));
        // b goes idle 10 s after its last tap; a was tapped at 8 s, so it stays.
        let t2 = t0 + Duration::from_secs(12);
        assert_eq!(streams.admit("c", ip(3), t2), Ok(()));
        assert_eq!(streams.open(), 2);
        assert_eq!(streams.admit("b", ip(2), t2), Err(Refused::Full { max: 2 }));
    }

    #[test]
    fn a_client_opens_new_streams_at_its_rate_only() {
        let streams = LiveStreams::new(1000, Duration::from_secs(60), 1, 3);
        let t0 = Instant::now();
        for name in ["a", "b", "c"] {
            assert_eq!(streams.admit(name, ip(1), t0), Ok(()));
        }
        let Err(Refused::TooManyNew { retry_after }) = streams.admit("d", ip(1), t0) else {
            panic!("a fourth new stream at once is refused");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        // Another client, and an open stream, are not held back.
        assert_eq!(streams.admit("d", ip(2), t0), Ok(()));
        assert_eq!(streams.admit("a", ip(1), t0), Ok(()));
        assert_eq!(
            streams.admit("e", ip(1), t0 + Duration::from_secs(1)),
            Ok(())
        );
        assert_eq!(streams.open(), 5);
    }
}
