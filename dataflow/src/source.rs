//! The Kafka source: reads this worker's partitions without ever blocking, pre-counts taps per
//! (epoch, stream, emoji) and holds its capability at the epoch of its partitions' watermark.

use crate::dedupe::{Dedupe, Verdict};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::partition::{Assignment, Mark, Partition};
use crate::PartialCount;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::epoch::{epoch_of, now_ms};
use emostream_protocol::kafka::ClientRole;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::scheduling::SyncActivator;

/// A record stamped this far ahead of this process's clock is counted in
/// `records_ahead_of_clock`: the gateway's clock is further ahead than NTP-disciplined clocks drift.
const CLOCK_AHEAD_NOTED_MS: u64 = 1_000;
/// The broker may hold an empty fetch this long: a record appended to an idle partition waits
/// at most this long in the broker.
const FETCH_WAIT_MS: u64 = 20;
/// How often the end probe asks the broker for the owned partitions' high watermarks; with the
/// round trip, how far an idle partition's watermark trails the clock.
const END_PROBE_EVERY: Duration = Duration::from_millis(25);
/// How long the end probe goes unanswered before it says so.
const PROBE_SILENCE: Duration = Duration::from_secs(2);
/// One activation reads at most this long before yielding to the rest of the dataflow.
const READ_BUDGET: Duration = Duration::from_millis(20);
/// How often read positions are committed to the consumer group (for lag monitoring only).
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How long a source with partitions waits for a wake-up before it looks anyway: records and
/// the end probe's answers wake it at once, so this only bounds a missed wake-up.
const FALLBACK: Duration = Duration::from_millis(100);

/// Everything the source needs, owned so the operator closure can keep it.
pub struct SourceSettings {
    pub kafka: KafkaConfig,
    pub topic: String,
    /// This worker's partitions, fresh or resumed from the progress record.
    pub partitions: Vec<Partition>,
    /// Each of those partitions' remembered idempotency keys, refilled from the log.
    pub dedupe: BTreeMap<i32, Dedupe>,
    pub window_ms: u64,
    pub allowed_lateness_ms: u64,
    /// After the broker was out of reach, how long records received before may still land: the
    /// gateways' delivery timeout plus the allowed lateness (see watermark.rs).
    pub settle_ms: u64,
    /// How often the source looks again when nothing woke it: a worker without partitions, whose
    /// floor follows the wall clock, and a source holding back for the gate.
    pub idle_poll_ms: u64,
    /// The gate's frontier (the last epoch the progress records let out): a source whose floor
    /// runs more than [`AHEAD`] epochs past it stops reading until the gate catches up, so a
    /// catch-up's closed epochs cannot pile up unpublished.
    pub gate: ProbeHandle<u64>,
    /// Set on SIGTERM: the source stops reading and releases its capability.
    pub stop: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// How far past the gate a source's floor may run: two records' worth, so that while one
/// record's epochs are published the next record's are counted.
pub const AHEAD: u64 = 2 * crate::progress::IN_FLIGHT;

/// What the source emits: pre-counts for the epochs, and marks for the progress record.
#[derive(Debug, Clone)]
pub enum SourceItem {
    Count(PartialCount),
    Mark(Mark),
}

/// The fields of an event line the source counts by; `serde` skips the others without building
/// them (`ts` is the client's and decides nothing).
#[derive(Deserialize)]
struct Tap<'a> {
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    emoji: Cow<'a, str>,
    recv_ms: u64,
    /// Scopes an `Idempotency-Key` (dedupe.rs), and must be there, as in
    /// [`emostream_protocol::wire::EmojiEvent`], for a line to count as an event.
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    /// The request's `Idempotency-Key` and the gateway's attempt number, on keyed requests.
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(default)]
    attempt: Option<u64>,
}

/// FNV-1a, for the emojis of one stream and epoch: keys the gateway checked against the fixed
/// list of emojis (a few thousand), so no input can make them collide on purpose, and a few
/// bytes each, where SipHash's setup dominates.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }
}

/// emoji → (count, late).
type EmojiCounts = HashMap<Box<str>, (u64, u64), BuildHasherDefault<Fnv>>;

/// Pre-counts per (stream, epoch, emoji) since the last emission. A record holds one stream's
/// taps (the gateway packs them so), so the stream of the last tap is tried first: a tap costs a
/// string comparison and one FNV lookup, and allocates nothing unless its emoji is new to the
/// (stream, epoch).
#[derive(Default)]
struct Counts {
    /// Stream → its slot in `slots` (SipHash: stream names are the clients' to choose).
    index: HashMap<String, usize>,
    /// (stream, epoch → emoji counts).
    slots: Vec<(String, BTreeMap<u64, EmojiCounts>)>,
    last: usize,
}

