//! The dataflow tier: a timely cluster that turns `emoji-events` into closed epochs on
//! `emoji-epochs`.
//!
//! # Layout
//! - [`ownership`]: which worker owns which Kafka partition.
//! - [`watermark`]: per-partition watermarks and the idle rule.
//! - [`partition`]: one partition's floor, epoch assignment, marks and replay rule.
//! - [`recovery`]: reading the last progress record at start.
//! - [`reader`]: the one consumer set-up of recovery, the start-up checks, the refill and the
//!   fence.
//! - [`memory`]: refusing to start when the progress topic can lose records or has, or when
//!   events a resume needs are deleted.
//! - [`dedupe`]: a retried request counts once (its `Idempotency-Key`, per partition, rebuilt
//!   from the log at a restart).
//! - [`source`]: the Kafka source operator (never blocks; drops repeats; pre-counts per epoch;
//!   emits marks).
//! - [`count`]: `CountEpochs`, exchange by stream and close each epoch on the frontier.
//! - [`reduce`]: `PerThousand`, the per-1000 reduction into viewer frames, each listing at most
//!   `max_frame_emojis` emojis.
//! - [`publish`]: `PublishEpochs`, gated, acknowledged publication to `emoji-epochs`.
//! - [`progress`]: `WriteProgress`, the progress record and the gate it feeds back.
//! - [`fence`]: the progress chain's check that stops a second cluster writing the same topics.
//! - [`trends`]: sliding-window trends (top emojis, sentiment, popular streams) with differential
//!   dataflow, published on their own topic.
//! - [`links`]: timely's TCP links, with keepalive and a user timeout (a vanished peer).
//! - [`metrics`]: per-process counters, served as Prometheus text.
//! - [`crash`]: named crash points and holds for fault tests (`EMOSTREAM_CRASH_AT`,
//!   `EMOSTREAM_HOLD_AT`), inert unless set.
//! - [`error`]: [`Error`], every way a worker fails to start or to deliver.
//!
//! ```text
//! KafkaSource ─┬─ counts ─▶ CountEpochs ─▶ PerThousand ─▶ PublishEpochs ─▶ (published frontier)
//!              │                                 └─▶ Trends ─▶ PublishTrends       │
//!              └─ marks ──────────────────────────────────────▶ WriteProgress ◀──┘
//!                                          gate ◀── feedback(+1 epoch) ──┘
//! ```
//! `PublishTrends` reads the published frontier and the gate too (their frontiers only): a
//! trends frame leaves once both have passed its epoch.

pub mod count;
pub mod crash;
pub mod dedupe;
mod error;
pub mod fence;
pub mod links;
pub mod memory;
pub mod metrics;
mod ownership;
mod partition;
pub mod progress;
pub mod publish;
mod reader;
pub mod recovery;
mod reduce;
mod source;
pub mod trends;
mod watermark;

use count::CountEpochs;
use emostream_protocol::progress::{Counting, FIRST};
use emostream_protocol::Config;
pub use error::Error;
use fence::ChainCheck;
pub use partition::Mark;
use partition::Partition;
use progress::{ProgressWriter, WriteProgress};
use publish::{AckedProducer, PublishEpochs};
use recovery::Recovered;
use reduce::PerThousand;
use serde::{Deserialize, Serialize};
use source::{SourceItem, SourceSettings};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concat, ConnectLoop, Feedback, Input, Inspect, OkErr, Probe};
use timely::dataflow::InputHandleVec;
use timely::worker::Worker;
use trends::publish::PublishTrends;
use trends::refill::Refill;
use trends::{TrendSettings, Trends};

/// A source's pre-count of one (stream, emoji) in one epoch (the epoch is the timely time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialCount {
    pub stream: String,
    pub emoji: String,
    pub count: u64,
    /// How many of `count` were late and folded into this epoch.
    pub late: u64,
}

/// One stream's closed epoch before the reduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCount {
    pub stream: String,
    pub epoch: u64,
    pub total: u64,
    pub late: u64,
    pub emojis: Vec<(String, u64)>,
}

