//! A small seeded generator, so a test's trace or a benchmark's preload is the same on every
//! run and a failure replays.

/// A 64-bit linear congruential generator (Knuth's MMIX constants) yielding its top 31 bits:
/// plenty for picking users and emojis, and not meant for anything else.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// One of `items`, each as likely as its weight.
    pub fn weighted<'a, T>(&mut self, items: &'a [(T, u64)]) -> &'a T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        assert!(total > 0, "weighted() needs a positive weight");
        let mut pick = self.next_u64() % total;
        for (item, weight) in items {
            if pick < *weight {
                return item;
            }
            pick -= weight;
        }
        unreachable!("pick < total")
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn a_seed_replays_the_same_sequence() {
        let mut a = Rng::seeded(42);
        let mut b = Rng::seeded(42);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(
            first,
            [1220265334, 484179026, 886563538, 1353769503, 1460606294]
        );
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
    }

    #[test]
    fn weights_shape_the_picks() {
        let mut rng = Rng::seeded(7);
        let items = [("often", 9), ("never", 0), ("rarely", 1)];
        let picks: Vec<&str> = (0..1000).map(|_| *rng.weighted(&items)).collect();
        let count = |what: &str| picks.iter().filter(|p| **p == what).count();
        assert_eq!(
            (count("often"), count("never"), count("rarely")),
            (906, 0, 94)
        );
    }
}