impl Counts {
    fn add(&mut self, stream: &str, epoch: u64, emoji: &str, late: bool) {
        if self.slots.get(self.last).is_none_or(|(s, _)| s != stream) {
            self.last = match self.index.get(stream) {
                Some(slot) => *slot,
                None => {
                    self.slots.push((stream.to_owned(), BTreeMap::new()));
                    self.index.insert(stream.to_owned(), self.slots.len() - 1);
                    self.slots.len() - 1
                }
            };
        }
        let emojis = self.slots[self.last].1.entry(epoch).or_default();
        let entry = match emojis.get_mut(emoji) {
            Some(entry) => entry,
            None => emojis.entry(emoji.into()).or_default(),
        };
        entry.0 += 1;
        entry.1 += u64::from(late);
    }

    /// Every pre-count since the last call, by epoch.
    fn drain_into(&mut self, by_epoch: &mut BTreeMap<u64, Vec<SourceItem>>) {
        self.index.clear();
        self.last = 0;
        for (stream, epochs) in self.slots.drain(..) {
            for (epoch, emojis) in epochs {
                let items = by_epoch.entry(epoch).or_default();
                for (emoji, (count, late)) in emojis {
                    items.push(SourceItem::Count(PartialCount {
                        stream: stream.clone(),
                        emoji: emoji.into_string(),
                        count,
                        late,
                    }));
                }
            }
        }
    }
}

/// The source's state, apart from timely and the consumer: the owned partitions and what was
/// counted since the last emission. The operator feeds it what the consumer delivers
/// ([`KafkaSource::record`], [`KafkaSource::end_of_partition`]) and, once per activation, takes
/// what to emit and where its floor is ([`KafkaSource::step`]).
struct KafkaSource {
    partitions: BTreeMap<i32, Partition>,
    /// Each partition's remembered idempotency keys (dedupe.rs).
    dedupe: BTreeMap<i32, Dedupe>,
    counts: Counts,
    window_ms: u64,
    lateness_ms: u64,
    settle_ms: u64,
    late_total: u64,
    skipped_total: u64,
    /// Outages of the end probe seen so far.
    outages_seen: u64,
}

/// What one activation emits: items by epoch (the capability covers them), and the floor the
/// source's capability moves to.
struct Step {
    by_epoch: BTreeMap<u64, Vec<SourceItem>>,
    floor: u64,
}

impl KafkaSource {
    fn new(
        partitions: Vec<Partition>,
        dedupe: BTreeMap<i32, Dedupe>,
        window_ms: u64,
        lateness_ms: u64,
        settle_ms: u64,
    ) -> Self {
        KafkaSource {
            partitions: partitions.into_iter().map(|p| (p.id(), p)).collect(),
            dedupe,
            counts: Counts::default(),
            window_ms,
            lateness_ms,
            settle_ms,
            late_total: 0,
            skipped_total: 0,
            outages_seen: 0,
        }
    }

    /// The least floor of the owned partitions; `None` without partitions.
    fn floor(&self) -> Option<u64> {
        self.partitions.values().map(Partition::floor).min()
    }

    /// Counts the record at `offset` of `partition` (Kafka timestamp `timestamp_ms`), read at
    /// about `now_ms` by this process's clock.
    ///
    /// The timestamp is the gateway's clock. A record stamped later than `now_ms` moves its
    /// partition's floor only up to `now_ms`: one gateway whose clock runs ahead would otherwise
    /// carry the floor with it, and every other gateway's taps would be late, counted in an epoch
    /// as far ahead as that clock. Its own taps still count in the epochs it gave them.
    fn record(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp_ms: u64,
        payload: Option<&[u8]>,
        now_ms: u64,
    ) -> Tally {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return Tally::default();
        };
        p.begin_record(offset);
        if p.holding() {
            crate::crash::reached("during-replay");
        }
        let dedupe = (self.dedupe.get_mut(&partition))
            .expect("every owned partition has its remembered keys");
        dedupe.record(timestamp_ms);
        let tally = match payload {
            Some(payload) => count_record(
                payload,
                self.window_ms,
                offset,
                (p, dedupe),
                &mut self.counts,
            ),
            None => Tally::default(),
        };
        let mut tally = tally;
        if timestamp_ms > now_ms + CLOCK_AHEAD_NOTED_MS {
            tally.ahead += 1;
        }
        p.end_record(offset, timestamp_ms.min(now_ms));
        self.late_total += tally.late;
        self.skipped_total += tally.skipped;
        tally
    }

    /// The consumer read `partition` to its end, standing at `position` (if it knows).
    fn end_of_partition(&mut self, partition: i32, position: Option<i64>) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            if let Some(at) = position {
                p.skipped_to(at);
            }
            p.reached_end();
        }
    }

    /// Takes the end probe's news (if the worker has partitions), moves the floors and returns
    /// what to emit: the pre-counts and the marks, by epoch, and the new floor (a worker without
    /// partitions follows the wall clock `now_ms` minus the lateness, like an idle partition).
    fn step(&mut self, now_ms: u64, ends: Option<&EndProbe>, metrics: &Metrics) -> Step {
        let mut by_epoch = BTreeMap::new();
        self.counts.drain_into(&mut by_epoch);
        let (window_ms, lateness_ms) = (self.window_ms, self.lateness_ms);
        if let Some(ends) = ends {
            // Before the answers: an answer after an outage must not lift the floor.
            if let Some(last_answer_ms) = ends.outage_since(&mut self.outages_seen) {
                tracing::warn!(
                    last_answer_ms,
                    settle_ms = self.settle_ms,
                    "the broker was out of reach: floors hold until records sent before have landed"
                );
                for partition in self.partitions.values_mut() {
                    partition.broker_was_away(last_answer_ms, lateness_ms, self.settle_ms);
                }
            }
            for (id, high, asked_ms) in ends.latest() {
                if let Some(partition) = self.partitions.get_mut(&id) {
                    partition.end_reported(high, asked_ms);
                }
            }
        }
        for partition in self.partitions.values_mut() {
            partition.advance(lateness_ms, window_ms);
            let lag = partition
                .watermark_ms(lateness_ms)
                .map_or(now_ms, |w| now_ms.saturating_sub(w));
            metrics.partition(partition.id(), lag, partition.floor());
            // A mark is stamped with the floor it leaves, which the capability still covers.
            for mark in partition.take_marks() {
                by_epoch
                    .entry(mark.start)
                    .or_insert_with(Vec::new)
                    .push(SourceItem::Mark(mark));
            }
        }
        let floor = self
            .floor()
            .unwrap_or_else(|| epoch_of(now_ms.saturating_sub(lateness_ms), window_ms));
        Step { by_epoch, floor }
    }
}

