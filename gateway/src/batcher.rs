//! Batch records: the events of one (partition, stream, epoch) received within `flush_ms` travel
//! as one Kafka record, because every broker pays per record and a 2 s epoch of a popular stream
//! is hundreds of thousands of taps. In durable mode a request's answer waits for the
//! acknowledgement of the record that holds its events, so a 2xx always means "in Kafka".
//!
//! A batch goes out as soon as its partition has no record awaiting the broker (group commit),
//! else when that record is acknowledged, and never later than `flush_ms` after it opened.
//! Under light load a tap therefore waits one broker round trip, not a flush interval; under
//! heavy load the batches grow by themselves while the previous record is in flight, so the
//! broker sees at most one record per partition per round trip. (A closed-loop client such as
//! a phone waiting for its 202 would otherwise be held to one request per `flush_ms`.)
//!
//! Memory is bounded by the in-flight budget: a request takes one permit per event before it is
//! queued and the permits travel with its events until the broker has answered for them, so
//! neither the queue nor librdkafka can grow past `max_in_flight_events`.

use crate::metrics::Metrics;
use crate::parse::Tap;
use crate::producer::{self, Health, Kafka, FLUSH_BYTES};
use crate::GatewayError;
use emostream_protocol::config::AckMode;
use emostream_protocol::epoch::epoch_of;
use emostream_protocol::wire::{Accepted, EmojiEvent};
use emostream_protocol::Config;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureRecord, Producer};
use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// Requests waiting to be packed. The budget bounds events; this bounds requests (many tiny
/// ones cost the packer more than their events suggest). Full → 503 at once.
const SUBMISSION_QUEUE: usize = 65_536;

type Ack = oneshot::Sender<Result<(), GatewayError>>;

/// One request's events, already encoded as NDJSON lines.
struct Submission {
    partition: i32,
    stream: String,
    epoch: u64,
    recv_ms: u64,
    events: usize,
    lines: Vec<u8>,
    /// None in fire-and-forget mode: nobody waits.
    ack: Option<Ack>,
    permit: OwnedSemaphorePermit,
}

/// The request handlers' side of the batcher.
#[derive(Clone)]
pub struct BatcherHandle {
    tx: mpsc::Sender<Submission>,
    budget: Arc<Semaphore>,
    budget_size: usize,
    health: Arc<Health>,
    producer: Kafka,
    topic: String,
    mode: AckMode,
    partitions: u32,
    window_ms: u64,
}

