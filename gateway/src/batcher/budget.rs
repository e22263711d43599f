//! The in-flight budget and each client's share of it.
//!
//! The budget is one byte a permit. A client (an IP, or its /64) may hold at most
//! `max_in_flight_bytes_per_ip` of it at once, whatever it holds it with: bodies declared and
//! not yet read, encoded taps queued for the packer, records awaiting the broker. So one client
//! with many connections (or one slow connection per declared megabyte) takes its share and then
//! gets 429, while everyone else's requests still find the rest of the budget.

use crate::GatewayError;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Budget {
    total: Arc<Semaphore>,
    size: usize,
    per_client: usize,
    shares: Arc<Shares>,
}

/// Bytes held per client key, in a map sharded as the rate limiters' are: every request takes
/// its client's shard a few times (reserve, top up, release), so one lock would make every
/// request of every client queue on it. Std mutexes: each is held for one map operation and
/// never across an `.await`. A client is forgotten once it holds nothing, so the maps follow
/// the clients with a request in flight.
struct Shares {
    shards: Box<[Mutex<HashMap<IpAddr, usize>>]>,
    hasher: RandomState,
}

const SHARDS: usize = 64;

impl Default for Shares {
    fn default() -> Self {
        Shares {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Shares {
    fn shard(&self, client: &IpAddr) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.shards[(self.hasher.hash_one(client) as usize) % SHARDS]
            .lock()
            .expect("a budget share lock is never poisoned")
    }

    fn release(&self, client: IpAddr, bytes: usize) {
        let mut held = self.shard(&client);
        if let Some(n) = held.get_mut(&client) {
            *n -= bytes;
            if *n == 0 {
                held.remove(&client);
            }
        }
    }
}

/// Bytes of the budget, and of one client's share, held until dropped.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    client: Option<(IpAddr, Arc<Shares>)>,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }

    /// Adds `other`'s bytes to this one (the same client's, taken for the same request).
    pub fn merge(&mut self, mut other: Reservation) {
        debug_assert_eq!(
            self.client.as_ref().map(|c| c.0),
            other.client.as_ref().map(|c| c.0),
            "a request's reservations are its client's"
        );
        // `other` keeps no bytes, so its drop releases none of the share: this one releases
        // both when it goes.
        if let Some(moved) = other.permit.split(other.permit.num_permits()) {
            self.permit.merge(moved);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((client, shares)) = self.client.take() {
            shares.release(client, self.permit.num_permits());
        }
    }
}

/// What a batch holds of the budget for its requests, given back in one go when the broker has
/// answered for its record: one release of the budget's semaphore (which takes its lock) and
/// one share release per client run, per record rather than per request.
#[derive(Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    /// Bytes per client, consecutive requests of one client added up.
    shares: Vec<(IpAddr, usize)>,
    ledger: Option<Arc<Shares>>,
}

impl Held {
    /// Takes over a request's reservation.
    pub fn add(&mut self, mut r: Reservation) {
        let bytes = r.bytes();
        // Taken first, so `r`'s drop releases nothing of the share.
        if let Some((client, shares)) = r.client.take() {
            match self.shares.last_mut() {
                Some((last, n)) if *last == client => *n += bytes,
                _ => self.shares.push((client, bytes)),
            }
            self.ledger.get_or_insert(shares);
        }
        if let Some(moved) = r.permit.split(bytes) {
            match &mut self.permit {
                Some(permit) => permit.merge(moved),
                None => self.permit = Some(moved),
            }
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(ledger) = &self.ledger {
            for &(client, bytes) in &self.shares {
                ledger.release(client, bytes);
            }
        }
    }
}

impl From<OwnedSemaphorePermit> for Reservation {
    /// Budget bytes charged to no client (the batcher's own tests).
    fn from(permit: OwnedSemaphorePermit) -> Self {
        Reservation {
            permit,
            client: None,
        }
    }
}

impl Budget {
    pub fn new(size: usize, per_client: usize) -> Self {
        Budget {
            total: Arc::new(Semaphore::new(size)),
            size,
            per_client,
            shares: Arc::default(),
        }
    }