pub fn kafka_source<'scope>(
    scope: Scope<'scope, u64>,
    settings: SourceSettings,
) -> Result<Stream<'scope, u64, Vec<SourceItem>>, Error> {
    // The consumer's and the end probe's wake-ups, once the operator exists.
    let wake: Arc<OnceLock<SyncActivator>> = Arc::new(OnceLock::new());
    let consumer = if settings.partitions.is_empty() {
        None
    } else {
        let consumer = consumer(&settings, Arc::clone(&wake)).map_err(|source| Error::Client {
            topic: settings.topic.clone(),
            client: "source consumer",
            source,
        })?;
        Some(consumer)
    };
    let idle = Duration::from_millis(settings.idle_poll_ms);
    let mut source = KafkaSource::new(
        settings.partitions,
        settings.dedupe,
        settings.window_ms,
        settings.allowed_lateness_ms,
        settings.settle_ms,
    );
    let (stop, metrics, topic, gate) = (
        settings.stop,
        settings.metrics,
        settings.topic.clone(),
        settings.gate,
    );
    let ends = consumer.as_ref().map(|consumer| {
        let ids = source.partitions.keys().copied().collect();
        EndProbe::spawn(
            Arc::clone(consumer),
            topic.clone(),
            ids,
            ProbeTimes {
                window_ms: settings.window_ms,
                lateness_ms: settings.allowed_lateness_ms,
            },
            Arc::clone(&stop),
            Arc::clone(&wake),
        )
    });

    let mut builder = OperatorBuilder::new("KafkaSource".to_owned(), scope);
    let info = builder.operator_info();
    let (output, stream) = builder.new_output::<Vec<SourceItem>>();
    let mut output = OutputBuilder::<u64, CapacityContainerBuilder<Vec<SourceItem>>>::from(output);
    // A second output that carries no data: its capability, held while this source reads, makes
    // its frontier (seen by every worker) empty once every source of the cluster has stopped.
    let (reading_output, reading) = builder.new_output::<Vec<()>>();
    let all_stopped = ProbeHandle::new();
    let all_stopped_here = all_stopped.clone();
    builder.build(move |mut capabilities| {
        let reading_cap = capabilities.pop();
        let capability = capabilities.pop();
        let _reading_output = reading_output;
        let all_stopped = all_stopped_here;
        let activator = scope.activator_for(info.address.clone());
        let _ = wake.set(scope.worker().sync_activator_for(info.address.to_vec()));
        let (mut capability, mut reading_cap) = (capability, reading_cap);
        let mut consumer = consumer;
        let mut last_commit = Instant::now();
        let mut warned_ahead = false;

        move |_frontiers| {
            let Some(cap) = capability.as_mut() else {
                return;
            };
            if stop.load(Ordering::Relaxed) {
                if reading_cap.take().is_some() {
                    tracing::info!(
                        late_total = source.late_total,
                        skipped_total = source.skipped_total,
                        floor = *cap.time(),
                        "source stopping; its floor holds until every source has stopped"
                    );
                    if let Some(consumer) = consumer.take() {
                        commit_positions(&consumer, &topic, &source.partitions);
                        // Closing a consumer blocks until librdkafka has wound down (the commit
                        // above included); on this thread that would hold the whole dataflow open.
                        std::thread::spawn(move || drop(consumer));
                    }
                }
                // A stopped source has not read its partitions' taps from its floor on, so its
                // capability stays there: released now, it would let the other workers' floors
                // close epochs without those taps while they keep reading (a rolling stop).
                // Once every source has stopped, all release. Their releases reach the frontier
                // one by one, so it may still pass such an epoch then; what makes that harmless
                // is the gate, which never lets out an epoch without a progress record behind
                // it, and no record covers an epoch a partition's floor has not passed
                // (progress.rs, publish.rs). Holding only keeps such partial epochs from being
                // computed for as long as the others keep running.
                if all_stopped.done() {
                    capability = None;
                } else {
                    activator.activate_after(idle);
                }
                return;
            }

            // Flow control: a floor far past the gate waits for it (the records stay in the
            // broker; the floor cannot pass them unread).
            let held_back = match (source.floor(), gate.with_frontier(|f| f.first().copied())) {
                (Some(floor), Some(gate)) => floor > gate + AHEAD,
                _ => false,
            };
            let mut exhausted_budget = false;
            let (mut records, mut tallied) = (0u64, Tally::default());
            if let (Some(consumer), false) = (consumer.as_ref(), held_back) {
                let started = Instant::now();
                let now = now_ms();
                loop {
                    match consumer.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(msg)) => {
                            let ts = msg.timestamp().to_millis().unwrap_or(0).max(0) as u64;
                            let (partition, offset) = (msg.partition(), msg.offset());
                            let tally = source.record(partition, offset, ts, msg.payload(), now);
                            tallied.add(&tally);
                            records += 1;
                        }
                        Some(Err(KafkaError::PartitionEOF(p))) => {
                            source.end_of_partition(p, fetch_position(consumer, &topic, p));
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                    }
                    if started.elapsed() >= READ_BUDGET {
                        exhausted_budget = true;
                        break;
                    }
                }
            }
            metrics.read(
                records,
                tallied.counted,
                tallied.late,
                tallied.skipped,
                tallied.unreadable,
            );
            metrics.repeated(tallied.repeated);
            metrics.ahead_of_clock(tallied.ahead);
            if tallied.ahead > 0 && !warned_ahead {
                warned_ahead = true;
                tracing::warn!(
                    records = tallied.ahead,
                    "records stamped more than {CLOCK_AHEAD_NOTED_MS} ms ahead of this host's clock: \
                     a gateway's clock is ahead (check its NTP); they move no floor past this clock \
                     (metric records_ahead_of_clock counts them)"
                );
            }

            let step = source.step(now_ms(), ends.as_deref(), &metrics);
            let mut output = output.activate();
            // One session per epoch: sessions are not fused, so batching by epoch matters.
            for (epoch, items) in step.by_epoch {
                let at = cap.delayed(&epoch);
                let mut session = output.session(&at);
                for item in items {
                    session.give(item);
                }
            }
            if step.floor > *cap.time() {
                cap.downgrade(&step.floor);
            }
            if let Some(consumer) = consumer.as_ref() {
                if last_commit.elapsed() >= COMMIT_EVERY {
                    commit_positions(consumer, &topic, &source.partitions);
                    last_commit = Instant::now();
                }
            }

            if exhausted_budget {
                activator.activate();
            } else if consumer.is_none() || held_back {
                activator.activate_after(idle);
            } else {
                // The consumer's queue and the end probe's answers wake the source; this only
                // bounds the wait should a wake-up ever be missed.
                activator.activate_after(FALLBACK);
            }
        }
    });
    reading.probe_with(&all_stopped);
    Ok(stream)
}

