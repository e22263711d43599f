//! Which worker reads which Kafka partition. Assignment is explicit and static (`assign`, never a
//! consumer-group rebalance), because a rebalance behind timely's back would move a partition
//! while the frontier still counts on its old owner.

/// The partitions of a `partitions`-partition topic that worker `index` of `peers` owns:
/// `p mod peers == index`. Every partition has exactly one owner; a worker may own none.
pub fn owned_partitions(index: usize, peers: usize, partitions: u32) -> Vec<i32> {
    (0..partitions)
        .filter(|p| *p as usize % peers == index)
        .map(|p| p as i32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for peers in 1..=3 {
            for partitions in [1u32, 2, 3, 4, 7, 8] {
                let mut seen: Vec<i32> = (0..peers)
                    .flat_map(|w| owned_partitions(w, peers, partitions))
                    .collect();
                seen.sort();
                assert_eq!(
                    seen,
                    (0..partitions as i32).collect::<Vec<_>>(),
                    "peers={peers} partitions={partitions}"
                );
            }
        }
    }

    #[test]
    fn table() {
        assert_eq!(owned_partitions(0, 1, 4), vec![0, 1, 2, 3]);
        assert_eq!(owned_partitions(0, 2, 4), vec![0, 2]);
        assert_eq!(owned_partitions(1, 2, 4), vec![1, 3]);
        assert_eq!(owned_partitions(2, 3, 4), vec![2]);
        assert_eq!(owned_partitions(2, 3, 2), Vec::<i32>::new());
    }
}