/// Builds the dataflow on this worker and runs it until `stop` is set and every closed epoch
/// has been published and acknowledged.
pub fn run_worker(
    worker: &mut Worker,
    config: &Config,
    stop: Arc<AtomicBool>,
    metrics: Arc<metrics::Metrics>,
) -> Result<(), Error> {
    let index = worker.index();
    let peers = worker.peers();
    let kafka = &config.kafka;
    let owned = ownership::owned_partitions(index, peers, kafka.events_partitions);
    let counting = Counting {
        window_ms: config.epochs.window_ms,
        divisor: config.epochs.divisor,
        events_partitions: kafka.events_partitions,
    };
    let recovered = agree_on_progress(worker, || {
        memory::protect(kafka)?;
        let recovered = recovery::last_progress(kafka, &kafka.progress_topic)?;
        let progress = recovered.as_ref().map(|r| &r.progress);
        if let Some(progress) = progress {
            recovery::check(progress, counting, &kafka.progress_topic)?;
        }
        memory::check_published(
            progress,
            memory::newest_published(kafka, &kafka.epochs_topic)?,
            &kafka.progress_topic,
            &kafka.epochs_topic,
        )?;
        if let Some(progress) = progress {
            memory::check_events_retained(kafka, progress)?;
        }
        Ok(recovered)
    })?;
    let follows = recovered.as_ref().map_or(FIRST, |r| r.offset);
    let progress = recovered.map(|r| r.progress);
    let partitions: Vec<Partition> = owned
        .iter()
        .map(|p| match &progress {
            Some(progress) => Partition::resume(
                progress.epoch,
                progress
                    .partition(*p)
                    .expect("a checked record names every partition"),
            ),
            None => Partition::fresh(*p),
        })
        .collect();
    let first_epoch = progress.as_ref().map_or(0, |p| p.epoch + 1);
    let resumes: Vec<(i32, i64)> = partitions.iter().map(|p| (p.id(), p.position())).collect();
    let dedupe = dedupe::refill(
        kafka,
        &kafka.events_topic,
        &resumes,
        config.dataflow.idempotency_horizon_ms,
        config.dataflow.idempotency_keys_per_partition,
    )?;
    // The epochs the recovered record reproduces may go out before any new record.
    let allowed = progress
        .as_ref()
        .map_or(0, emostream_protocol::progress::Progress::last_reproducible);
    tracing::info!(
        worker = index,
        peers,
        partitions = ?partitions.iter().map(|p| (p.id(), p.position())).collect::<Vec<_>>(),
        first_epoch,
        "worker starting"
    );

    let gate_probe = timely::dataflow::ProbeHandle::new();
    let settings = SourceSettings {
        kafka: kafka.clone(),
        topic: kafka.events_topic.clone(),
        partitions,
        dedupe,
        window_ms: config.epochs.window_ms,
        allowed_lateness_ms: config.epochs.allowed_lateness_ms,
        settle_ms: config.gateway.delivery_timeout_ms + config.epochs.allowed_lateness_ms,
        idle_poll_ms: config.dataflow.idle_poll_ms,
        gate: gate_probe.clone(),
        stop,
        metrics: Arc::clone(&metrics),
    };
    let epochs = config.epochs;
    let publisher = AckedProducer::connect(kafka, &kafka.epochs_topic)?;
    publisher.expect_partitions(&kafka.events_topic, kafka.events_partitions)?;
    publisher.expect_partitions(&kafka.epochs_topic, kafka.epochs_partitions)?;
    let progress_writer = if index == 0 {
        let producer = AckedProducer::connect(kafka, &kafka.progress_topic)?;
        producer.expect_partitions(&kafka.progress_topic, 1)?;
        // A live cluster writes a record about once an epoch, an epoch closing a lateness after
        // its end; four of those, and a rival's run that wrote nothing was its last.
        let quiet = Duration::from_millis(4 * (epochs.window_ms + epochs.allowed_lateness_ms));
        // Random per start (std seeds each RandomState from the OS); only worker 0 writes.
        let run = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::process::id(),
        );
        tracing::info!(run, "cluster run");
        Some(ProgressWriter {
            producer,
            chain: ChainCheck::start(kafka, &kafka.progress_topic, quiet)?,
            follows,
            run,
            in_flight: progress::IN_FLIGHT,
        })
    } else {
        None
    };
    // Trends read the closed epochs and publish elsewhere; nothing on the epochs' path waits
    // for them, and without their topic they are off.
    let trends_publisher = trends::publish::connect(kafka, &kafka.trends_topic)?;
    let trend_settings = TrendSettings::new(epochs.window_ms);
    // The 2W epochs before the first one counted: the W whose frames are sent again (a crash can
    // cut them off) and the window of the epoch before those, so that their frames say what
    // changed exactly as they did before the restart. One worker reads them (the stage
    // exchanges by its own keys, so where they enter does not matter).
    let refilled = match (&trends_publisher, index) {
        (Some(_), 0) => trends::refill::closed_epochs(
            kafka,
            &kafka.epochs_topic,
            trends::refill::refilled(first_epoch, trend_settings.window_epochs),
            epochs.window_ms,
        )?,
        _ => Vec::new(),
    };
    if trends_publisher.is_some() {
        trends::held::count_held(worker, Arc::clone(&metrics));
    }
    if !refilled.is_empty() {
        tracing::info!(
            worker = index,
            counts = refilled.len(),
            first_epoch,
            "trends windows refilled from the published epochs"
        );
    }
    worker.dataflow::<u64, _, _>(|scope| -> Result<(), Error> {
        let (gate_handle, gate) = scope.feedback::<Vec<()>>(1);
        let (counts, marks) = source::kafka_source(scope, settings)?.ok_err(|item| match item {
            SourceItem::Count(c) => Ok(c),
            SourceItem::Mark(m) => Err(m),
        });
        let frames = counts
            .container::<Vec<PartialCount>>()
            .count_epochs()
            .per_thousand(epochs, Arc::clone(&metrics));
        let published =
            frames
                .clone()
                .publish_epochs(gate.clone(), publisher, epochs.window_ms, metrics);
        if let Some(producer) = trends_publisher {
            // Trends read the frames as published, bound included, as a restart's refill reads
            // them back. The output's frontier (frames answered) only keeps a graceful stop
            // waiting for the broker; nothing else depends on it.
            let _answered = frames
                .map(reduce::counted)
                .concat(scope.refill(refilled))
                .trends(trend_settings)
                .publish_trends(
                    published.clone(),
                    gate,
                    first_epoch,
                    trends::refill::resend_from(first_epoch, trend_settings.window_epochs),
                    producer,
                );
        }
        marks
            .container::<Vec<partition::Mark>>()
            .write_progress(published, counting, allowed, progress_writer)
            .probe_with(&gate_probe)
            .connect_loop(gate_handle);
        Ok(())
    })?;

    let park = Duration::from_millis(config.dataflow.idle_poll_ms);
    while worker.step_or_park(Some(park)) {}
    tracing::info!(worker = index, "worker stopped");
    Ok(())
}

