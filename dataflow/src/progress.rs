//! Worker 0 turns the sources' marks into the progress record, once every epoch it covers is
//! durably published; its output frontier ("an acknowledged record on the chain lets out epochs
//! up to here": the end of its floor schedule) is the gate that lets the next epochs be
//! published. Each record names the one it
//! continues; before the gate opens, [`ChainCheck`] confirms no other cluster continued that
//! one first ([`crate::fence`]).

use crate::fence::{ChainCheck, Verdict, EXIT_FENCED, EXIT_RESUME};
use crate::partition::Mark;
use crate::publish::AckedProducer;
use emostream_protocol::progress::{Counting, PartitionProgress, Progress};
use rdkafka::producer::BaseRecord;
use std::collections::BTreeMap;
use std::time::Duration;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;

const ACK_POLL: Duration = Duration::from_millis(10);

/// How many epochs one progress record lets out: its floor schedule covers up to this many after
/// its epoch, and a restart reproduces each of them byte for byte. In a steady state the floors
/// pass one epoch at a time and each record lets out one; catching up, the floors run ahead and
/// one record's round trip (written, acknowledged, checked on the chain) lets out this many.
pub const IN_FLIGHT: u64 = 8;

/// Every partition's marks, as far as they are still needed.
#[derive(Debug, Default)]
pub struct MarkLedger {
    marks: BTreeMap<i32, Vec<Mark>>,
}

impl MarkLedger {
    pub fn add(&mut self, mark: Mark) {
        self.marks.entry(mark.partition).or_default().push(mark);
    }

    fn covering(&self, partition: i32, epoch: u64) -> Option<&Mark> {
        self.marks
            .get(&partition)?
            .iter()
            .find(|m| m.start <= epoch && epoch < m.end)
    }

    /// The progress record for `epoch` over partitions `0..counting.events_partitions`, with
    /// the floor schedule of `epoch + 1 ..= through`, if every partition has marks covering
    /// `epoch` and each epoch of the schedule. Nothing is ever made up: a partition whose floor
    /// has not passed `epoch + 1` has not said where the next run must hold its floor, so there
    /// is no record for `epoch` until it does (and after a stop, none at all).
    pub fn progress(&self, epoch: u64, through: u64, counting: Counting) -> Option<Progress> {
        if through <= epoch {
            return None;
        }
        let partitions = counting.events_partitions;
        let mut out = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions as i32 {
            let at = self.covering(partition, epoch)?;
            let mut holds = (epoch + 1..=through)
                .map(|e| self.covering(partition, e).map(|m| m.position))
                .collect::<Option<Vec<i64>>>()?;
            let later_holds = holds.split_off(1);
            out.push(PartitionProgress {
                partition,
                resume_offset: at.resume,
                skip_before: at.position,
                hold_until: holds[0],
                later_holds,
            });
        }
        Some(Progress {
            epoch,
            counting: Some(counting),
            partitions: out,
            follows: None,
            run: None,
        })
    }

    /// The last epoch every partition's floor has passed, with the marks in (a record's floor
    /// schedule can reach it).
    fn last_covered(&self, partitions: u32) -> Option<u64> {
        (0..partitions as i32)
            .map(|p| {
                self.marks
                    .get(&p)
                    .and_then(|m| m.iter().map(|m| m.end).max())
            })
            .min()??
            .checked_sub(1)
    }

    /// Forgets marks that no later record can need (those ending at or before `epoch`).
    fn forget_through(&mut self, epoch: u64) {
        for marks in self.marks.values_mut() {
            marks.retain(|m| m.end > epoch);
        }
    }
}

/// What the progress writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Nothing to write yet.
    Wait,
    /// Nothing more can ever be written in this run: the writer and the gate stop.
    Stop,
    /// The record for `epoch`, its floor schedule through `through`.
    Write { epoch: u64, through: u64 },
}

