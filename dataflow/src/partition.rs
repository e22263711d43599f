//! What a source knows about one owned partition, and the rule that makes replay exact.
//!
//! Every record read is assigned to epoch `max(own epoch, floor)`, where the partition's floor
//! follows its watermark (a record below the floor is late and is folded into the floor). Each
//! time the floor moves, the partition reports a [`Mark`]: the offset at which it moved and the
//! smallest offset still needed by an epoch at or above the old floor. Worker 0 turns marks into
//! the progress record; on restart [`Partition::resume`] skips exactly the records that
//! published epochs already counted and holds the floor where the previous run had it, epoch by
//! epoch along the record's floor schedule, so the epochs that may have been published after the
//! last progress record (up to `IN_FLIGHT` of them, progress.rs) come out identical.

use crate::watermark::PartitionClock;
use emostream_protocol::epoch::epoch_of;
use emostream_protocol::progress::PartitionProgress;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// A partition's floor moved from `start` to `end` when its next offset to read was `position`.
/// For every epoch `e` in `start..end`: records below `position` were assigned while the floor
/// was at most `e`, records from `position` on are assigned above `e`, and no record below
/// `resume` is needed by an epoch above `e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub partition: i32,
    pub start: u64,
    pub end: u64,
    pub position: i64,
    pub resume: i64,
}

