//! Per-partition watermarks and the idle rule.
//!
//! A partition's watermark trails its newest record timestamp by `allowed_lateness_ms`. A
//! partition whose consumer has reached the end of the log advances with the wall clock instead,
//! so one quiet partition never holds every epoch open. The end-of-log signal is at most one
//! fetch old, so the wall-clock watermark also subtracts `staleness_ms` (the fetch wait plus the
//! poll interval): a record appended after our last look cannot be older than that.

/// What a source knows about one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionClock {
    /// The newest record timestamp seen (Unix ms).
    newest_ms: Option<u64>,
    /// The consumer has read everything the broker had at its last fetch.
    at_end: bool,
}

impl PartitionClock {
    pub fn record(&mut self, timestamp_ms: u64) {
        self.newest_ms = Some(self.newest_ms.map_or(timestamp_ms, |n| n.max(timestamp_ms)));
        self.at_end = false;
    }

    pub fn reached_end(&mut self) {
        self.at_end = true;
    }

    /// The time before which this partition will (barring late records) send nothing more, or
    /// `None` while nothing is known yet (startup, before the first record or end-of-log).
    pub fn watermark(&self, now_ms: u64, lateness_ms: u64, staleness_ms: u64) -> Option<u64> {
        let from_records = self.newest_ms.map(|n| n.saturating_sub(lateness_ms));
        let from_clock = self
            .at_end
            .then(|| now_ms.saturating_sub(lateness_ms + staleness_ms));
        from_records.max(from_clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_a_record_or_the_end() {
        let mut c = PartitionClock::default();
        assert_eq!(c.watermark(10_000, 300, 60), None);
        c.reached_end();
        assert_eq!(c.watermark(10_000, 300, 60), Some(9_640));
    }

    #[test]
    fn busy_partition_trails_its_newest_record() {
        let mut c = PartitionClock::default();
        c.record(5_000);
        c.record(4_000); // out of order: the newest still counts
        assert_eq!(c.watermark(99_000, 300, 60), Some(4_700));
    }

    #[test]
    fn idle_partition_follows_the_clock_until_the_next_record() {
        let mut c = PartitionClock::default();
        c.record(5_000);
        c.reached_end();
        assert_eq!(c.watermark(8_000, 300, 60), Some(7_640));
        c.record(7_900);
        assert_eq!(c.watermark(20_000, 300, 60), Some(7_600));
    }
}