/// The writer's rule. `allowed` is the last epoch the gate lets out (the last record's schedule's
/// end), `published` the published frontier (`None`: empty, everything is published and nothing
/// more will come), `marks` the marks' frontier (`None`: every source has stopped, and only the
/// marks in `ledger` can back a record).
///
/// A record for E needs every epoch up to E published, and every epoch the last record let out
/// among them (E ≥ `allowed`), so that the gate only ever moves on; and marks covering E + 1 on
/// every partition. Its schedule reaches as far as every partition's floor has passed, at most
/// `in_flight` epochs.
fn next_record(
    allowed: u64,
    published: Option<u64>,
    marks: Option<u64>,
    ledger: &MarkLedger,
    partitions: u32,
    in_flight: u64,
) -> Next {
    // Everything is published and nothing more will come. (After a stop the last record may
    // lag the last published epochs: the replay rule reproduces them, as after a crash.)
    let Some(published) = published else {
        return Next::Stop;
    };
    let Some(epoch) = published.checked_sub(1) else {
        return Next::Wait;
    };
    // The last epoch every partition's floor has passed.
    let covered = match marks {
        Some(m) => match m.checked_sub(1) {
            Some(covered) => covered,
            None => return Next::Wait,
        },
        // Once no more can be written, the writer stops for good, and the gate with it
        // (publish.rs drops what it did not let through).
        None => match ledger.last_covered(partitions) {
            Some(covered) if covered > allowed => covered,
            _ => return Next::Stop,
        },
    };
    match covered.checked_sub(1).map(|c| c.min(epoch)) {
        Some(epoch) if epoch >= allowed => Next::Write {
            epoch,
            through: covered.min(epoch + in_flight),
        },
        _ => Next::Wait,
    }
}

/// Worker 0's means to write progress records.
pub struct ProgressWriter {
    pub producer: AckedProducer,
    pub chain: ChainCheck,
    /// The offset of the record the first one continues (the one the run resumed from), or
    /// [`emostream_protocol::progress::FIRST`].
    pub follows: i64,
    /// This cluster run's id, in every record it writes ([`crate::fence`]).
    pub run: u64,
    /// How many epochs one record may let out, at most: [`IN_FLIGHT`] (tests choose).
    pub in_flight: u64,
}

pub trait WriteProgress<'scope> {
    /// Writes the progress record with `writer` (given to worker 0 only; the others pass
    /// `None`), the marks of partitions `0..counting.events_partitions` and the settings
    /// `counting` in it, and returns the gate stream, whose frontier is the last epoch an
    /// acknowledged record on the chain lets out (`allowed` at first: the recovered record's
    /// [`Progress::last_reproducible`], or 0), which the feedback makes one more.
    fn write_progress(
        self,
        published: Stream<'scope, u64, Vec<()>>,
        counting: Counting,
        allowed: u64,
        writer: Option<ProgressWriter>,
    ) -> Stream<'scope, u64, Vec<()>>;
}

