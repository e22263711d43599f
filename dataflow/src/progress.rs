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
pub(crate) struct MarkLedger {
    marks: BTreeMap<i32, Vec<Mark>>,
}

impl MarkLedger {
    pub(crate) fn add(&mut self, mark: Mark) {
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
    pub(crate) fn progress(
        &self,
        epoch: u64,
        through: u64,
        counting: Counting,
    ) -> Option<Progress> {
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

/// What the progress writer awaits from outside before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// Nothing: it decides from the frontiers and the marks alone.
    Nothing,
    /// The broker's acknowledgement of the record sent for this epoch.
    Ack(u64),
    /// The chain's verdict on the record acknowledged at `own`.
    Verdict { own: i64 },
}

/// What the writer was told since it last stepped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    /// The published frontier (`None`: empty).
    published: Option<u64>,
    /// The marks' frontier (`None`: every source has stopped).
    marks: Option<u64>,
    /// The offset of the record in flight, once acknowledged ([`Awaiting::Ack`]).
    acknowledged: Option<i64>,
    /// The chain's verdict on the record being checked, once it came ([`Awaiting::Verdict`]).
    verdict: Option<Verdict>,
}

/// What the operator does after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Todo {
    /// Nothing until an input moves (a mark, a frontier).
    Idle,
    /// Look again shortly: an acknowledgement or a verdict is awaited, or the marks do not cover
    /// the next record yet.
    Poll,
    /// The record for `epoch` is acknowledged at `own`: ask the chain whether it continues the
    /// record at `follows`.
    Ask { epoch: u64, follows: i64, own: i64 },
    /// Send this record, then tell [`Recorder::sent`] (or nothing, to try again at the next
    /// step).
    Write(Progress),
    /// Nothing more can be recorded in this run: the gate closes for good.
    Stop,
    /// Another cluster's record at `rival` continued `follows` first: exit [`EXIT_FENCED`].
    Fenced {
        epoch: u64,
        own: i64,
        follows: i64,
        rival: i64,
    },
    /// The predecessor's ghost at `rival` continued `follows` first: exit [`EXIT_RESUME`].
    Ghost {
        epoch: u64,
        own: i64,
        follows: i64,
        rival: i64,
    },
}

/// Where the record the writer wrote last stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// None in flight: the next is written once the rule allows.
    Settled,
    /// Sent for `epoch`, its floor schedule through `through`; not acknowledged yet.
    Sent { epoch: u64, through: u64 },
    /// Acknowledged at offset `own`; the chain check is under way.
    Checking { epoch: u64, through: u64, own: i64 },
}

/// The progress writer's state, apart from timely, the producer and the chain check: the marks,
/// the record in flight, the record the next one continues, and the gate (the last epoch an
/// acknowledged record on the chain lets out). The operator feeds it the marks
/// ([`Recorder::add`]) and, once per activation, what it awaits ([`Recorder::awaiting`]) and the
/// frontiers; [`Recorder::step`] says what to do, and [`Recorder::gate`] where the gate stands.
#[derive(Debug)]
struct Recorder {
    ledger: MarkLedger,
    counting: Counting,
    /// The offset of the record the next one continues.
    follows: i64,
    run: u64,
    in_flight: u64,
    /// The last epoch the gate lets out; `None` once it closed for good.
    gate: Option<u64>,
    record: Record,
}

impl Recorder {
    fn new(counting: Counting, allowed: u64, follows: i64, run: u64, in_flight: u64) -> Self {
        Recorder {
            ledger: MarkLedger::default(),
            counting,
            follows,
            run,
            in_flight,
            gate: Some(allowed),
            record: Record::Settled,
        }
    }

    fn add(&mut self, mark: Mark) {
        self.ledger.add(mark);
    }

    /// The last epoch the gate lets out, or `None` once it closed for good.
    fn gate(&self) -> Option<u64> {
        self.gate
    }

    fn awaiting(&self) -> Awaiting {
        match self.record {
            Record::Settled => Awaiting::Nothing,
            Record::Sent { epoch, .. } => Awaiting::Ack(epoch),
            Record::Checking { own, .. } => Awaiting::Verdict { own },
        }
    }