/// Where the consumer will fetch `partition` next; a local lookup, no request to the broker.
fn fetch_position(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(at) => Some(at),
        _ => None,
    }
}

/// When the end probe asks: every [`END_PROBE_EVERY`], and also at the very moment an epoch may
/// close (its end plus the allowed lateness). An idle partition's floor follows the request
/// time of an answer that found it read to the end, so a request sent then closes the epoch one
/// round trip later, instead of up to a whole interval later.
#[derive(Debug, Clone, Copy)]
struct ProbeTimes {
    window_ms: u64,
    lateness_ms: u64,
}

impl ProbeTimes {
    /// When to ask next, after asking at about `now_ms`.
    fn next_ask_ms(&self, now_ms: u64) -> u64 {
        let regular = now_ms + END_PROBE_EVERY.as_millis() as u64;
        let closable_from = now_ms.saturating_sub(self.lateness_ms);
        let next_close =
            (epoch_of(closable_from, self.window_ms) + 1) * self.window_ms + self.lateness_ms;
        regular.min(next_close).max(now_ms + 1)
    }
}

/// The high watermarks of an end probe's answer, as (partition, offset), or `None` when the
/// broker failed any of the partitions: a partition whose leader is away is an outage of that
/// partition (the gateways' producers retry its records and land them once it is back, up to
/// their delivery timeout later), so it holds the floors as a failed request does.
fn high_watermarks(answer: impl Iterator<Item = (i32, Offset, bool)>) -> Option<Vec<(i32, i64)>> {
    answer
        .map(|(partition, offset, ok)| match (offset, ok) {
            (Offset::Offset(high), true) => Some((partition, high)),
            _ => None,
        })
        .collect()
}