/// Where one event of a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Already counted in an epoch that was published before the restart.
    Skip,
    Count {
        epoch: u64,
        late: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Partition {
    id: i32,
    clock: PartitionClock,
    floor: u64,
    /// The next offset to read.
    position: i64,
    /// Assigned epoch → the smallest offset assigned to it, for epochs not yet below the floor.
    needed: BTreeMap<u64, i64>,
    /// (epoch, skip_before) from the progress record.
    skip: Option<(u64, i64)>,
    /// The floor schedule from the progress record: (floor ceiling, until offset) for each epoch
    /// the run that wrote it may have published after it, in order.
    holds: VecDeque<(u64, i64)>,
    marks: Vec<Mark>,
}

impl Partition {
    /// A partition read from its beginning.
    pub fn fresh(id: i32) -> Self {
        Partition {
            id,
            clock: PartitionClock::default(),
            floor: 0,
            position: 0,
            needed: BTreeMap::new(),
            skip: None,
            holds: VecDeque::new(),
            marks: Vec::new(),
        }
    }

    /// A partition resumed from its entry in the progress record for `epoch`.
    pub fn resume(epoch: u64, from: &PartitionProgress) -> Self {
        let mut p = Partition::fresh(from.partition);
        p.floor = epoch + 1;
        p.position = from.resume_offset;
        p.skip = Some((epoch, from.skip_before));
        p.holds = from
            .holds()
            .zip(epoch + 1..)
            .map(|(until, e)| (e, until))
            .collect();
        p.release_hold_at(from.resume_offset);
        p
    }

    pub fn id(&self) -> i32 {
        self.id
    }

    /// The offset to start reading from.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether the floor is still held where the previous run had it (a replay under way).
    pub fn holding(&self) -> bool {
        !self.holds.is_empty()
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The partition's watermark (Unix ms), once anything is known.
    pub fn watermark_ms(&self, lateness_ms: u64) -> Option<u64> {
        self.clock.watermark(lateness_ms)
    }

    /// The broker answered a request sent at `asked_ms` with `high` as the partition's high
    /// watermark: if every record below it has been read, the partition was read to its end.
    pub fn end_reported(&mut self, high: i64, asked_ms: u64) {
        let at_end = self.position >= high;
        self.clock.broker_answered(asked_ms, at_end);
    }

    /// The broker failed to answer after answering a request sent at `last_answer_ms`; see
    /// `PartitionClock::broker_was_away`.
    pub fn broker_was_away(&mut self, last_answer_ms: u64, lateness_ms: u64, settle_ms: u64) {
        self.clock
            .broker_was_away(last_answer_ms, lateness_ms, settle_ms);
    }

    /// Call before assigning the events of the record at `offset`.
    pub fn begin_record(&mut self, offset: i64) {
        self.release_hold_at(offset);
    }

    /// Where one event of the record at `offset`, received in epoch `own`, is counted.
    pub fn assign(&mut self, offset: i64, own: u64) -> Assignment {
        if let Some((epoch, before)) = self.skip {
            if offset < before && own <= epoch {
                return Assignment::Skip;
            }
        }
        let epoch = own.max(self.floor);
        let min = self.needed.entry(epoch).or_insert(offset);
        *min = (*min).min(offset);
        Assignment::Count {
            epoch,
            late: epoch > own,
        }
    }

    /// Call after the record at `offset` (Kafka timestamp `timestamp_ms`) has been assigned.
    pub fn end_record(&mut self, offset: i64, timestamp_ms: u64) {
        self.position = self.position.max(offset + 1);
        self.clock.record(timestamp_ms);
    }

    /// The consumer stands at `offset` without having delivered the records before it: they
    /// are gone (a log start moved by retention) or were never records (transaction markers).
    pub fn skipped_to(&mut self, offset: i64) {
        self.position = self.position.max(offset);
    }

    /// The consumer read to the end of the log as it was at its last fetch. A hold whose offset
    /// has been read ends here; one above the end stays: the run that wrote the progress record
    /// read every record below `until`, so an end below it is a high watermark briefly behind
    /// (a leader change) or records not delivered yet. Releasing there would record a mark at
    /// an offset not read, and the records still below `until` would land in a later epoch than
    /// the first run gave them. (A log that truly lost them, in an unclean leader election,
    /// holds the floor here, and says so, rather than re-publish an epoch differently.)
    pub fn reached_end(&mut self) {
        self.release_hold_at(self.position);
        if let Some((_, until)) = self.holds.front() {
            tracing::warn!(
                partition = self.id,
                position = self.position,
                until,
                "the log ends before the hold offset; holding until it is read"
            );
        }
    }

    /// Raises the floor to the epoch of the watermark (not past a hold).
    pub fn advance(&mut self, lateness_ms: u64, window_ms: u64) {
        let Some(watermark) = self.clock.watermark(lateness_ms) else {
            return;
        };
        let mut target = epoch_of(watermark, window_ms);
        if let Some((ceiling, _)) = self.holds.front() {
            target = target.min(*ceiling);
        }
        self.raise_floor(target, self.position);
    }

    /// The marks produced since the last call.
    pub fn take_marks(&mut self) -> Vec<Mark> {
        std::mem::take(&mut self.marks)
    }

    /// Ends every hold whose offset has been reached: the run that wrote the record had its
    /// floor past each of those epochs from there on.
    fn release_hold_at(&mut self, offset: i64) {
        let mut released = None;
        while let Some(&(ceiling, until)) = self.holds.front() {
            if offset < until {
                break;
            }
            self.holds.pop_front();
            released = Some(ceiling);
        }
        if let Some(ceiling) = released {
            self.raise_floor(ceiling + 1, offset);
        }
    }

    fn raise_floor(&mut self, to: u64, position: i64) {
        if to <= self.floor {
            return;
        }
        let resume = self
            .needed
            .values()
            .copied()
            .min()
            .map_or(position, |n| n.min(position));
        self.marks.push(Mark {
            partition: self.id,
            start: self.floor,
            end: to,
            position,
            resume,
        });
        self.floor = to;
        // Epochs below the floor get no more records; their offsets no longer bound a resume.
        self.needed = self.needed.split_off(&to);
    }
}

#[cfg(test)]
mod replay_property;

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1000;

    /// Reads one single-event record per (offset, own epoch, timestamp) and returns assignments.
    fn read(p: &mut Partition, records: &[(i64, u64, u64)]) -> Vec<Assignment> {
        records
            .iter()
            .map(|&(offset, own, ts)| {
                p.begin_record(offset);
                let a = p.assign(offset, own);
                p.end_record(offset, ts);
                a
            })
            .collect()
    }

    fn count(epoch: u64, late: bool) -> Assignment {
        Assignment::Count { epoch, late }
    }

    #[test]
    fn late_records_fold_into_the_floor_and_marks_report_positions() {
        let mut p = Partition::fresh(3);
        assert_eq!(
            read(&mut p, &[(0, 5, 5_100), (1, 5, 5_900)]),
            vec![count(5, false), count(5, false)]
        );
        p.advance(0, W); // watermark 5_900 → floor 5
        assert_eq!(
            p.take_marks(),
            vec![Mark {
                partition: 3,
                start: 0,
                end: 5,
                position: 2,
                resume: 0
            }]
        );
        assert_eq!(
            read(&mut p, &[(2, 7, 7_200), (3, 4, 4_500)]),
            vec![count(7, false), count(5, true)]
        );
        p.advance(0, W); // watermark 7_200 → floor 7
        assert_eq!(
            p.take_marks(),
            vec![Mark {
                partition: 3,
                start: 5,
                end: 7,
                position: 4,
                resume: 0
            }]
        );
        assert_eq!(p.floor(), 7);
        p.advance(0, W);
        assert_eq!(p.take_marks(), vec![], "the floor did not move");
    }

    /// The idle rule follows the clock only while the records read reach the high watermark the
    /// broker reported: while the fetch stalls (the probe answers, the records appended
    /// meanwhile are not delivered), the floor holds however far the clock runs, so the records
    /// delivered after the stall are on time.
    #[test]
    fn a_fetch_stall_never_moves_the_floor_past_unread_records() {
        const LATENESS: u64 = 300;
        let mut p = Partition::fresh(0);
        read(&mut p, &[(0, 5, 5_100), (1, 5, 5_200)]);
        p.end_reported(2, 6_000);
        p.advance(LATENESS, W);
        assert_eq!(
            p.floor(),
            5,
            "read to the end at 6_000: the clock leads (5_700)"
        );
        // Records 2 and 3 land at 6_100 and 6_200; the fetch stalls for 14 s while the probe
        // keeps reporting them.
        for asked_ms in [7_000, 8_000, 20_000] {
            p.end_reported(4, asked_ms);
            p.advance(LATENESS, W);
            assert_eq!(
                p.floor(),
                5,
                "records below the high not read at {asked_ms}"
            );
        }
        assert_eq!(
            read(&mut p, &[(2, 6, 6_100), (3, 6, 6_200)]),
            vec![count(6, false), count(6, false)],
            "on time once delivered"
        );
        p.end_reported(4, 20_025);
        p.advance(LATENESS, W);
        assert_eq!(
            p.floor(),
            19,
            "read to the end again: the clock leads (19_725)"
        );
    }

    #[test]
    fn resume_is_the_least_offset_an_open_epoch_needs() {
        let mut p = Partition::fresh(0);
        read(
            &mut p,
            &[(0, 1, 1_000), (1, 3, 3_000), (2, 2, 2_500), (3, 4, 4_100)],
        );
        p.advance(0, W); // floor 0 → 4
                         // Epoch 4 (offset 3) is at the new floor, so it is still needed.
        assert_eq!(
            p.take_marks(),
            vec![Mark {
                partition: 0,
                start: 0,
                end: 4,
                position: 4,
                resume: 0
            }]
        );
        read(&mut p, &[(4, 6, 6_100)]);
        p.advance(0, W); // floor 4 → 6: epoch 4's offset 3 is the least still held
        assert_eq!(
            p.take_marks(),
            vec![Mark {
                partition: 0,
                start: 4,
                end: 6,
                position: 5,
                resume: 3
            }]
        );
        p.end_reported(p.position(), 8_000);
        p.advance(0, W); // idle: the broker's confirmed clock moves the floor to 8
        assert_eq!(
            p.take_marks(),
            vec![Mark {
                partition: 0,
                start: 6,
                end: 8,
                position: 5,
                resume: 4
            }]
        );
    }

    /// A first run reads a log and publishes epochs up to 5; a second run resumes from the
    /// progress its marks would have produced. Epoch 6, which may already have been published,
    /// must be assigned exactly the same records, and nothing in epochs ≤ 5 may be counted again.
    #[test]
    fn replay_reproduces_the_epoch_after_the_progress_record() {
        // (offset, own epoch, timestamp): mostly in order, with three late records.
        let log: Vec<(i64, u64, u64)> = vec![
            (0, 4, 4_100),
            (1, 5, 5_100),
            (2, 6, 6_050),
            (3, 5, 5_400), // read while the floor is 6: late, folded into 6
            (4, 6, 6_300),
            (5, 5, 5_500), // late, folded into 6
            (6, 7, 7_200),
            (7, 6, 6_400), // read while the floor is 7: late, folded into 7
            (8, 8, 8_100),
        ];
        let mut first = Partition::fresh(0);
        let mut assigned = Vec::new();
        let mut marks = Vec::new();
        for (i, record) in log.iter().enumerate() {
            assigned.extend(read(&mut first, std::slice::from_ref(record)));
            // The floor trails the newest timestamp by nothing; advance after every record.
            first.advance(0, W);
            marks.extend(first.take_marks());
            assert!(first.floor() <= log[..=i].iter().map(|r| r.1).max().unwrap());
        }
        // Progress for epoch 5, as worker 0 would build it from the marks covering 5 and 6.
        let covering = |e: u64| {
            *marks
                .iter()
                .find(|m| m.start <= e && e < m.end)
                .expect("a mark covers every epoch")
        };
        let (m5, m6) = (covering(5), covering(6));
        let progress = PartitionProgress {
            partition: 0,
            resume_offset: m5.resume,
            skip_before: m5.position,
            hold_until: m6.position,
            later_holds: Vec::new(),
        };

        let mut second = Partition::resume(5, &progress);
        let replay: Vec<_> = log
            .iter()
            .filter(|r| r.0 >= second.position())
            .copied()
            .collect();
        let mut again = Vec::new();
        for record in &replay {
            again.extend(read(&mut second, std::slice::from_ref(record)));
            second.advance(0, W);
            second.take_marks();
        }
        let epoch_of_run = |offsets: &[i64], a: &[Assignment], e: u64| -> Vec<i64> {
            offsets
                .iter()
                .zip(a)
                .filter(|(_, a)| **a == count(e, true) || **a == count(e, false))
                .map(|(o, _)| *o)
                .collect()
        };
        let first_offsets: Vec<i64> = log.iter().map(|r| r.0).collect();
        let replay_offsets: Vec<i64> = replay.iter().map(|r| r.0).collect();
        // Epoch 6 is identical; epochs ≤ 5 get nothing new; epoch 7 gets its records again.
        assert_eq!(
            epoch_of_run(&replay_offsets, &again, 6),
            epoch_of_run(&first_offsets, &assigned, 6)
        );
        for e in 0..=5 {
            assert_eq!(
                epoch_of_run(&replay_offsets, &again, e),
                Vec::<i64>::new(),
                "epoch {e} counted again"
            );
        }
        assert_eq!(epoch_of_run(&first_offsets, &assigned, 6), vec![2, 3, 4, 5]);
        assert_eq!(
            epoch_of_run(&replay_offsets, &again, 7),
            epoch_of_run(&first_offsets, &assigned, 7)
        );
        // Every record is either skipped or counted exactly once over the two runs' published
        // epochs (≤ 5 from the first run, > 5 from the second).
        let published_first: usize = (0..=5)
            .map(|e| epoch_of_run(&first_offsets, &assigned, e).len())
            .sum();
        let counted_second = again
            .iter()
            .filter(|a| matches!(a, Assignment::Count { .. }))
            .count();
        assert_eq!(published_first + counted_second, log.len());
    }

    /// The end of the log reported below `hold_until` (a high watermark briefly behind) does
    /// not release the hold: the records below it still go where the first run put them, and
    /// the hold ends at the offset actually read.
    #[test]
    fn an_end_below_the_hold_offset_keeps_the_hold() {
        let progress = PartitionProgress {
            partition: 0,
            resume_offset: 2,
            skip_before: 3,
            hold_until: 6,
            later_holds: Vec::new(),
        };
        let mut p = Partition::resume(5, &progress);
        assert_eq!((p.position(), p.floor()), (2, 6));
        assert_eq!(
            read(&mut p, &[(2, 5, 5_500), (3, 6, 6_100), (4, 7, 7_300)]),
            vec![Assignment::Skip, count(6, false), count(7, false)]
        );
        p.reached_end(); // at offset 5, below the hold's 6
        p.end_reported(5, 9_000);
        p.advance(0, W);
        assert_eq!((p.floor(), p.take_marks()), (6, vec![]), "still held");
        // The record the first run read before its floor passed 6 still lands in 6, on time.
        assert_eq!(read(&mut p, &[(5, 6, 6_400)]), vec![count(6, false)]);
        p.reached_end();
        assert_eq!(
            p.take_marks(),
            vec![Mark {
                partition: 0,
                start: 6,
                end: 7,
                position: 6,
                resume: 3
            }]
        );
        assert_eq!(p.floor(), 7);
        p.advance(0, W); // the broker's clock (9_000) leads now
        assert_eq!(p.floor(), 9);
        assert_eq!(read(&mut p, &[(6, 6, 6_500)]), vec![count(9, true)]);
    }
}