    /// One step of the protocol: the record in flight acknowledged, checked on the chain (which
    /// opens the gate through its floor schedule), then the next record once [`next_record`]
    /// allows and the marks cover it.
    fn step(&mut self, seen: Seen) -> Todo {
        let Some(allowed) = self.gate else {
            return Todo::Idle;
        };
        match self.record {
            Record::Settled => {}
            Record::Sent { epoch, through } => {
                let Some(own) = seen.acknowledged else {
                    return Todo::Poll;
                };
                self.record = Record::Checking {
                    epoch,
                    through,
                    own,
                };
                return Todo::Ask {
                    epoch,
                    follows: self.follows,
                    own,
                };
            }
            Record::Checking {
                epoch,
                through,
                own,
            } => {
                let follows = self.follows;
                match seen.verdict {
                    None => return Todo::Poll,
                    Some(Verdict::OnChain) => {
                        self.record = Record::Settled;
                        self.follows = own;
                        self.gate = Some(through);
                        return self.step(seen);
                    }
                    Some(Verdict::Lost { rival }) => {
                        return Todo::Fenced {
                            epoch,
                            own,
                            follows,
                            rival,
                        }
                    }
                    Some(Verdict::Ghost { rival }) => {
                        return Todo::Ghost {
                            epoch,
                            own,
                            follows,
                            rival,
                        }
                    }
                }
            }
        }
        let partitions = self.counting.events_partitions;
        let next = next_record(
            allowed,
            seen.published,
            seen.marks,
            &self.ledger,
            partitions,
            self.in_flight,
        );
        match next {
            Next::Wait => Todo::Idle,
            Next::Stop => {
                tracing::info!(allowed, "no more progress can be recorded in this run");
                self.gate = None;
                Todo::Stop
            }
            Next::Write { epoch, through } => {
                match self.ledger.progress(epoch, through, self.counting) {
                    Some(progress) => Todo::Write(Progress {
                        follows: Some(self.follows),
                        run: Some(self.run),
                        ..progress
                    }),
                    None => {
                        tracing::debug!(epoch, through, marks = ?self.ledger, "marks do not cover the epoch yet");
                        Todo::Poll
                    }
                }
            }
        }
    }