/// Asks the broker, from a thread of its own (never the worker's), for the high watermarks of
/// the worker's partitions every `END_PROBE_EVERY`, and keeps the newest answer with the moment
/// its request was sent: the clock the idle rule may follow (see watermark.rs). A request the
/// broker does not answer leaves the last answer as it was. The thread ends with the source (or
/// on SIGTERM), and it is the last holder of the consumer then, so it also closes it.
struct EndProbe {
    /// (partition, high watermark, when the request that reported it was sent; 0: never).
    reports: Vec<(i32, AtomicI64, AtomicU64)>,
    /// Outages so far (a failed request, or an answer slower than the allowed lateness) …
    outages: AtomicU64,
    /// … and when the request of the last answer before the newest one was sent.
    last_answer_before_outage_ms: AtomicU64,
}

impl EndProbe {
    /// No answer yet for any of `partitions`.
    fn new(partitions: &[i32]) -> Self {
        EndProbe {
            reports: partitions
                .iter()
                .map(|p| (*p, AtomicI64::new(0), AtomicU64::new(0)))
                .collect(),
            outages: AtomicU64::new(0),
            last_answer_before_outage_ms: AtomicU64::new(0),
        }
    }

    /// An answer that takes longer than the allowed lateness counts as an outage, as a failed
    /// request does: the broker stalled, and gateways' producers may have been retrying meanwhile.
    fn spawn(
        consumer: Arc<BaseConsumer<SourceContext>>,
        topic: String,
        partitions: Vec<i32>,
        times: ProbeTimes,
        stop: Arc<AtomicBool>,
        wake: Arc<OnceLock<SyncActivator>>,
    ) -> Arc<EndProbe> {
        let probe = Arc::new(EndProbe::new(&partitions));
        let source = Arc::downgrade(&probe);
        std::thread::Builder::new()
            .name("end-probe".into())
            .spawn(move || {
                let mut answered = Instant::now();
                let (mut warned, mut failed) = (false, false);
                // When the request of the newest answer was sent.
                let mut last_answer_ms = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(probe) = source.upgrade() else {
                        return;
                    };
                    let asked_ms = now_ms();
                    match probe.ask(&consumer, &topic) {
                        Some(highs) => {
                            if warned {
                                tracing::info!("end probe: the broker answers again");
                            }
                            // Flagged before the answer is published, so that the answer cannot
                            // lift a floor first. (A failure was flagged when it happened.)
                            if !failed && now_ms().saturating_sub(asked_ms) > times.lateness_ms {
                                probe.outage(last_answer_ms);
                            }
                            probe.publish(&highs, asked_ms);
                            if let Some(wake) = wake.get() {
                                // The worker may be gone at shutdown; nothing waits then.
                                let _ = wake.activate();
                            }
                            (answered, warned, failed) = (Instant::now(), false, false);
                            last_answer_ms = asked_ms;
                        }
                        // Held at once, not only when the broker is back.
                        None if !failed => {
                            failed = true;
                            probe.outage(last_answer_ms);
                            if let Some(wake) = wake.get() {
                                let _ = wake.activate();
                            }
                        }
                        None => {}
                    }
                    if failed && !warned && answered.elapsed() >= PROBE_SILENCE {
                        tracing::warn!(
                            silent_s = answered.elapsed().as_secs(),
                            "end probe: no answer from the broker; idle partitions hold their floors"
                        );
                        warned = true;
                    }
                    drop(probe);
                    let now = now_ms();
                    std::thread::sleep(Duration::from_millis(times.next_ask_ms(now) - now));
                }
            })
            .expect("a thread for the end probe");
        probe
    }

    /// One ListOffsets request for every partition at once: (partition, high watermark) of each
    /// partition, or `None` when the broker did not answer for every one of them.
    fn ask(&self, consumer: &BaseConsumer<SourceContext>, topic: &str) -> Option<Vec<(i32, i64)>> {
        let mut latest = TopicPartitionList::new();
        for (p, _, _) in &self.reports {
            // As a timestamp, -1 (`Offset::End`) asks for the high watermark.
            latest.add_partition_offset(topic, *p, Offset::End).ok()?;
        }
        // A generous timeout: a failed request marks an outage (and holds every floor for the
        // delivery timeout), so a broker that is merely slow on a loaded machine must not fail
        // one. While a request hangs, no answer moves any floor either.
        let answer = match consumer.offsets_for_times(latest, Duration::from_secs(5)) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(error = %e, "end probe: no answer");
                return None;
            }
        };
        let elements = answer.elements();
        let highs = high_watermarks(
            elements
                .iter()
                .map(|e| (e.partition(), e.offset(), e.error().is_ok())),
        );
        if highs.is_none() {
            tracing::debug!(?answer, "end probe: the broker failed a partition");
        }
        highs
    }

    /// Makes an answer to the request sent at `asked_ms` visible to the source.
    fn publish(&self, highs: &[(i32, i64)], asked_ms: u64) {
        for (partition, high) in highs {
            if let Some((_, h, at)) = self.reports.iter().find(|r| r.0 == *partition) {
                // The high first: a reader that sees this `asked_ms` sees this high or a newer one.
                h.store(*high, Ordering::Relaxed);
                at.store(asked_ms, Ordering::Release);
            }
        }
    }

    /// Tells the source that the broker failed or stalled after its answer to the request sent
    /// at `last_answer_ms` (nothing before a first answer: no floor has moved on the probe yet).
    fn outage(&self, last_answer_ms: u64) {
        if last_answer_ms > 0 {
            self.last_answer_before_outage_ms
                .store(last_answer_ms, Ordering::Relaxed);
            self.outages.fetch_add(1, Ordering::Release);
        }
    }

    /// The last answer's request time before an outage the caller has not seen yet (`seen`
    /// counts the outages it has).
    fn outage_since(&self, seen: &mut u64) -> Option<u64> {
        let outages = self.outages.load(Ordering::Acquire);
        if outages == *seen {
            return None;
        }
        *seen = outages;
        Some(self.last_answer_before_outage_ms.load(Ordering::Relaxed))
    }

    /// (partition, high watermark, asked at) of every partition that has had an answer.
    fn latest(&self) -> impl Iterator<Item = (i32, i64, u64)> + '_ {
        self.reports.iter().filter_map(|(p, high, at)| {
            let asked_ms = at.load(Ordering::Acquire);
            (asked_ms > 0).then(|| (*p, high.load(Ordering::Relaxed), asked_ms))
        })
    }
}

