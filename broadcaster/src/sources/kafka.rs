//! The main publisher's sources: every record of `emoji-epochs` and of `emoji-trends`, as the
//! exact text the dataflow wrote. One consumer per topic, so that a topic missing (an older
//! broker set-up without `emoji-trends`) holds back only its own frames.
//!
//! Partitions are taken by `assign`, not by joining a consumer group: every main publisher needs
//! every frame, and nothing is committed because the start position is derived from the ring.

use crate::error::Error;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::kafka::ClientRole;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long one watermark query may take before the whole lookup is retried.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while the brokers are away or the topic does not exist yet.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Records read back per ring slot: the ring holds `ring_epochs` epochs of each stream, and one
/// partition carries several streams, so this many records per slot refills the ring for up to
/// 16 streams per partition. On `emoji-trends` the same read-back finds each stream's newest
/// trend frames unless they are older than that many of the partition's records.
const STREAMS_PER_PARTITION: i64 = 16;

/// One line per kind of client error in this long is enough to say the brokers are away.
const REPEAT_QUIET: Duration = Duration::from_secs(30);

pub struct FrameSource {
    consumer: Arc<StreamConsumer<QuietContext>>,
    topic: String,
    /// `None`: read from the topic's metadata.
    partitions: Option<u32>,
    ring_epochs: usize,
}

impl FrameSource {
    /// The sources of every frame the main publisher passes on: `emoji-epochs`, then
    /// `emoji-trends`. Nothing talks to the brokers until [`FrameSource::run`].
    pub fn all(kafka: &KafkaConfig, ring_epochs: usize) -> Result<[Self; 2], Error> {
        Ok([
            Self::new(
                kafka,
                &kafka.epochs_topic,
                Some(kafka.epochs_partitions),
                ring_epochs,
            )?,
            // `trends_partitions` is only what a development broker creates it with; the
            // topic's metadata says.
            Self::new(kafka, &kafka.trends_topic, None, ring_epochs)?,
        ])
    }

    fn new(
        kafka: &KafkaConfig,
        topic: &str,
        partitions: Option<u32>,
        ring_epochs: usize,
    ) -> Result<Self, Error> {
        // The start offset comes from the watermarks; nothing is committed.
        let consumer: StreamConsumer<QuietContext> =
            ClientConfig::from_iter(kafka.client_settings(ClientRole::AssignedReader {
                group: "emostream-broadcaster",
                // A frame is a few hundred bytes every 2 s: a broker holding an empty fetch for
                // the default 500 ms would add that to every viewer's latency.
                fetch_wait_ms: 50,
                partition_eof: false,
            }))
            .create_with_context(QuietContext::default())?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            partitions,
            ring_epochs,
        })
    }

    /// Sends every record's value into `frames` until the receiver is dropped, starting a little
    /// before each partition's end so that the ring fills again after a restart.
    pub async fn run(self, frames: mpsc::Sender<Utf8Bytes>) {
        let assignment = {
            let positions = self.start_positions();
            tokio::pin!(positions);
            loop {
                tokio::select! {
                    list = &mut positions => break list,
                    // Nothing is assigned yet, so polling only hands librdkafka's error events
                    // (broker down, …) to the log as they happen, instead of letting them pile up
                    // in its queue until the consumer closes.
                    polled = self.consumer.recv() => {
                        if let Err(e) = polled {
                            tracing::debug!(topic = %self.topic, error = %e, "consumer error before assignment");
                        }
                    }
                }
            }
        };
        if let Err(e) = self.consumer.assign(&assignment) {
            // Only a malformed list fails here, and the list is built from the configuration.
            tracing::error!(error = %e, topic = %self.topic, "cannot assign partitions");
            return;
        }
        tracing::info!(topic = %self.topic, partitions = assignment.count(), "reading frames");
        loop {
            let text = match self.consumer.recv().await {
                Ok(msg) => {
                    let Some(payload) = msg.payload() else {
                        continue;
                    };
                    match Utf8Bytes::try_from(Bytes::copy_from_slice(payload)) {
                        Ok(text) => text,
                        Err(e) => {
                            tracing::warn!(topic = %self.topic, partition = msg.partition(), offset = msg.offset(), error = %e, "record is not UTF-8");
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "consumer error");
                    continue;
                }
            };
            if frames.send(text).await.is_err() {
                return;
            }
        }
    }

    /// `max(low, high - ring_epochs * 16)` for every partition, retrying until the topic exists
    /// (and, without a configured count, has partitions).
    async fn start_positions(&self) -> TopicPartitionList {
        let back = i64::try_from(self.ring_epochs)
            .unwrap_or(i64::MAX)
            .saturating_mul(STREAMS_PER_PARTITION);
        loop {
            let consumer = Arc::clone(&self.consumer);
            let (topic, partitions) = (self.topic.clone(), self.partitions);
            // fetch_watermarks blocks on the network; keep it off the runtime's workers.
            let marks = tokio::task::spawn_blocking(move || {
                let partitions = match partitions {
                    Some(n) => n as i32,
                    None => {
                        let metadata = consumer.fetch_metadata(Some(&topic), WATERMARK_TIMEOUT)?;
                        let found = metadata.topics().iter().find(|t| t.name() == topic);
                        match found {
                            Some(t) if !t.partitions().is_empty() => t.partitions().len() as i32,
                            _ => {
                                return Err(KafkaError::MetadataFetch(
                                    RDKafkaErrorCode::UnknownTopic,
                                ))
                            }
                        }
                    }
                };
                (0..partitions)
                    .map(|p| {
                        consumer
                            .fetch_watermarks(&topic, p, WATERMARK_TIMEOUT)
                            .map(|m| (p, m))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .expect("the watermark lookup does not panic");
            match marks {
                Ok(marks) => {
                    let mut list = TopicPartitionList::new();
                    for (p, (low, high)) in marks {
                        let start = low.max(high.saturating_sub(back));
                        tracing::info!(topic = %self.topic, partition = p, low, high, start, "start offset");
                        list.add_partition_offset(&self.topic, p, Offset::Offset(start))
                            .expect("an explicit offset is always accepted");
                    }
                    return list;
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, retry_in = ?RETRY_EVERY, "cannot read the topic's watermarks; is it created?");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        }
    }
}

/// librdkafka reports "all brokers down" every few tens of milliseconds while the brokers are
/// away; this logs each kind of client error once per [`REPEAT_QUIET`] instead.
#[derive(Default)]
struct QuietContext {
    logged: Mutex<Vec<(Option<RDKafkaErrorCode>, Instant)>>,
}

impl ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let (code, now) = (error.rdkafka_error_code(), Instant::now());
        {
            let mut logged = self
                .logged
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match logged.iter_mut().find(|(c, _)| *c == code) {
                Some((_, at)) if now.duration_since(*at) < REPEAT_QUIET => return,
                Some((_, at)) => *at = now,
                None => logged.push((code, now)),
            }
        }
        tracing::warn!(%error, reason, "kafka client error (repeats muted for {REPEAT_QUIET:?})");
    }
}

impl ConsumerContext for QuietContext {}