    /// `record`, from [`Todo::Write`], is on its way to the broker.
    fn sent(&mut self, record: &Progress) {
        self.record = Record::Sent {
            epoch: record.epoch,
            through: record.last_reproducible(),
        };
        self.ledger.forget_through(record.epoch);
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
        let scope = self.scope();
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
            // Only worker 0's capability matters; the others give theirs up at once.
            let mut cap = writer.is_some().then(|| initial.delayed(&allowed));
            let mut recorder = (writer.as_ref())
                .map(|w| Recorder::new(counting, allowed, w.follows, w.run, w.in_flight));
            // No data ever leaves on the gate; its capability alone carries the frontier.
            let _output = output;

            move |frontiers| {
                marks.for_each_stamp(|_, data| {
                    for batch in data {
                        for mark in batch.drain(..) {
                            if let Some(recorder) = recorder.as_mut() {
                                recorder.add(mark);
                            }
                        }
                    }
                });
                acks.for_each_stamp(|_, _| {});
                let (Some(held), Some(recorder), Some(writer)) =
                    (cap.as_mut(), recorder.as_mut(), writer.as_ref())
                else {
                    return;
                };
                let ProgressWriter {
                    producer:
                        AckedProducer {
                            producer,
                            book,
                            topic,
                            ..
                        },
                    chain,
                    ..
                } = writer;
                if let Some(failure) = book.failure() {
                    panic!("a progress record could not be written: {failure}");
                }
                let awaiting = recorder.awaiting();
                let seen = Seen {
                    marks: frontiers[0].frontier().first().copied(),
                    published: frontiers[1].frontier().first().copied(),
                    acknowledged: match awaiting {
                        Awaiting::Ack(epoch)
                            if book.acknowledged(epoch)
                                && !crate::crash::held("after-progress-write") =>
                        {
                            Some(book.offset(epoch).expect("an acknowledged record has an offset"))
                        }
                        _ => None,
                    },
                    verdict: match awaiting {
                        Awaiting::Verdict { own } => match chain.answer() {
                            None => None,
                            Some(Ok(verdict)) => Some(verdict),
                            Some(Err(error)) => panic!(
                                "cannot tell whether progress record {own} is on the chain: {error}"
                            ),
                        },
                        _ => None,
                    },
                };
                let todo = recorder.step(seen);
                match recorder.gate() {
                    Some(through) if through > *held.time() => held.downgrade(&through),
                    Some(_) => {}
                    None => cap = None,
                }
                match todo {
                    Todo::Idle | Todo::Stop => {}
                    Todo::Poll => activator.activate_after(ACK_POLL),
                    Todo::Ask {
                        epoch,
                        follows,
                        own,
                    } => {
                        tracing::debug!(epoch, own, "progress acknowledged");
                        crate::crash::reached("after-progress-write");
                        chain.ask(follows, own);
                        activator.activate_after(ACK_POLL);
                    }
                    Todo::Write(progress) => {
                        if crate::crash::held("before-progress-write") {
                            activator.activate_after(ACK_POLL);
                            return;
                        }
                        crate::crash::reached("before-progress-write");
                        let epoch = progress.epoch;
                        let payload =
                            serde_json::to_vec(&progress).expect("progress always serializes");
                        // Counted before the send: the acknowledgement can arrive on librdkafka's
                        // thread before `send` even returns.
                        book.sent(epoch);
                        // Partition 0, where recovery reads the newest record (the topic has only
                        // that one; start-up checks it).
                        let record = BaseRecord::<(), _, _>::with_opaque_to(topic, Box::new(epoch))
                            .partition(0)
                            .payload(&payload);
                        match producer.send(record) {
                            Ok(()) => {
                                tracing::debug!(
                                    epoch,
                                    through = progress.last_reproducible(),
                                    "progress sent"
                                );
                                recorder.sent(&progress);
                            }
                            Err((e, _)) => {
                                book.unsent(epoch);
                                tracing::warn!(error = %e, epoch, "progress record not enqueued; retrying");
                            }
                        }
                        activator.activate_after(ACK_POLL);
                    }
                    Todo::Fenced {
                        epoch,
                        own,
                        follows,
                        rival,
                    } => {
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
                    Todo::Ghost {
                        epoch,
                        own,
                        follows,
                        rival,
                    } => {
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
                }
            }
        });
        gate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emostream_protocol::progress::FIRST;

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

    fn seen(published: u64, marks: u64) -> Seen {
        Seen {
            published: Some(published),
            marks: Some(marks),
            ..Seen::default()
        }
    }

    /// Steps `recorder` through the acknowledgement of its record in flight (at `own`) and the
    /// chain's verdict `OnChain`, and returns what it does then.
    fn acknowledge(recorder: &mut Recorder, own: i64, then: Seen) -> Todo {
        let Awaiting::Ack(epoch) = recorder.awaiting() else {
            panic!("no record in flight: {recorder:?}");
        };
        assert_eq!(recorder.step(then), Todo::Poll, "not acknowledged yet");
        let follows = recorder.follows;
        let asked = recorder.step(Seen {
            acknowledged: Some(own),
            ..then
        });
        assert_eq!(
            asked,
            Todo::Ask {
                epoch,
                follows,
                own
            }
        );
        assert_eq!(recorder.awaiting(), Awaiting::Verdict { own });
        assert_eq!(recorder.step(then), Todo::Poll, "no verdict yet");
        recorder.step(Seen {
            verdict: Some(Verdict::OnChain),
            ..then
        })
    }

    fn written(todo: Todo) -> Progress {
        match todo {
            Todo::Write(progress) => progress,
            other => panic!("no record written: {other:?}"),
        }
    }

    /// Each partition's (resume_offset, skip_before, floor schedule).
    fn schedule(progress: &Progress) -> Vec<(i64, i64, Vec<i64>)> {
        (progress.partitions.iter())
            .map(|p| (p.resume_offset, p.skip_before, p.holds().collect()))
            .collect()
    }

    #[test]
    fn the_recorder_lets_out_a_floor_schedule_once_its_record_is_acknowledged_and_on_the_chain() {
        let mut recorder = Recorder::new(counting(2), 0, FIRST, 7, IN_FLIGHT);
        // Marks arrive from two workers in no particular order: partition 0's floor passed 1 at
        // offset 10, 2 at 14, 3..=11 at 20; partition 1's passed 0..=11 at 3.
        recorder.add(mark(0, 3, 12, 20, 13));
        recorder.add(mark(1, 0, 12, 3, 3));
        recorder.add(mark(0, 0, 2, 10, 0));
        recorder.add(mark(0, 2, 3, 14, 9));
        assert_eq!(recorder.step(seen(0, 12)), Todo::Idle, "nothing published");
        // Epochs 0 and 1 are published; the floors passed 11: the record for 1 lets out 2..=9,
        // IN_FLIGHT epochs, each with where every partition's floor passed it.
        let first = written(recorder.step(seen(2, 12)));
        assert_eq!(
            (first.epoch, first.follows, first.run),
            (1, Some(FIRST), Some(7))
        );
        assert_eq!(first.last_reproducible(), 1 + IN_FLIGHT);
        assert_eq!(
            schedule(&first),
            vec![
                (0, 10, [vec![14], vec![20; 7]].concat()),
                (3, 3, vec![3; 8]),
            ]
        );
        assert_eq!(recorder.gate(), Some(0), "written, not acknowledged");
        // A send that did not go out is tried again, the same record.
        assert_eq!(written(recorder.step(seen(2, 12))), first);
        recorder.sent(&first);
        assert_eq!(recorder.awaiting(), Awaiting::Ack(1));
        // Acknowledged at offset 40 and on the chain: the gate lets out the schedule, and there is
        // nothing to write until the published frontier reaches its end.
        assert_eq!(acknowledge(&mut recorder, 40, seen(2, 12)), Todo::Idle);
        assert_eq!(recorder.gate(), Some(9));
        assert_eq!(recorder.awaiting(), Awaiting::Nothing);
        for published in 3..=9 {
            assert_eq!(
                recorder.step(seen(published, 12)),
                Todo::Idle,
                "epoch {} of the schedule is still unpublished",
                published
            );
        }
        // All out: the next record follows the first and lets out as far as the floors passed.
        let second = written(recorder.step(seen(10, 12)));
        assert_eq!((second.epoch, second.follows), (9, Some(40)));
        assert_eq!(
            schedule(&second),
            vec![(13, 20, vec![20, 20]), (3, 3, vec![3, 3])]
        );
        recorder.sent(&second);
        assert_eq!(acknowledge(&mut recorder, 41, seen(10, 12)), Todo::Idle);
        assert_eq!(recorder.gate(), Some(11));
    }

    #[test]
    fn the_recorder_waits_for_every_partitions_marks_and_opens_in_the_step_that_checks() {
        let mut recorder = Recorder::new(counting(2), 4, 17, 7, 3);
        recorder.add(mark(0, 0, 5, 10, 0));
        recorder.add(mark(0, 5, 7, 12, 11));
        recorder.add(mark(0, 7, 20, 15, 12));
        // The marks' frontier is past partition 1's floor, whose marks are still on their way
        // from another worker: look again.
        assert_eq!(recorder.step(seen(5, 20)), Todo::Poll);
        recorder.add(mark(1, 0, 20, 30, 30));
        let record = written(recorder.step(seen(5, 20)));
        assert_eq!(
            (record.epoch, record.last_reproducible()),
            (4, 7),
            "in_flight 3"
        );
        assert_eq!(
            schedule(&record),
            vec![(0, 10, vec![12, 12, 15]), (30, 30, vec![30, 30, 30])]
        );
        recorder.sent(&record);
        // The verdict arrives after epochs 5..=7 could go out: the gate opens and the next
        // record is written in the same step, its schedule 8..=10 (at most in_flight).
        let next = written(acknowledge(&mut recorder, 3, seen(8, 20)));
        assert_eq!(recorder.gate(), Some(7));
        assert_eq!(
            (next.epoch, next.follows, next.last_reproducible()),
            (7, Some(3), 10)
        );
    }

    #[test]
    fn a_rival_first_on_the_chain_keeps_the_gate_closed() {
        for (verdict, todo) in [
            (
                Verdict::Lost { rival: 9 },
                Todo::Fenced {
                    epoch: 1,
                    own: 10,
                    follows: 8,
                    rival: 9,
                },
            ),
            (
                Verdict::Ghost { rival: 9 },
                Todo::Ghost {
                    epoch: 1,
                    own: 10,
                    follows: 8,
                    rival: 9,
                },
            ),
        ] {
            let mut recorder = Recorder::new(counting(1), 0, 8, 7, IN_FLIGHT);
            recorder.add(mark(0, 0, 5, 10, 0));
            let record = written(recorder.step(seen(2, 5)));
            recorder.sent(&record);
            let ask = recorder.step(Seen {
                acknowledged: Some(10),
                ..seen(2, 5)
            });
            assert!(matches!(ask, Todo::Ask { .. }), "{ask:?}");
            let answered = Seen {
                verdict: Some(verdict),
                ..seen(2, 5)
            };
            assert_eq!(recorder.step(answered), todo);
            assert_eq!(recorder.gate(), Some(0), "{verdict:?}");
        }
    }

    #[test]
    fn once_every_source_stopped_the_recorder_writes_what_the_marks_back_then_stops() {
        let mut recorder = Recorder::new(counting(1), 2, 5, 7, IN_FLIGHT);
        recorder.add(mark(0, 0, 3, 10, 0));
        recorder.add(mark(0, 3, 6, 14, 12));
        let stopped = |published| Seen {
            published: Some(published),
            marks: None,
            ..Seen::default()
        };
        // The marks back epochs up to 5: the record for 2 lets out 3..=5.
        let last = written(recorder.step(stopped(3)));
        assert_eq!((last.epoch, last.last_reproducible()), (2, 5));
        recorder.sent(&last);
        // On the chain; no mark reaches past 5, so nothing more can be recorded: the gate closes
        // for good in the same step (the epochs it let out and did not publish, the next run
        // reproduces from this record).
        assert_eq!(acknowledge(&mut recorder, 6, stopped(3)), Todo::Stop);
        assert_eq!(recorder.gate(), None);
        assert_eq!(recorder.step(stopped(6)), Todo::Idle);
    }
}
