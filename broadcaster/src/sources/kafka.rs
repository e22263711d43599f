//! The main publisher's sources: every record of `emoji-epochs` and of `emoji-trends`, as the
//! exact text the dataflow wrote. One consumer per topic, so that a topic missing (an older
//! broker set-up without `emoji-trends`) holds back only its own frames.
//!
//! Partitions are taken by `assign`, not by joining a consumer group: every main publisher needs
//! every frame, and nothing is committed because the start position is derived from the ring:
//! each partition is read from the first record of the ring's span in time ([`ReadBack`]), so
//! that after a restart every stream's ring fills again, however many streams share a partition.

use crate::error::Error;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::kafka::ClientRole;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How long one metadata or offset query may take before the whole lookup is retried.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while the brokers are away or the topic does not exist yet.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How much further back than the ring's span the read-back starts: the newest epoch is
/// published a window and the allowed lateness after it began, and this host's clock may be
/// behind the dataflow's, which stamps the records.
const READ_BACK_MARGIN: Duration = Duration::from_secs(10);

/// Where a main publisher starts reading after a (re)start. The dataflow stamps each record with
/// its epoch's end (`dataflow/src/publish.rs`, `trends/publish.rs`), so reading every partition
/// from the first record stamped at or after `from_ms` reads every frame of every epoch from
/// `first_epoch` on, whatever the number of streams per partition; the hub cannot vouch for the
/// epochs before ([`crate::hub::Hub::missed_before`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBack {
    /// Unix ms: the ring's span in time (`ring_epochs` windows) and [`READ_BACK_MARGIN`] before
    /// the start.
    pub from_ms: i64,
    /// `floor(from_ms / window_ms)`: epoch E's records are stamped `(E + 1) × window_ms`, at or
    /// after `from_ms` from this one on.
    pub first_epoch: u64,
}

impl ReadBack {
    /// The read-back of a main publisher starting at `now`, with a ring of `ring_epochs` epochs
    /// of `window_ms` each.
    pub fn before(now: SystemTime, ring_epochs: usize, window_ms: u64) -> Self {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let span_ms = window_ms
            .saturating_mul(u64::try_from(ring_epochs).unwrap_or(u64::MAX))
            .saturating_add(READ_BACK_MARGIN.as_millis() as u64);
        let from_ms = now_ms.saturating_sub(span_ms);
        Self {
            from_ms: i64::try_from(from_ms).unwrap_or(i64::MAX),
            first_epoch: emostream_protocol::epoch::epoch_of(from_ms, window_ms.max(1)),
        }
    }
}

/// One line per kind of client error in this long is enough to say the brokers are away.
const REPEAT_QUIET: Duration = Duration::from_secs(30);

pub struct FrameSource {
    consumer: Arc<StreamConsumer<QuietContext>>,
    topic: String,
    /// `None`: read from the topic's metadata.
    partitions: Option<u32>,
    read_back: ReadBack,
}

impl FrameSource {
    /// The sources of every frame the main publisher passes on: `emoji-epochs`, then
    /// `emoji-trends`. Nothing talks to the brokers until [`FrameSource::run`].
    pub fn all(kafka: &KafkaConfig, read_back: ReadBack) -> Result<[Self; 2], Error> {
        Ok([
            Self::new(
                kafka,
                &kafka.epochs_topic,
                Some(kafka.epochs_partitions),
                read_back,
            )?,
            // `trends_partitions` is only what a development broker creates it with; the
            // topic's metadata says.
            Self::new(kafka, &kafka.trends_topic, None, read_back)?,
        ])
    }

    fn new(
        kafka: &KafkaConfig,
        topic: &str,
        partitions: Option<u32>,
        read_back: ReadBack,
    ) -> Result<Self, Error> {
        // The start offset comes from the records' times; nothing is committed.
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
            read_back,
        })
    }

    /// Sends every record's value into `frames` until the receiver is dropped, starting at each
    /// partition's first record of the read-back's time so that the ring fills again after a
    /// restart.
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

    /// Each partition's first record stamped at or after [`ReadBack::from_ms`], retrying until
    /// the topic exists (and, without a configured count, has partitions). A partition with no
    /// such record starts at the end it had before the lookup; one the brokers cannot look up by
    /// time starts at the log's start, which reads more than the ring needs but misses nothing.
    /// (On `emoji-trends` a stream quiet for longer than the span has no trend frame read back:
    /// its window drained long before.)
    async fn start_positions(&self) -> TopicPartitionList {
        loop {
            let consumer = Arc::clone(&self.consumer);
            let (topic, partitions) = (self.topic.clone(), self.partitions);
            let from_ms = self.read_back.from_ms;
            // Both lookups block on the network; keep them off the runtime's workers.
            let found = tokio::task::spawn_blocking(move || {
                let partitions = match partitions {
                    Some(n) => n as i32,
                    None => {
                        let metadata = consumer.fetch_metadata(Some(&topic), LOOKUP_TIMEOUT)?;
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
                // Each partition's end, asked before the lookup by time: a partition with no
                // record since `from_ms` starts there, so a record appended after this (or
                // during the lookup) is read. `Offset::End` would be resolved only when the
                // fetch starts, and skip it.
                let ends = (0..partitions)
                    .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, LOOKUP_TIMEOUT)?.1)))
                    .collect::<Result<HashMap<i32, i64>, KafkaError>>()?;
                let mut times = TopicPartitionList::new();
                for p in 0..partitions {
                    times.add_partition_offset(&topic, p, Offset::Offset(from_ms))?;
                }
                Ok((consumer.offsets_for_times(times, LOOKUP_TIMEOUT)?, ends))
            })
            .await
            .expect("the offset lookup does not panic");
            match found {
                Ok((found, ends)) => {
                    let mut list = TopicPartitionList::new();
                    for partition in found.elements() {
                        let end = ends.get(&partition.partition()).copied();
                        let start = match (partition.error(), partition.offset(), end) {
                            (Ok(()), Offset::Offset(at), _) => Offset::Offset(at),
                            (Ok(()), Offset::End, Some(end)) => Offset::Offset(end),
                            _ => Offset::Beginning,
                        };
                        tracing::info!(topic = %self.topic, partition = partition.partition(), from_ms, ?start, "start offset");
                        list.add_partition_offset(&self.topic, partition.partition(), start)
                            .expect("a start offset is always accepted");
                    }
                    return list;
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, retry_in = ?RETRY_EVERY, "cannot look up the topic's start offsets; is it created?");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_back_starts_the_rings_span_and_the_margin_back_at_an_epochs_frames() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        // 60 epochs of 2 s and 10 s: 130 s back. Every epoch from 435 on (stamped 872,000 and
        // later) is read whole.
        let read_back = ReadBack::before(at(1_000_000), 60, 2000);
        assert_eq!(
            read_back,
            ReadBack {
                from_ms: 870_000,
                first_epoch: 435
            }
        );
        let read_back = ReadBack::before(at(1_000_001), 60, 2000);
        assert_eq!(
            read_back,
            ReadBack {
                from_ms: 870_001,
                first_epoch: 435
            }
        );
        // A clock before the span: from the start of time.
        let read_back = ReadBack::before(at(5_000), 60, 2000);
        assert_eq!(
            read_back,
            ReadBack {
                from_ms: 0,
                first_epoch: 0
            }
        );
    }
}
