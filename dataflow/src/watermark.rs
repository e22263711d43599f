//! Per-partition watermarks and the idle rule.
//!
//! A partition's watermark trails its newest record timestamp by `allowed_lateness_ms`. A
//! partition the source has read to its end advances with the clock instead, so one quiet
//! partition never holds every epoch open — but only with a clock the broker vouched for: "at the
//! end" is a high watermark the broker reported in answer to a request sent at `asked_ms`, with
//! every record below it read. Any record not read yet was appended after that request, so (the
//! lateness bound) it was not received by a gateway much before `asked_ms`: the watermark is then
//! `asked_ms - allowed_lateness_ms`. While the broker does not answer (stopped, cut off, hung)
//! `asked_ms` stands still, and so does the floor.
//!
//! An outage breaks the lateness bound for the records that were on their way when it began: a
//! gateway's producer keeps retrying them and lands them once the broker is back, up to its
//! delivery timeout after they were received, each with a 2xx that names its epoch. So after the
//! broker failed to answer (or stalled), the watermark stays where it was until the broker has answered
//! `settle_ms` (the delivery timeout plus the lateness) after its last answer before the failure:
//! by then every such record has landed or failed. A failed request marks an outage, and so does
//! an answer slower than the allowed lateness; the probe's timeout is generous (5 s) so that a
//! broker merely slow on a loaded machine does not fail requests and hold epochs for seconds.

/// What a source knows about one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionClock {
    /// The newest record timestamp seen (Unix ms).
    newest_ms: Option<u64>,
    /// The newest moment at which the broker confirmed that everything before it was read.
    read_to_end_at_ms: Option<u64>,
    /// After an outage: the watermark's ceiling, and the answer time that lifts it.
    settling: Option<(u64, u64)>,
}

impl PartitionClock {
    pub fn record(&mut self, timestamp_ms: u64) {
        self.newest_ms = Some(self.newest_ms.map_or(timestamp_ms, |n| n.max(timestamp_ms)));
    }

    /// The broker failed to answer after its answer to a request sent at `last_answer_ms`: the
    /// watermark holds until an answer `settle_ms` after that (see the module's header).
    pub fn broker_was_away(&mut self, last_answer_ms: u64, lateness_ms: u64, settle_ms: u64) {
        let until = last_answer_ms + settle_ms;
        match &mut self.settling {
            Some((_, lift)) => *lift = (*lift).max(until),
            None => {
                let ceiling = self.watermark(lateness_ms).unwrap_or(0);
                self.settling = Some((ceiling, until));
            }
        }
    }

    /// The broker answered a request sent at `asked_ms`; `at_end`: everything appended before
    /// then has been read.
    pub fn broker_answered(&mut self, asked_ms: u64, at_end: bool) {
        if let Some((_, until)) = self.settling {
            if asked_ms >= until {
                self.settling = None;
            }
        }
        if at_end {
            self.read_to_end_at_ms =
                Some(self.read_to_end_at_ms.map_or(asked_ms, |t| t.max(asked_ms)));
        }
    }

    /// The time before which this partition will (barring late records) send nothing more, or
    /// `None` while nothing is known yet (startup, before the first record or confirmed end).
    pub fn watermark(&self, lateness_ms: u64) -> Option<u64> {
        let from_records = self.newest_ms.map(|n| n.saturating_sub(lateness_ms));
        let from_clock = self
            .read_to_end_at_ms
            .map(|t| t.saturating_sub(lateness_ms));
        let watermark = from_records.max(from_clock);
        match self.settling {
            Some((ceiling, _)) => watermark.map(|w| w.min(ceiling)),
            None => watermark,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATENESS: u64 = 300;
    const SETTLE: u64 = 5_300;

    fn answer(c: &mut PartitionClock, asked_ms: u64, at_end: bool) {
        c.broker_answered(asked_ms, at_end);
    }

    #[test]
    fn unknown_until_a_record_or_a_confirmed_end() {
        let mut c = PartitionClock::default();
        assert_eq!(c.watermark(LATENESS), None);
        answer(&mut c, 10_000, true);
        assert_eq!(c.watermark(LATENESS), Some(9_700));
    }

    #[test]
    fn busy_partition_trails_its_newest_record() {
        let mut c = PartitionClock::default();
        c.record(5_000);
        c.record(4_000); // out of order: the newest still counts
        answer(&mut c, 6_000, false); // records still to read: the clock says nothing
        assert_eq!(c.watermark(LATENESS), Some(4_700));
    }

    #[test]
    fn an_idle_partition_follows_only_the_broker_s_confirmations() {
        let mut c = PartitionClock::default();
        c.record(5_000);
        answer(&mut c, 8_000, true);
        assert_eq!(c.watermark(LATENESS), Some(7_700));
        // A confirmation older than one already seen (a slow answer) takes nothing back.
        answer(&mut c, 7_900, true);
        assert_eq!(c.watermark(LATENESS), Some(7_700));
        // Without an answer, however late it gets, the watermark stays.
        c.record(7_900);
        assert_eq!(c.watermark(LATENESS), Some(7_700));
        answer(&mut c, 8_025, true);
        assert_eq!(c.watermark(LATENESS), Some(7_725));
    }

    #[test]
    fn after_an_outage_the_watermark_waits_until_retried_records_have_landed() {
        let mut c = PartitionClock::default();
        answer(&mut c, 10_000, true);
        assert_eq!(c.watermark(LATENESS), Some(9_700));
        // Requests fail for 3 s: the broker was away. Its first answers do not move the
        // watermark …
        c.broker_was_away(10_000, LATENESS, SETTLE);
        answer(&mut c, 13_000, true);
        assert_eq!(c.watermark(LATENESS), Some(9_700));
        // … a record a gateway retried through the outage lands, on time …
        c.record(9_990);
        answer(&mut c, 15_000, true);
        assert_eq!(c.watermark(LATENESS), Some(9_700));
        // … and once the delivery timeout (plus lateness) after the last answer has passed,
        // the clock leads again.
        answer(&mut c, 15_300, true);
        assert_eq!(c.watermark(LATENESS), Some(15_000));
    }
}
