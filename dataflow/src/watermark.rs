//! Per-partition watermarks and the idle rule.
//!
//! A partition's watermark trails its newest record timestamp by `allowed_lateness_ms`. A
//! partition the source has read to its end advances with the clock instead, so one quiet
//! partition never holds every epoch open — but only with a clock the broker vouched for: "at the
//! end" is a high watermark the broker reported in answer to a request sent at `asked_ms`, with
//! every record below it read. Any record not read yet was appended after that request, so it
//! cannot have been received (by a gateway) much before `asked_ms`: the watermark is then
//! `asked_ms - allowed_lateness_ms`. While the broker does not answer (stopped, cut off, hung)
//! `asked_ms` stands still, and so does the floor: no on-time tap turns late because the broker
//! was away.

/// What a source knows about one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionClock {
    /// The newest record timestamp seen (Unix ms).
    newest_ms: Option<u64>,
    /// The newest moment at which the broker confirmed that everything before it was read.
    read_to_end_at_ms: Option<u64>,
}

impl PartitionClock {
    pub fn record(&mut self, timestamp_ms: u64) {
        self.newest_ms = Some(self.newest_ms.map_or(timestamp_ms, |n| n.max(timestamp_ms)));
    }

    /// Everything appended to the partition before `asked_ms` has been read.
    pub fn read_to_end_at(&mut self, asked_ms: u64) {
        self.read_to_end_at_ms = Some(self.read_to_end_at_ms.map_or(asked_ms, |t| t.max(asked_ms)));
    }

    /// The time before which this partition will (barring late records) send nothing more, or
    /// `None` while nothing is known yet (startup, before the first record or confirmed end).
    pub fn watermark(&self, lateness_ms: u64) -> Option<u64> {
        let from_records = self.newest_ms.map(|n| n.saturating_sub(lateness_ms));
        let from_clock = self
            .read_to_end_at_ms
            .map(|t| t.saturating_sub(lateness_ms));
        from_records.max(from_clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_a_record_or_a_confirmed_end() {
        let mut c = PartitionClock::default();
        assert_eq!(c.watermark(300), None);
        c.read_to_end_at(10_000);
        assert_eq!(c.watermark(300), Some(9_700));
    }

    #[test]
    fn busy_partition_trails_its_newest_record() {
        let mut c = PartitionClock::default();
        c.record(5_000);
        c.record(4_000); // out of order: the newest still counts
        assert_eq!(c.watermark(300), Some(4_700));
    }

    #[test]
    fn an_idle_partition_follows_only_the_broker_s_confirmations() {
        let mut c = PartitionClock::default();
        c.record(5_000);
        c.read_to_end_at(8_000);
        assert_eq!(c.watermark(300), Some(7_700));
        // A confirmation older than one already seen (a slow answer) takes nothing back.
        c.read_to_end_at(7_000);
        assert_eq!(c.watermark(300), Some(7_700));
        // No confirmation while the broker is away: however late it gets, the watermark stays.
        c.record(7_900);
        assert_eq!(c.watermark(300), Some(7_700));
        c.read_to_end_at(20_000);
        assert_eq!(c.watermark(300), Some(19_700));
    }
}
