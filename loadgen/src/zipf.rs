//! Which emoji a simulated viewer taps: ranks drawn from a Zipf distribution, so a few emojis
//! dominate the way real reactions do, and a small seeded generator so a run can be repeated.

/// SplitMix64: tiny, fast and good enough to pick emojis and users; seeded, so two runs with the
/// same `--seed` offer the same load.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits (an f64's mantissa).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0); the modulo bias is below 2^-40 for any n we use.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// P(rank k) ∝ 1 / (k + 1)^exponent over `n` ranks, sampled by inverting the cumulative sums.
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64) -> Self {
        assert!(n > 0, "a Zipf distribution needs at least one rank");
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-exponent)).collect();
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|w| {
                running += w / total;
                running
            })
            .collect();
        // Rounding can leave the last sum a hair below 1; a u that lands there must still map
        // to the last rank.
        *cumulative.last_mut().expect("n > 0") = 1.0;
        Zipf { cumulative }
    }

    /// The rank for a uniform `u` in [0, 1): the first whose cumulative sum exceeds it.
    pub fn rank_for(&self, u: f64) -> usize {
        self.cumulative.partition_point(|c| *c <= u)
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        self.rank_for(rng.next_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Zipf {
        fn probability(&self, rank: usize) -> f64 {
            self.cumulative[rank] - rank.checked_sub(1).map_or(0.0, |r| self.cumulative[r])
        }
    }

    #[test]
    fn probabilities_follow_the_exponent() {
        // s = 1 over 3 ranks: weights 1, 1/2, 1/3 → 6/11, 3/11, 2/11.
        let z = Zipf::new(3, 1.0);
        for (rank, expected) in [(0, 6.0 / 11.0), (1, 3.0 / 11.0), (2, 2.0 / 11.0)] {
            assert!(
                (z.probability(rank) - expected).abs() < 1e-12,
                "rank {rank}"
            );
        }
        // s = 0 is uniform.
        let flat = Zipf::new(4, 0.0);
        assert!((0..4).all(|r| (flat.probability(r) - 0.25).abs() < 1e-12));
    }

    #[test]
    fn inversion_maps_each_interval_to_its_rank() {
        let z = Zipf::new(3, 1.0);
        assert_eq!(z.rank_for(0.0), 0);
        assert_eq!(z.rank_for(6.0 / 11.0 - 1e-9), 0);
        assert_eq!(z.rank_for(6.0 / 11.0 + 1e-9), 1);
        assert_eq!(z.rank_for(9.0 / 11.0 + 1e-9), 2);
        assert_eq!(z.rank_for(1.0 - f64::EPSILON), 2);
        assert_eq!(Zipf::new(1, 1.2).rank_for(0.999_999), 0);
    }

    #[test]
    fn samples_are_skewed_as_configured() {
        let z = Zipf::new(16, 1.1);
        let mut rng = Rng::new(7);
        let draws = 200_000;
        let mut counts = [0u32; 16];
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        for (rank, n) in counts.iter().enumerate() {
            let expected = z.probability(rank) * draws as f64;
            // Within 5 standard deviations of a binomial count: a deterministic seed, so this
            // either always passes or always fails.
            let sd = (expected * (1.0 - z.probability(rank))).sqrt();
            assert!(
                (f64::from(*n) - expected).abs() < 5.0 * sd,
                "rank {rank}: {n} vs {expected:.0}"
            );
        }
        assert!(counts.windows(2).all(|w| w[0] > w[1]), "{counts:?}");
    }

    #[test]
    fn a_seed_repeats_its_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert!((0..10_000).all(|_| (0.0..1.0).contains(&a.next_f64())));
    }
}
