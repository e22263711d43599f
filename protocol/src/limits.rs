//! Abuse control: token buckets keyed by user (one token per tap; the key is a keyed hash of
//! the user id, so no id is copied into the map) and by client IP (one token per request, and
//! one per tap).
//!
//! The buckets live in a sharded map: a request touches one shard per key for a few
//! nanoseconds, so 64 std mutexes keep two cores from queueing on each other (and a std
//! `Mutex` is right because it is never held across an `.await`). A bucket that has refilled to
//! full is the same as no bucket, so shards drop such entries when they grow: memory follows the
//! users active in the last `burst / rate` seconds, not every user ever seen.
//!
//! Hand-written rather than `governor` for one functional reason: a request refused after its
//! taps were charged (budget full, broker down, a later tap's user over its rate) gives the
//! tokens back, so a refusal never costs a user their next try. governor's keyed limiter can
//! take cells but has no way to return them (boinkor-net/governor#152; the check/consume split
//! of PR #211 is still unmerged).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;
/// Raises this process's soft limit on open descriptors to its hard limit, and returns the limit
/// now in force. Every connection is a descriptor, and the soft limit is often 1024 where the
/// hard one is far higher; only the systemd units set `LimitNOFILE`.
pub fn raise_descriptor_limit() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::Resource::NOFILE.get().map(|(soft, _)| soft))
        .unwrap_or(1024);
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// A shard is swept when it reaches this size (then twice its surviving size).
const FIRST_SWEEP: usize = 1024;

pub struct RateLimiter<K> {
    shards: Box<[Mutex<Shard<K>>]>,
    hasher: RandomState,
    per_s: f64,
    burst: f64,
}

struct Shard<K> {
    buckets: HashMap<K, Bucket>,
    sweep_at: usize,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(per_s: u32, burst: u32) -> Self {
        RateLimiter {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        sweep_at: FIRST_SWEEP,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            per_s: f64::from(per_s),
            burst: f64::from(burst),
        }
    }

    /// Takes `n` tokens from `key`'s bucket at `now`, or says how long until they would be there.
    pub fn take<Q>(&self, key: &Q, n: u32, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let n = f64::from(n);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard
            .lock()
            .expect("a rate-limit shard lock is never poisoned");
        let bucket = match shard.buckets.get_mut(key) {
            Some(b) => {
                b.tokens = self.refilled(b, now);
                b.at = now;
                b
            }
            None => {
                if shard.buckets.len() >= shard.sweep_at {
                    self.sweep(&mut shard, now);
                }
                shard.buckets.entry(key.to_owned()).or_insert(Bucket {
                    tokens: self.burst,
                    at: now,
                })
            }
        };
        if bucket.tokens >= n {
            bucket.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - bucket.tokens) / self.per_s))
        }
    }

    /// Returns `n` tokens taken from `key` for a request that was refused after all, so a
    /// refusal costs the user nothing (never above the burst; a swept bucket is full anyway).
    pub fn give_back<Q>(&self, key: &Q, n: u32)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard
            .lock()
            .expect("a rate-limit shard lock is never poisoned");
        if let Some(b) = shard.buckets.get_mut(key) {
            b.tokens = (b.tokens + f64::from(n)).min(self.burst);
        }
    }

    /// The bucket's size: more than this in one request can never pass.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// Keys currently tracked (for `/metrics`).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("never poisoned").buckets.len())
            .sum()
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.per_s).min(self.burst)
    }

    fn sweep(&self, shard: &mut Shard<K>, now: Instant) {
        shard
            .buckets
            .retain(|_, b| self.refilled(b, now) < self.burst);
        shard.sweep_at = (shard.buckets.len() * 2).max(FIRST_SWEEP);
    }
}

/// Retry-After in whole seconds, at least 1 (the header has no fractions).
pub fn retry_after_s(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        let raised = raise_descriptor_limit();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(soft, hard);
        assert_eq!(raised as u64, soft);
    }

    #[test]
    fn burst_then_refill() {
        let limiter: RateLimiter<String> = RateLimiter::new(2, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take("u", 1, t0), Ok(()));
        }
        assert_eq!(limiter.take("u", 1, t0), Err(Duration::from_millis(500)));
        // Other keys have their own bucket.
        assert_eq!(limiter.take("v", 3, t0), Ok(()));
        // Half a second refills one token at 2/s.
        assert_eq!(
            limiter.take("u", 1, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert!(limiter
            .take("u", 1, t0 + Duration::from_millis(500))
            .is_err());
        // Never above the burst, however long the wait.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.take("u", 3, later), Ok(()));
        assert!(limiter.take("u", 1, later).is_err());
    }

    #[test]
    fn tokens_given_back_are_there_again() {
        let limiter: RateLimiter<String> = RateLimiter::new(1, 3);
        let t0 = Instant::now();
        assert_eq!(limiter.take("u", 3, t0), Ok(()));
        assert!(limiter.take("u", 1, t0).is_err());
        limiter.give_back("u", 2);
        assert_eq!(limiter.take("u", 2, t0), Ok(()));
        assert!(limiter.take("u", 1, t0).is_err());
        // Never above the burst; an unknown key has a full bucket already.
        limiter.give_back("u", 10);
        limiter.give_back("v", 10);
        assert_eq!(limiter.take("u", 3, t0), Ok(()));
        assert!(limiter.take("u", 1, t0).is_err());
        assert_eq!(limiter.tracked(), 1);
        assert_eq!(limiter.burst(), 3);
    }

    #[test]
    fn full_buckets_are_swept() {
        let limiter: RateLimiter<u32> = RateLimiter::new(1000, 1);
        let t0 = Instant::now();
        for k in 0..(FIRST_SWEEP * SHARDS * 2) as u32 {
            limiter.take(&k, 1, t0).unwrap();
        }
        assert_eq!(limiter.tracked(), FIRST_SWEEP * SHARDS * 2);
        // A second later every old bucket is full again: new keys sweep them away, so what is
        // tracked is (about) the new keys alone, not old + new.
        let t1 = t0 + Duration::from_secs(1);
        let new_keys = FIRST_SWEEP * SHARDS * 6;
        for k in 0..new_keys as u32 {
            limiter.take(&(k + 10_000_000), 1, t1).unwrap();
        }
        assert!(
            limiter.tracked() < new_keys + new_keys / 10,
            "{}",
            limiter.tracked()
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_s(Duration::ZERO), 1);
        assert_eq!(retry_after_s(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_s(Duration::from_millis(2001)), 3);
    }
}