/// Commits each partition's read position to the consumer group, asynchronously. Recovery never
/// reads these (it has the progress topic); they are there so standard tools can show lag.
fn commit_positions(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    partitions: &BTreeMap<i32, Partition>,
) {
    let mut positions = TopicPartitionList::new();
    for p in partitions.values() {
        if positions
            .add_partition_offset(topic, p.id(), Offset::Offset(p.position()))
            .is_err()
        {
            return;
        }
    }
    if let Err(e) = consumer.commit(&positions, CommitMode::Async) {
        tracing::debug!(error = %e, "offset commit for lag monitoring failed");
    }
}

/// What one record contributed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    counted: u64,
    late: u64,
    /// Already counted in a published epoch (replay).
    skipped: u64,
    /// Not an event line at all.
    unreadable: u64,
    /// Another copy of a request already counted (dedupe.rs).
    repeated: u64,
    /// Records stamped well ahead of this process's clock (a gateway's clock ahead).
    ahead: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.counted += other.counted;
        self.late += other.late;
        self.skipped += other.skipped;
        self.unreadable += other.unreadable;
        self.repeated += other.repeated;
        self.ahead += other.ahead;
    }
}

/// Counts one batch record into `counts`, each event in the epoch its partition assigns it,
/// except the repeats of a request already counted.
fn count_record(
    payload: &[u8],
    window_ms: u64,
    offset: i64,
    (partition, dedupe): (&mut Partition, &mut Dedupe),
    counts: &mut Counts,
) -> Tally {
    let mut tally = Tally::default();
    for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let tap: Tap = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                // The gateway validated every line; a bad one is a foreign producer's.
                tracing::warn!(error = %e, "skipping an unreadable event line");
                tally.unreadable += 1;
                continue;
            }
        };
        // Before the assignment: a repeat is no part of any epoch, replayed or not.
        if let (Some(key), Some(attempt)) = (&tap.request_id, tap.attempt) {
            if dedupe.tap(&tap.stream, &tap.user_id, key, attempt) == Verdict::Repeat {
                tally.repeated += 1;
                continue;
            }
        }
        match partition.assign(offset, epoch_of(tap.recv_ms, window_ms)) {
            Assignment::Skip => tally.skipped += 1,
            Assignment::Count { epoch, late } => {
                tally.counted += 1;
                counts.add(&tap.stream, epoch, &tap.emoji, late);
                tally.late += u64::from(late);
            }
        }
    }
    tally
}

/// Reaching the end of a partition is news for the watermark (it arrives through `poll`), not
/// an error; librdkafka also reports it to the client's error callback, which stays quiet about it.
pub struct SourceContext;

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for SourceContext {}