impl BatcherHandle {
    /// Queues the taps of one request and, in durable mode, waits until the broker has
    /// acknowledged them.
    pub async fn submit(&self, stream: &str, taps: &[Tap<'_>]) -> Result<Accepted, GatewayError> {
        if !self.health.reachable() {
            return Err(GatewayError::BrokerUnavailable {
                reason: "broker unreachable, retry shortly",
            });
        }
        let permit = u32::try_from(taps.len())
            .ok()
            .filter(|&n| n as usize <= self.budget_size)
            .and_then(|n| Arc::clone(&self.budget).try_acquire_many_owned(n).ok())
            .ok_or(GatewayError::Overloaded {
                reason: "ingest budget full, retry shortly",
            })?;
        let recv_ms = now_ms();
        let epoch = epoch_of(recv_ms, self.window_ms);
        let mut lines = Vec::with_capacity(taps.len() * (96 + stream.len()));
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
        let (ack, acked) = match self.mode {
            AckMode::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            AckMode::FireAndForget => (None, None),
        };
        let submission = Submission {
            partition: self.partition_for(stream, &taps[0].user_id),
            stream: stream.to_string(),
            epoch,
            recv_ms,
            events: taps.len(),
            lines,
            ack,
            permit,
        };
        self.tx
            .try_send(submission)
            .map_err(|_| GatewayError::Overloaded {
                reason: "ingest queue full, retry shortly",
            })?;
        if let Some(acked) = acked {
            acked.await.map_err(|_| GatewayError::Overloaded {
                reason: "gateway is shutting down",
            })??;
        }
        Ok(Accepted {
            accepted: taps.len() as u64,
            epoch,
        })
    }

    pub fn broker_reachable(&self) -> bool {
        self.health.reachable()
    }

    /// Ready when the broker answers and the events topic exists.
    pub async fn ready(&self) -> Result<(), String> {
        producer::topic_ready(&self.producer, &self.topic).await
    }

    /// librdkafka's out-queue length.
    pub fn producer_queue(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// (events holding budget now, the budget).
    pub fn in_flight(&self) -> (usize, usize) {
        let used = self.budget_size - self.budget.available_permits();
        (used, self.budget_size)
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

/// The task that packs submissions into records, and the broker probe.
pub struct Batcher {
    task: JoinHandle<()>,
    probe: JoinHandle<()>,
}

impl Batcher {
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<(Batcher, BatcherHandle), KafkaError> {
        let health = Arc::new(Health::default());
        let producer = producer::create(config, Arc::clone(&health))?;
        let topic = config.kafka.events_topic.clone();
        let (tx, rx) = mpsc::channel(SUBMISSION_QUEUE);
        let budget_size = config.gateway.max_in_flight_events;
        let handle = BatcherHandle {
            tx,
            budget: Arc::new(Semaphore::new(budget_size)),
            budget_size,
            health: Arc::clone(&health),
            producer: producer.clone(),
            topic: topic.clone(),
            mode: config.gateway.ack_mode,
            partitions: config.kafka.events_partitions,
            window_ms: config.epochs.window_ms,
        };
        let probe = producer::spawn_probe(producer.clone(), topic.clone(), Arc::clone(&health));
        let packer = Packer {
            producer,
            topic,
            max_events: config.gateway.flush_max_events,
            open: HashMap::new(),
            in_flight: JoinSet::new(),
            unacked: HashMap::new(),
            health,
            metrics,
        };
        let task = tokio::spawn(packer.run(rx, Duration::from_millis(config.gateway.flush_ms)));
        Ok((Batcher { task, probe }, handle))
    }

    /// Waits until every handle is dropped, every open batch is flushed and every record's
    /// acknowledgement has been passed on to its requests.
    pub async fn finish(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "batcher task failed");
        }
        self.probe.abort();
    }
}

#[derive(Clone, Hash, PartialEq, Eq)]
struct BatchKey {
    partition: i32,
    stream: String,
    epoch: u64,
}

struct OpenBatch {
    /// The newest receive time in the batch: the record's timestamp, which the dataflow's
    /// watermark follows. (The first receive time would trail it by up to `flush_ms`, and every
    /// epoch would close that much later.)
    newest_recv_ms: u64,
    events: usize,
    lines: Vec<u8>,
    acks: Vec<Ack>,
    permits: Vec<OwnedSemaphorePermit>,
}

struct Packer {
    producer: Kafka,
    topic: String,
    max_events: usize,
    open: HashMap<BatchKey, OpenBatch>,
    /// Each task resolves to its record's partition once the broker has answered.
    in_flight: JoinSet<i32>,
    /// Records awaiting the broker, per partition.
    unacked: HashMap<i32, usize>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
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
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    let partition = done.expect("a delivery task does not panic");
                    self.acknowledged(partition);
                }
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
        let key = BatchKey {
            partition: s.partition,
            stream: s.stream,
            epoch: s.epoch,
        };
        let mut entry = match self.open.entry(key) {
            Entry::Occupied(e) => e,
            Entry::Vacant(e) => e.insert_entry(OpenBatch {
                newest_recv_ms: s.recv_ms,
                events: 0,
                lines: Vec::with_capacity(s.lines.len() * 4),
                acks: Vec::new(),
                permits: Vec::new(),
            }),
        };
        let batch = entry.get_mut();
        batch.newest_recv_ms = batch.newest_recv_ms.max(s.recv_ms);
        batch.events += s.events;
        batch.lines.extend_from_slice(&s.lines);
        batch.acks.extend(s.ack);
        batch.permits.push(s.permit);
        let full = batch.events >= self.max_events || batch.lines.len() >= FLUSH_BYTES;
        let idle = self.unacked.get(&s.partition).is_none_or(|&n| n == 0);
        if full || idle {
            let (key, batch) = entry.remove_entry();
            self.send(key, batch);
        }
    }

    /// A record of `partition` was answered: if it was the last, what gathered meanwhile goes.
    fn acknowledged(&mut self, partition: i32) {
        let n = self.unacked.entry(partition).or_default();
        *n -= 1;
        if *n == 0 {
            let ready: Vec<BatchKey> = self
                .open
                .keys()
                .filter(|k| k.partition == partition)
                .cloned()
                .collect();
            for key in ready {
                let batch = self.open.remove(&key).expect("the key was just listed");
                self.send(key, batch);
            }
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
            .timestamp(batch.newest_recv_ms as i64);
        let OpenBatch {
            events,
            acks,
            permits,
            ..
        } = batch;
        let partition = key.partition;
        match self.producer.send_result(record) {
            Ok(delivery) => {
                *self.unacked.entry(partition).or_default() += 1;
                let (health, metrics) = (Arc::clone(&self.health), Arc::clone(&self.metrics));
                let sent = Instant::now();
                self.in_flight.spawn(async move {
                    let outcome = match delivery.await {
                        Ok(Ok(_)) => {
                            metrics.broker_ack(sent.elapsed());
                            Ok(())
                        }
                        Ok(Err((e, _))) => {
                            tracing::warn!(error = %e, events, "broker did not acknowledge a batch");
                            Err(GatewayError::BrokerUnavailable {
                                reason: "broker did not acknowledge, retry shortly",
                            })
                        }
                        Err(_) => Err(GatewayError::BrokerUnavailable {
                            reason: "producer stopped",
                        }),
                    };
                    if outcome.is_err() {
                        health.set_down();
                        metrics.undelivered(events as u64);
                    }
                    for ack in acks {
                        let _ = ack.send(outcome.clone());
                    }
                    // The budget is returned only now: until here these events were in memory.
                    drop(permits);
                    partition
                });
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, events, "producer refused a batch");
                self.metrics.undelivered(events as u64);
                for ack in acks {
                    let _ = ack.send(Err(GatewayError::Overloaded {
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
