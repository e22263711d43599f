//! Nearest-rank percentiles, the way every benchmark and load tool of the workspace reports
//! latencies.

/// The nearest-rank `q` quantile (`q` in (0, 1]) of samples sorted ascending; `None` when there
/// are none.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The nearest-rank `q` quantile of a histogram whose bucket `i` counts samples of `i` (e.g.
/// 1 ms buckets); `None` when it is empty.
pub fn bucket_percentile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    buckets.iter().enumerate().find_map(|(value, n)| {
        seen += n;
        (seen >= rank).then_some(value as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), Some(50));
        assert_eq!(percentile(&samples, 0.99), Some(99));
        assert_eq!(percentile(&samples, 1.0), Some(100));
        assert_eq!(percentile(&[7], 0.5), Some(7));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
    }

    #[test]
    fn bucket_percentiles_count_samples_not_buckets() {
        // 98 samples of 1 ms, one of 3 ms, one of 7 ms.
        let buckets = [0, 98, 0, 1, 0, 0, 0, 1];
        assert_eq!(bucket_percentile(&buckets, 0.5), Some(1));
        assert_eq!(bucket_percentile(&buckets, 0.98), Some(1));
        assert_eq!(bucket_percentile(&buckets, 0.99), Some(3));
        assert_eq!(bucket_percentile(&buckets, 1.0), Some(7));
        assert_eq!(bucket_percentile(&[0, 0], 0.5), None);
    }
}