/// The source's consumer; a record or an event landing in its empty queue wakes the operator
/// that `wake` will name.
fn consumer(
    settings: &SourceSettings,
    wake: Arc<OnceLock<SyncActivator>>,
) -> Result<Arc<BaseConsumer<SourceContext>>, KafkaError> {
    let mut consumer: BaseConsumer<SourceContext> =
        ClientConfig::from_iter(settings.kafka.client_settings(ClientRole::AssignedReader {
            // Read positions are committed here for lag monitoring only.
            group: "emostream-dataflow",
            fetch_wait_ms: FETCH_WAIT_MS,
            // End-of-partition events release a replay hold the log ends before (partition.rs).
            partition_eof: true,
        }))
        .create_with_context(SourceContext)?;
    let mut assignment = TopicPartitionList::new();
    for p in &settings.partitions {
        // An offset below the log's start (retention) falls back to the earliest record.
        assignment.add_partition_offset(&settings.topic, p.id(), Offset::Offset(p.position()))?;
    }
    consumer.assign(&assignment)?;
    // On librdkafka's thread: only an activation, never work.
    consumer.set_nonempty_callback(move || {
        if let Some(wake) = wake.get() {
            let _ = wake.activate();
        }
    });
    Ok(Arc::new(consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_probe_also_asks_the_moment_an_epoch_may_close() {
        let times = ProbeTimes {
            window_ms: 2_000,
            lateness_ms: 250,
        };
        // Epoch 5 ends at 12,000 and may close from 12,250.
        assert_eq!(times.next_ask_ms(12_000), 12_025);
        assert_eq!(times.next_ask_ms(12_230), 12_250);
        assert_eq!(times.next_ask_ms(12_249), 12_250);
        assert_eq!(times.next_ask_ms(12_250), 12_275);
        assert_eq!(times.next_ask_ms(14_240), 14_250);
    }

    fn line(stream: &str, emoji: &str, recv_ms: u64) -> String {
        format!("{{\"stream\":\"{stream}\",\"user_id\":\"u\",\"emoji\":\"{emoji}\",\"recv_ms\":{recv_ms}}}\n")
    }

    /// ((epoch, stream, emoji), (count, late)).
    type Counted = ((u64, String, String), (u64, u64));

    /// Every pre-count, sorted.
    fn drained(counts: &mut Counts) -> Vec<Counted> {
        let mut by_epoch = BTreeMap::new();
        counts.drain_into(&mut by_epoch);
        let mut got: Vec<_> = by_epoch
            .into_iter()
            .flat_map(|(epoch, items)| {
                items.into_iter().map(move |item| match item {
                    SourceItem::Count(c) => ((epoch, c.stream, c.emoji), (c.count, c.late)),
                    SourceItem::Mark(m) => panic!("a mark among counts: {m:?}"),
                })
            })
            .collect();
        got.sort();
        got
    }

    #[test]
    fn counts_a_record_and_folds_late_events() {
        let mut partition = Partition::fresh(0);
        partition.begin_record(0);
        partition.end_record(0, 4_100);
        partition.advance(0, 2_000); // floor: epoch 2
        let payload = [
            line("a", "🔥", 4_100),
            line("a", "🔥", 4_200),
            line("b", "👍🏽", 1_000),
            line("a", "❤️", 6_000),
        ]
        .concat();
        let mut counts = Counts::default();
        let mut dedupe = Dedupe::new(300_000, 16);
        let tally = count_record(
            payload.as_bytes(),
            2_000,
            1,
            (&mut partition, &mut dedupe),
            &mut counts,
        );
        assert_eq!(
            tally,
            Tally {
                counted: 4,
                late: 1,
                skipped: 0,
                unreadable: 0,
                repeated: 0,
                ahead: 0,
            }
        );
        assert_eq!(
            drained(&mut counts),
            vec![
                ((2, "a".into(), "🔥".into()), (2, 0)),
                ((2, "b".into(), "👍🏽".into()), (1, 1)),
                ((3, "a".into(), "❤️".into()), (1, 0)),
            ]
        );
    }

    /// One step after records of two partitions: the counts at their epochs, each partition's
    /// floor moved by its records (partition 0) or by the broker's clock once it was read to the
    /// end (partition 1), the marks at the floors they leave, and the least floor.
    #[test]
    fn a_step_emits_counts_and_marks_by_epoch_and_moves_the_floor() {
        let metrics = Metrics::default();
        let mut source = KafkaSource::new(
            vec![Partition::fresh(0), Partition::fresh(1)],
            [0, 1].map(|p| (p, Dedupe::new(300_000, 16))).into(),
            1_000,
            300,
            5_350,
        );
        let ends = EndProbe::new(&[0, 1]);
        let payload = [line("a", "🔥", 4_100), line("a", "🔥", 4_200)].concat();
        let tally = source.record(0, 0, 6_400, Some(payload.as_bytes()), 10_000);
        assert_eq!((tally.counted, tally.late), (2, 0));
        source.record(1, 0, 2_100, Some(line("b", "👍", 2_100).as_bytes()), 10_000);
        // Partition 1 is read to its end (offset 1) as of a request sent at 9_350.
        ends.publish(&[(0, 5), (1, 1)], 9_350);
        let step = source.step(10_000, Some(&ends), &metrics);
        assert_eq!(step.floor, 6, "partition 0: its newest record 6_400 - 300");
        assert_eq!(
            source.partitions[&1].floor(),
            9,
            "partition 1: the broker's 9_350 - 300"
        );
        let items: Vec<(u64, String)> = step
            .by_epoch
            .iter()
            .flat_map(|(epoch, items)| {
                items.iter().map(move |item| {
                    let what = match item {
                        SourceItem::Count(c) => format!("{} {} x{}", c.stream, c.emoji, c.count),
                        SourceItem::Mark(m) => {
                            format!(
                                "mark p{} {}..{} at {}",
                                m.partition, m.start, m.end, m.position
                            )
                        }
                    };
                    (*epoch, what)
                })
            })
            .collect();
        assert_eq!(
            items,
            vec![
                (0, "mark p0 0..6 at 1".to_string()),
                (0, "mark p1 0..9 at 1".to_string()),
                (2, "b 👍 x1".to_string()),
                (4, "a 🔥 x2".to_string()),
            ]
        );
        let again = source.step(10_000, Some(&ends), &metrics);
        assert_eq!((again.by_epoch.len(), again.floor), (0, 6), "nothing new");
    }

    /// A gateway whose clock runs an hour ahead: its taps count in the epoch it gave them, but
    /// its partition's floor stops at this host's clock, so the taps of a gateway with a right
    /// clock, read after it, are on time rather than late by an hour.
    #[test]
    fn a_record_stamped_ahead_of_the_clock_moves_the_floor_only_to_the_clock() {
        let metrics = Metrics::default();
        let mut source = KafkaSource::new(
            vec![Partition::fresh(0)],
            [(0, Dedupe::new(300_000, 16))].into(),
            1_000,
            300,
            5_350,
        );
        let (now, hour) = (10_000, 3_600_000);
        let ahead = source.record(
            0,
            0,
            now + hour,
            Some(line("a", "🔥", now + hour).as_bytes()),
            now,
        );
        assert_eq!((ahead.counted, ahead.late, ahead.ahead), (1, 0, 1));
        let step = source.step(now, None, &metrics);
        assert_eq!(step.floor, 9, "this host's 10_000 - 300, not an hour later");
        let on_time = source.record(0, 1, now, Some(line("b", "👍", now).as_bytes()), now);
        assert_eq!((on_time.counted, on_time.late, on_time.ahead), (1, 0, 0));
        let step = source.step(now, None, &metrics);
        assert_eq!(step.floor, 9);
        let counted: Vec<(u64, usize)> = step
            .by_epoch
            .iter()
            .map(|(e, items)| (*e, items.len()))
            .collect();
        assert_eq!(counted, vec![(10, 1)], "b's tap in its own epoch");
    }

    /// One partition's error in the probe's answer is no answer at all: it must not let the
    /// other partitions' floors run ahead of records its producers still retry.
    #[test]
    fn an_answer_that_fails_a_partition_is_an_outage() {
        let answer = |second_ok| {
            high_watermarks(
                [
                    (0, Offset::Offset(7), true),
                    (1, Offset::Offset(9), second_ok),
                ]
                .into_iter(),
            )
        };
        assert_eq!(answer(true), Some(vec![(0, 7), (1, 9)]));
        assert_eq!(answer(false), None);
        assert_eq!(
            high_watermarks([(0, Offset::Invalid, true)].into_iter()),
            None,
            "no offset is no answer"
        );
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        let payload = format!("not json\n{}", line("a", "🔥", 0));
        let mut counts = Counts::default();
        let tally = count_record(
            payload.as_bytes(),
            2_000,
            0,
            (&mut Partition::fresh(0), &mut Dedupe::new(300_000, 16)),
            &mut counts,
        );
        assert_eq!(
            tally,
            Tally {
                counted: 1,
                late: 0,
                skipped: 0,
                unreadable: 1,
                repeated: 0,
                ahead: 0,
            }
        );
        assert_eq!(
            drained(&mut counts),
            [((0, "a".into(), "🔥".into()), (1, 0))]
        );
    }

    /// A request's own taps all count; a copy of it in a later record (another attempt, the
    /// same key) is dropped before any epoch sees it, and a line without a key always counts.
    #[test]
    fn repeats_of_a_keyed_request_are_dropped_before_the_count() {
        let keyed = |emoji: &str, attempt: u64| {
            format!(
                "{{\"stream\":\"a\",\"user_id\":\"u\",\"emoji\":\"{emoji}\",\"recv_ms\":4100,\
                 \"request_id\":\"k1\",\"attempt\":{attempt}}}\n"
            )
        };
        let mut partition = Partition::fresh(0);
        let mut dedupe = Dedupe::new(300_000, 16);
        let mut counts = Counts::default();
        let mut read = |offset: i64, payload: String| {
            dedupe.record(4_100);
            count_record(
                payload.as_bytes(),
                2_000,
                offset,
                (&mut partition, &mut dedupe),
                &mut counts,
            )
        };
        let first = read(0, [keyed("🔥", 7), keyed("🔥", 7), keyed("❤️", 7)].concat());
        let retry = read(
            1,
            [
                keyed("🔥", 8),
                keyed("🔥", 8),
                keyed("❤️", 8),
                line("a", "🔥", 4_100),
            ]
            .concat(),
        );
        assert_eq!((first.counted, first.repeated), (3, 0));
        assert_eq!((retry.counted, retry.repeated), (1, 3));
        assert_eq!(
            drained(&mut counts),
            vec![
                ((2, "a".into(), "❤️".into()), (1, 0)),
                ((2, "a".into(), "🔥".into()), (3, 0)),
            ]
        );
    }
}