/// Worker 0 runs `read` (the newest progress record on the chain) and every worker starts from
/// what it found. Each reading for itself could see different records while another cluster
/// writes into the same topics, and start the replay from two different epochs.
fn agree_on_progress(
    worker: &mut Worker,
    read: impl FnOnce() -> Result<Option<Recovered>, Error>,
) -> Result<Option<Recovered>, Error> {
    let found = match worker.index() {
        0 => {
            let found = read()?.map(|r| (r.offset, r.progress));
            Some(serde_json::to_string(&found).expect("a progress record always serializes"))
        }
        _ => None,
    };
    let received = Rc::new(RefCell::new(None));
    let sink = Rc::clone(&received);
    let mut input = InputHandleVec::<u64, String>::new();
    worker.dataflow::<u64, _, _>(|scope| {
        scope
            .input_from(&mut input)
            .broadcast()
            .inspect(move |found: &String| *sink.borrow_mut() = Some(found.clone()));
    });
    if let Some(found) = found {
        input.send(found);
    }
    drop(input);
    while received.borrow().is_none() {
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
    let found = received.borrow_mut().take().expect("received above");
    let found: Option<(i64, emostream_protocol::progress::Progress)> =
        serde_json::from_str(&found).expect("worker 0 sent a progress record it serialized");
    Ok(found.map(|(offset, progress)| Recovered { offset, progress }))
}
