//! The dataflow tier: a timely cluster that turns `emoji-events` into closed epochs on
//! `emoji-epochs`.
//!
//! # Layout
//! - [`ownership`]: which worker owns which Kafka partition.
//! - [`watermark`]: per-partition watermarks and the idle rule.
//! - [`source`]: the Kafka source operator (never blocks; pre-counts per epoch).
//! - [`count`]: `CountEpochs`, exchange by stream and close each epoch on the frontier.
//! - [`reduce`]: `PerThousand`, the per-1000 reduction into viewer frames.
//! - [`publish`]: the sink and the producer for `emoji-epochs`.

pub mod count;
pub mod ownership;
pub mod publish;
pub mod reduce;
pub mod source;
pub mod watermark;

use count::CountEpochs;
use emostream_protocol::Config;
use publish::{Outbox, PublishEpochs, Publisher};
use reduce::PerThousand;
use serde::{Deserialize, Serialize};
use source::SourceSettings;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use timely::worker::Worker;

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

/// Builds the dataflow on this worker and runs it until `stop` is set and the last closed
/// epoch has been acknowledged by the broker.
pub fn run_worker(
    worker: &mut Worker,
    config: &Config,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let index = worker.index();
    let peers = worker.peers();
    let partitions = ownership::owned_partitions(index, peers, config.kafka.events_partitions);
    tracing::info!(worker = index, peers, ?partitions, "worker starting");

    let outbox = Outbox::default();
    let publisher = Publisher::new(
        &config.kafka.brokers,
        &config.kafka.epochs_topic,
        outbox.clone(),
    )
    .map_err(|e| e.to_string())?;
    let settings = SourceSettings {
        brokers: config.kafka.brokers.clone(),
        topic: config.kafka.events_topic.clone(),
        partitions,
        window_ms: config.epochs.window_ms,
        allowed_lateness_ms: config.epochs.allowed_lateness_ms,
        idle_poll_ms: config.dataflow.idle_poll_ms,
        stop,
    };
    let epochs = config.epochs;
    worker.dataflow::<u64, _, _>(|scope| -> Result<(), String> {
        source::kafka_source(scope, settings)
            .map_err(|e| e.to_string())?
            .count_epochs()
            .per_thousand(epochs.divisor, epochs.window_ms)
            .publish_to(outbox);
        Ok(())
    })?;

    let park = Duration::from_millis(config.dataflow.idle_poll_ms);
    while worker.step_or_park(Some(park)) {
        publisher.pump();
    }
    publisher.flush();
    tracing::info!(worker = index, "worker stopped");
    Ok(())
}