impl<'scope> WriteProgress<'scope> for Stream<'scope, u64, Vec<Mark>> {
    fn write_progress(
        self,
        published: Stream<'scope, u64, Vec<()>>,
        counting: Counting,
        allowed: u64,
        writer: Option<ProgressWriter>,
    ) -> Stream<'scope, u64, Vec<()>> {
        let partitions = counting.events_partitions;
        let scope = self.scope();
        let is_writer = writer.is_some();
        let to_worker_zero = Exchange::new(|_: &Mark| 0);
        let mut builder = OperatorBuilder::new("WriteProgress".to_owned(), scope);
        let info = builder.operator_info();
        // Neither input holds the gate back: its frontier is the writer's capability alone, so
        // it ends, rather than follows the published epochs, when the writer stops for good.
        let mut marks = builder.new_input_connection(self, to_worker_zero, []);
        let mut acks = builder.new_input_connection(published, Pipeline, []);
        let (output, gate) = builder.new_output_connection::<Vec<()>, _>([]);
        builder.build(move |mut capabilities| {
            let initial = capabilities.pop().expect("one output, one capability");
            let activator = scope.activator_for(info.address.clone());
            if let Some(w) = writer.as_ref() {
                w.producer
                    .wake(scope.worker().sync_activator_for(info.address.to_vec()));
                w.chain
                    .wake(scope.worker().sync_activator_for(info.address.to_vec()));
            }
            let mut follows = writer.as_ref().map_or(0, |w| w.follows);
            // Only worker 0's capability matters; the others give theirs up at once.
            let mut cap = is_writer.then(|| initial.delayed(&allowed));
            let mut ledger = MarkLedger::default();
            // The record sent: (its epoch, the last epoch of its floor schedule).
            let mut in_flight: Option<(u64, u64)> = None;
            // The record acknowledged and being checked: (its epoch, the last of its schedule,
            // its offset).
            let mut checking: Option<(u64, u64, i64)> = None;
            // No data ever leaves on the gate; its capability alone carries the frontier.
            let _output = output;

            move |frontiers| {
                let (marks_frontier, acks_frontier) = (&frontiers[0], &frontiers[1]);
                marks.for_each_stamp(|_, data| {
                    for batch in data {
                        for mark in batch.drain(..) {
                            ledger.add(mark);
                        }
                    }
                });
                acks.for_each_stamp(|_, _| {});
                let (Some(held), Some(ProgressWriter { producer: AckedProducer { producer, book, topic, .. }, chain, in_flight: most, .. })) = (cap.as_mut(), writer.as_ref()) else { return };
                if let Some(failure) = book.failure() {
                    panic!("a progress record could not be written: {failure}");
                }
                if let Some((epoch, through)) = in_flight {
                    if !book.acknowledged(epoch) || crate::crash::held("after-progress-write") {
                        activator.activate_after(ACK_POLL);
                        return;
                    }
                    in_flight = None;
                    let own = book.offset(epoch).expect("an acknowledged record has an offset");
                    tracing::debug!(epoch, own, "progress acknowledged");
                    crate::crash::reached("after-progress-write");
                    chain.ask(follows, own);
                    checking = Some((epoch, through, own));
                }
                if let Some((epoch, through, own)) = checking {
                    match chain.answer() {
                        None => {
                            activator.activate_after(ACK_POLL);
                            return;
                        }
                        Some(Ok(Verdict::OnChain)) => {
                            checking = None;
                            follows = own;
                            held.downgrade(&through);
                        }
                        Some(Ok(Verdict::Lost { rival })) => {
                            // Not a panic: the supervisor must not restart this cluster.
                            tracing::error!(epoch, own, follows, rival, "fenced");
                            eprintln!(
                                "emostream-dataflow: another cluster is publishing into {topic}: \
                                 its record at offset {rival} continued the record at offset \
                                 {follows} before this cluster's (offset {own}); this cluster \
                                 stops (exit {EXIT_FENCED}) and must not be restarted while the \
                                 other runs"
                            );
                            std::process::exit(EXIT_FENCED);
                        }
                        Some(Ok(Verdict::Ghost { rival })) => {
                            // Not a panic either: nothing failed, and the restart's start-up
                            // checks pass (the ghost is a record of a run now over).
                            tracing::warn!(epoch, own, follows, rival, "a predecessor's ghost record");
                            eprintln!(
                                "emostream-dataflow: the record at offset {rival} of {topic}, \
                                 written by a cluster run that has written nothing since (this \
                                 cluster's predecessor, killed with the record in flight), \
                                 continued the record at offset {follows} before this cluster's \
                                 (offset {own}); the cluster restarts (exit {EXIT_RESUME}) to \
                                 resume from it"
                            );
                            std::process::exit(EXIT_RESUME);
                        }
                        Some(Err(error)) => {
                            panic!("cannot tell whether progress record {own} is on the chain: {error}")
                        }
                    }
                }

                let next = next_record(
                    *held.time(),
                    acks_frontier.frontier().first().copied(),
                    marks_frontier.frontier().first().copied(),
                    &ledger,
                    partitions,
                    *most,
                );
                let (epoch, through) = match next {
                    Next::Wait => return,
                    Next::Stop => {
                        tracing::info!(allowed = *held.time(), "no more progress can be recorded in this run");
                        cap = None;
                        return;
                    }
                    Next::Write { epoch, through } => (epoch, through),
                };
                let Some(mut progress) = ledger.progress(epoch, through, counting) else {
                    tracing::debug!(epoch, through, marks = ?ledger, "marks do not cover the epoch yet");
                    activator.activate_after(ACK_POLL);
                    return;
                };
                progress.follows = Some(follows);
                progress.run = writer.as_ref().map(|w| w.run);
                if crate::crash::held("before-progress-write") {
                    activator.activate_after(ACK_POLL);
                    return;
                }
                crate::crash::reached("before-progress-write");
                let payload = serde_json::to_vec(&progress).expect("progress always serializes");
                // Counted before the send: the acknowledgement can arrive on librdkafka's thread
                // before `send` even returns.
                book.sent(epoch);
                // Partition 0, where recovery reads the newest record (the topic has only that
                // one; start-up checks it).
                let record = BaseRecord::<(), _, _>::with_opaque_to(topic, Box::new(epoch)).partition(0).payload(&payload);
                match producer.send(record) {
                    Ok(()) => {
                        tracing::debug!(epoch, through, "progress sent");
                        in_flight = Some((epoch, through));
                        ledger.forget_through(epoch);
                    }
                    Err((e, _)) => {
                        book.unsent(epoch);
                        tracing::warn!(error = %e, epoch, "progress record not enqueued; retrying");
                    }
                }
                activator.activate_after(ACK_POLL);
            }
        });
        gate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(partition: i32, start: u64, end: u64, position: i64, resume: i64) -> Mark {
        Mark {
            partition,
            start,
            end,
            position,
            resume,
        }
    }

    fn counting(events_partitions: u32) -> Counting {
        Counting {
            window_ms: 2000,
            divisor: 1000,
            events_partitions,
        }
    }

    #[test]
    fn the_writer_lets_out_one_epoch_in_a_steady_state_and_up_to_in_flight_catching_up() {
        let mut ledger = MarkLedger::default();
        ledger.add(mark(0, 0, 30, 10, 0));
        let next =
            |allowed, published, marks| next_record(allowed, published, marks, &ledger, 1, 8);
        let write = |epoch, through| Next::Write { epoch, through };
        // Steady: epoch 4 published, the floors just passed 5: the record for 4 lets out 5.
        assert_eq!(next(4, Some(5), Some(6)), write(4, 5));
        assert_eq!(
            next(4, Some(5), Some(5)),
            Next::Wait,
            "the floors have not passed 5"
        );
        assert_eq!(
            next(5, Some(5), Some(9)),
            Next::Wait,
            "5 is let out and not published yet"
        );
        // Catching up: the floors are far ahead; one record lets out 8.
        assert_eq!(next(4, Some(5), Some(20)), write(4, 12));
        assert_eq!(
            next(12, Some(13), Some(17)),
            write(12, 16),
            "as far as the floors passed"
        );
        assert_eq!(
            next(0, Some(0), Some(20)),
            Next::Wait,
            "nothing published yet"
        );
        // Every source stopped: the marks in back records up to their end (29), then no more.
        assert_eq!(next(25, Some(26), None), write(25, 29));
        assert_eq!(next(29, Some(40), None), Next::Stop);
        assert_eq!(
            next(29, None, Some(40)),
            Next::Stop,
            "everything published, for good"
        );
    }

    #[test]
    fn progress_takes_the_marks_covering_the_epoch_and_its_schedule() {
        let mut ledger = MarkLedger::default();
        ledger.add(mark(0, 0, 5, 10, 0));
        ledger.add(mark(0, 5, 6, 14, 9));
        ledger.add(mark(0, 6, 9, 20, 13));
        ledger.add(mark(1, 0, 7, 3, 3));
        let partition =
            |partition, resume_offset, skip_before, hold_until, later: &[i64]| PartitionProgress {
                partition,
                resume_offset,
                skip_before,
                hold_until,
                later_holds: later.to_vec(),
            };
        let record = |epoch, partitions| Progress {
            epoch,
            counting: Some(counting(2)),
            partitions,
            follows: None,
            run: None,
        };
        assert_eq!(
            ledger.progress(5, 6, counting(2)),
            Some(record(
                5,
                vec![partition(0, 9, 14, 20, &[]), partition(1, 3, 3, 3, &[])]
            ))
        );
        assert_eq!(
            ledger.progress(5, 5, counting(2)),
            None,
            "an empty schedule"
        );
        // Epochs 1..=6: partition 0's floor passed 1..4 at offset 10, 5 at 14, 6 at 20.
        let schedule = ledger.progress(0, 6, counting(2));
        assert_eq!(
            schedule,
            Some(record(
                0,
                vec![
                    partition(0, 0, 10, 10, &[10, 10, 10, 14, 20]),
                    partition(1, 3, 3, 3, &[3, 3, 3, 3, 3]),
                ]
            ))
        );
        assert_eq!(schedule.map(|r| r.last_reproducible()), Some(6));
        // Partition 1's floor has not passed 7, so where a next run must hold partition 1 for
        // epoch 7 is unknown: no record whose schedule reaches 7, whether more marks may come
        // or not.
        assert_eq!(
            ledger.progress(6, 7, counting(2)),
            None,
            "partition 1 has no mark covering 7"
        );
        assert_eq!(ledger.progress(5, 7, counting(2)), None);
        assert_eq!(ledger.last_covered(2), Some(6));
        assert_eq!(ledger.last_covered(3), None, "partition 2 has no marks");
        assert_eq!(
            ledger.progress(5, 6, counting(3)),
            None,
            "partition 2 has no marks at all"
        );
        ledger.forget_through(5);
        assert_eq!(ledger.covering(0, 4), None);
        assert_eq!(ledger.covering(0, 6).map(|m| m.position), Some(20));
        assert_eq!(ledger.last_covered(2), Some(6));
    }
}