    /// Takes `bytes` of the budget and of `client`'s share, or refuses at once: 429 when the
    /// client already holds its share, 503 when the budget is full.
    pub fn reserve(
        &self,
        client: Option<IpAddr>,
        bytes: usize,
    ) -> Result<Reservation, GatewayError> {
        let full = GatewayError::Overloaded {
            reason: "ingest budget full, retry shortly",
        };
        let n = u32::try_from(bytes)
            .ok()
            .filter(|&n| n as usize <= self.size)
            .ok_or(full.clone())?;
        let Some(client) = client else {
            let permit = Arc::clone(&self.total)
                .try_acquire_many_owned(n)
                .map_err(|_| full)?;
            return Ok(permit.into());
        };
        {
            let mut held = self.shares.shard(&client);
            let mine = held.entry(client).or_default();
            if *mine + bytes > self.per_client {
                if *mine == 0 {
                    held.remove(&client);
                }
                return Err(GatewayError::ShareFull);
            }
            *mine += bytes;
        }
        match Arc::clone(&self.total).try_acquire_many_owned(n) {
            Ok(permit) => Ok(Reservation {
                permit,
                client: Some((client, Arc::clone(&self.shares))),
            }),
            Err(_) => {
                self.shares.release(client, bytes);
                Err(full)
            }
        }
    }

    /// (bytes held now, the budget).
    pub fn in_flight(&self) -> (usize, usize) {
        (self.size - self.total.available_permits(), self.size)
    }

    /// Clients holding a part of the budget now.
    pub fn clients(&self) -> usize {
        self.shares
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .expect("a budget share lock is never poisoned")
                    .len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_others_keep_the_rest() {
        let budget = Budget::new(100, 30);
        let a1 = budget.reserve(ip("10.0.0.1"), 20).unwrap();
        assert_eq!(
            budget.reserve(ip("10.0.0.1"), 11).err(),
            Some(GatewayError::ShareFull)
        );
        let mut a2 = budget.reserve(ip("10.0.0.1"), 10).unwrap();
        let b = budget.reserve(ip("10.0.0.2"), 30).unwrap();
        assert_eq!(budget.in_flight(), (60, 100));
        assert_eq!(budget.clients(), 2);
        // A merge (a request's encoded taps added to its body's bytes) still counts once.
        a2.merge(budget.reserve(ip("10.0.0.1"), 0).unwrap());
        drop(a1);
        assert_eq!(a2.bytes(), 10);
        let a3 = budget.reserve(ip("10.0.0.1"), 20).unwrap();
        assert_eq!(
            budget.reserve(ip("10.0.0.1"), 1).err(),
            Some(GatewayError::ShareFull)
        );
        drop((a2, a3, b));
        assert_eq!(budget.in_flight(), (0, 100));
        assert_eq!(budget.clients(), 0);
    }

    #[test]
    fn a_batch_holds_its_requests_bytes_and_gives_them_back_in_one_go() {
        let budget = Budget::new(100, 30);
        let mut held = Held::default();
        held.add(budget.reserve(ip("10.0.0.1"), 10).unwrap());
        held.add(budget.reserve(ip("10.0.0.1"), 5).unwrap());
        held.add(budget.reserve(ip("10.0.0.2"), 7).unwrap());
        held.add(budget.reserve(None, 3).unwrap());
        assert_eq!(held.bytes(), 25);
        assert_eq!(
            held.shares,
            [
                ("10.0.0.1".parse().unwrap(), 15),
                ("10.0.0.2".parse().unwrap(), 7)
            ]
        );
        assert_eq!(budget.in_flight(), (25, 100));
        assert_eq!(budget.clients(), 2);
        assert_eq!(
            budget.reserve(ip("10.0.0.1"), 16).err(),
            Some(GatewayError::ShareFull)
        );
        drop(held);
        assert_eq!(budget.in_flight(), (0, 100));
        assert_eq!(budget.clients(), 0);
    }

    #[test]
    fn a_full_budget_is_503_and_takes_nothing_of_the_share() {
        let budget = Budget::new(50, 40);
        let _a = budget.reserve(ip("10.0.0.1"), 40).unwrap();
        let _b = budget.reserve(None, 10).unwrap();
        assert_eq!(
            budget.reserve(ip("10.0.0.2"), 1).err(),
            Some(GatewayError::Overloaded {
                reason: "ingest budget full, retry shortly"
            })
        );
        assert_eq!(budget.clients(), 1);
    }
}
