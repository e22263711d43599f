//! Batch records: the events of one (partition, stream, epoch) received within `flush_ms` travel
//! as one Kafka record, because every broker pays per record and a 2 s epoch of a popular stream
//! is hundreds of thousands of taps. A request's answer waits for the acknowledgement of the
//! record that holds its events, so a 2xx always means "in Kafka".

use crate::parse::Tap;
use crate::GatewayError;
use emostream_protocol::epoch::epoch_of;
use emostream_protocol::wire::{Accepted, EmojiEvent};
use emostream_protocol::Config;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Requests waiting to be packed. When it is full the gateway answers 503 at once instead of
/// queueing without bound.
const SUBMISSION_QUEUE: usize = 16_384;

/// How long the producer may try to deliver a record before the requests in it get a 503.
const DELIVERY_TIMEOUT_MS: &str = "10000";

type Ack = oneshot::Sender<Result<(), GatewayError>>;

/// One request's events, already encoded as NDJSON lines.
struct Submission {
    partition: i32,
    stream: String,
    epoch: u64,
    recv_ms: u64,
    lines: Vec<u8>,
    ack: Ack,
}

/// The request handlers' side of the batcher.
#[derive(Clone)]
pub struct BatcherHandle {
    tx: mpsc::Sender<Submission>,
    partitions: u32,
    window_ms: u64,
}

impl BatcherHandle {
    /// Queues the taps of one request and waits until the broker has acknowledged them.
    pub async fn submit(&self, stream: &str, taps: &[Tap]) -> Result<Accepted, GatewayError> {
        let recv_ms = now_ms();
        let epoch = epoch_of(recv_ms, self.window_ms);
        let mut lines = Vec::with_capacity(taps.len() * 96);
        for tap in taps {
            let event = EmojiEvent {
                stream: Cow::Borrowed(stream),
                user_id: Cow::Borrowed(&tap.user_id),
                emoji: Cow::Borrowed(&tap.emoji),
                ts: tap.ts.clone(),
                recv_ms,
            };
            serde_json::to_writer(&mut lines, &event).expect("serializing to a Vec cannot fail");
            lines.push(b'\n');
        }
        let (ack, acked) = oneshot::channel();
        let submission = Submission {
            partition: self.partition_for(stream, &taps[0].user_id),
            stream: stream.to_string(),
            epoch,
            recv_ms,
            lines,
            ack,
        };
        self.tx
            .try_send(submission)
            .map_err(|_| GatewayError::Unavailable {
                reason: "ingest queue full, retry shortly",
            })?;
        acked.await.map_err(|_| GatewayError::Unavailable {
            reason: "gateway is shutting down",
        })??;
        Ok(Accepted {
            accepted: taps.len() as u64,
            epoch,
        })
    }

    /// A user's taps always land in the same partition, so load spreads over partitions with the
    /// audience rather than with the number of streams.
    fn partition_for(&self, stream: &str, user_id: &str) -> i32 {
        // SipHash with fixed keys: the same user maps to the same partition on every gateway.
        let mut h = std::hash::DefaultHasher::new();
        (stream, user_id).hash(&mut h);
        (h.finish() % u64::from(self.partitions)) as i32
    }
}

/// The task that packs submissions into records.
pub struct Batcher {
    task: JoinHandle<()>,
}

impl Batcher {
    pub fn start(config: &Config) -> Result<(Batcher, BatcherHandle), KafkaError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka.brokers)
            // acks=all + idempotence: an acknowledged record survives a broker failover and a
            // retried send is never written twice.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            // We batch ourselves; librdkafka only needs to coalesce records of one flush tick.
            .set("linger.ms", "5")
            .set("message.timeout.ms", DELIVERY_TIMEOUT_MS)
            // A full batch (20,000 events of ~100 bytes) is larger than librdkafka's 1 MB default.
            .set("message.max.bytes", "16000000")
            .create()?;
        let (tx, rx) = mpsc::channel(SUBMISSION_QUEUE);
        let handle = BatcherHandle {
            tx,
            partitions: config.kafka.events_partitions,
            window_ms: config.epochs.window_ms,
        };
        let packer = Packer {
            producer,
            topic: config.kafka.events_topic.clone(),
            max_events: config.gateway.flush_max_events,
            open: HashMap::new(),
            in_flight: JoinSet::new(),
        };
        let task = tokio::spawn(packer.run(rx, Duration::from_millis(config.gateway.flush_ms)));
        Ok((Batcher { task }, handle))
    }

    /// Waits until every handle is dropped, every open batch is flushed and every record's
    /// acknowledgement has been passed on to its requests.
    pub async fn finish(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "batcher task failed");
        }
    }
}

#[derive(Clone, Hash, PartialEq, Eq)]
struct BatchKey {
    partition: i32,
    stream: String,
    epoch: u64,
}

struct OpenBatch {
    first_recv_ms: u64,
    events: usize,
    lines: Vec<u8>,
    acks: Vec<Ack>,
}

struct Packer {
    producer: FutureProducer,
    topic: String,
    max_events: usize,
    open: HashMap<BatchKey, OpenBatch>,
    in_flight: JoinSet<()>,
}

impl Packer {
    async fn run(mut self, mut rx: mpsc::Receiver<Submission>, flush_every: Duration) {
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                submission = rx.recv() => match submission {
                    Some(s) => self.add(s),
                    None => break,
                },
                // Flushing everything each tick bounds a batch's age by `flush_ms`.
                _ = tick.tick() => self.flush_all(),
                Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {}
            }
        }
        self.flush_all();
        while self.in_flight.join_next().await.is_some() {}
        // Every record has been acknowledged or failed by now; this only drains librdkafka's own
        // bookkeeping, so it blocks for a moment at most.
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }

    fn add(&mut self, s: Submission) {
        let events = s.lines.iter().filter(|&&b| b == b'\n').count();
        let key = BatchKey {
            partition: s.partition,
            stream: s.stream,
            epoch: s.epoch,
        };
        let batch = self.open.entry(key.clone()).or_insert_with(|| OpenBatch {
            first_recv_ms: s.recv_ms,
            events: 0,
            lines: Vec::with_capacity(s.lines.len()),
            acks: Vec::new(),
        });
        batch.events += events;
        batch.lines.extend_from_slice(&s.lines);
        batch.acks.push(s.ack);
        if batch.events >= self.max_events {
            let full = self.open.remove(&key).expect("the batch was just filled");
            self.send(key, full);
        }
    }

    fn flush_all(&mut self) {
        let open = std::mem::take(&mut self.open);
        for (key, batch) in open {
            self.send(key, batch);
        }
    }

    fn send(&mut self, key: BatchKey, batch: OpenBatch) {
        let record = FutureRecord::to(&self.topic)
            .partition(key.partition)
            .key(key.stream.as_bytes())
            .payload(&batch.lines)
            .timestamp(batch.first_recv_ms as i64);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let acks = batch.acks;
                self.in_flight.spawn(async move {
                    let outcome = match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => {
                            tracing::warn!(error = %e, "broker did not acknowledge a batch");
                            Err(GatewayError::Unavailable {
                                reason: "broker did not acknowledge, retry shortly",
                            })
                        }
                        Err(_) => Err(GatewayError::Unavailable {
                            reason: "producer stopped",
                        }),
                    };
                    for ack in acks {
                        let _ = ack.send(outcome.clone());
                    }
                });
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "producer refused a batch");
                for ack in batch.acks {
                    let _ = ack.send(Err(GatewayError::Unavailable {
                        reason: "producer queue full, retry shortly",
                    }));
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}
