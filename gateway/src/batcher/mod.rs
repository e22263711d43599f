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
//! Memory is bounded by the in-flight budget, one permit per byte: a request's handler reserves
//! its body's declared length before reading it and holds it until it answers; the request takes
//! the size of its encoded events before they are queued, and those permits travel with them
//! until the broker has answered for them. So neither bodies being read, the queue nor
//! librdkafka can grow past `max_in_flight_bytes`, and one client holds at most
//! `max_in_flight_bytes_per_ip` of it (`budget`).
//!
//! - `budget`: the in-flight budget and each client's share.
//! - `batches`: which batches are due when (group commit, event and byte caps), apart from I/O.
//! - `packer`: the task that sends due batches and passes each answer back to its requests.

mod batches;
mod budget;
mod packer;
#[cfg(test)]
mod tests;

use crate::metrics::Metrics;
use crate::parse::Tap;
use crate::producer::{self, Health, Kafka, FLUSH_BYTES, MAX_RECORD_LINES};
use crate::{GatewayError, StartError};
use batches::Batches;
use budget::Budget;
pub use budget::Reservation;
use emostream_protocol::config::{AckMode, CONNECTION_BYTES};
use emostream_protocol::epoch::{epoch_of, now_ms};
use emostream_protocol::wire::{Accepted, EmojiEvent};
use emostream_protocol::Config;
use packer::Packer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Records of one partition awaiting the broker at once. One: batches grow while a record is in
/// flight, so the broker sees a record per partition per round trip whatever the load. Four
/// made records of 35 taps instead of 119 and cost the broker and the gateway more CPU per
/// request (docs/benchmarks.md, Ingest).
const MAX_UNACKED_PER_PARTITION: usize = 1;

/// Requests waiting to be packed. The budget bounds events; this bounds requests (many tiny
/// ones cost the packer more than their events suggest). Full → 503 at once.
const SUBMISSION_QUEUE: usize = 65_536;

pub(super) type Ack = oneshot::Sender<Result<(), GatewayError>>;

/// One request's events, already encoded as NDJSON lines.
pub(super) struct Submission {
    pub(super) partition: i32,
    pub(super) stream: String,
    pub(super) epoch: u64,
    pub(super) recv_ms: u64,
    pub(super) events: usize,
    pub(super) lines: Vec<u8>,
    /// None in fire-and-forget mode: nobody waits.
    pub(super) ack: Option<Ack>,
    pub(super) permit: Reservation,
}

/// The request handlers' side of the batcher.
#[derive(Clone)]
pub struct BatcherHandle {
    tx: mpsc::Sender<Submission>,
    budget: Arc<Budget>,
    health: Arc<Health>,
    producer: Kafka,
    topic: String,
    mode: AckMode,
    partitions: u32,
    window_ms: u64,
    attempts: Arc<Attempts>,
}

/// Draws each keyed request's `attempt`: SipHash, keyed at random once per gateway (std seeds
/// a `RandomState` from the OS), of a counter, so numbers never repeat within a gateway and
/// two gateways' collide with odds of 2^-64 a pair.
struct Attempts {
    keys: std::hash::RandomState,
    next: std::sync::atomic::AtomicU64,
}

impl Attempts {
    fn draw(&self) -> u64 {
        use std::hash::BuildHasher;
        let n = (self.next).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.keys.hash_one(n)
    }
}

impl BatcherHandle {
    /// Hands `taps` to the producer and, in durable mode, waits for the broker's verdict.
    /// `request_id` (the client's `Idempotency-Key`) goes into every tap's record; `reserved` is
    /// what the request already holds of the in-flight budget (its body's bytes) for `client`.
    pub async fn submit(
        &self,
        client: Option<IpAddr>,
        stream: &str,
        request_id: Option<&str>,
        taps: &[Tap<'_>],
        reserved: Reservation,
    ) -> Result<Accepted, GatewayError> {
        // The packer is gone (a panic): nothing would take the taps. Checked before the
        // broker's health so the answer says why, whatever the broker does.
        if self.tx.is_closed() {
            return Err(packer::BATCHER_STOPPED);
        }
        if self.health.fatal().is_some() {
            return Err(packer::PRODUCER_FAILED);
        }
        if !self.health.reachable() {
            return Err(GatewayError::BrokerUnavailable {
                reason: "broker unreachable, retry shortly",
            });
        }
        let recv_ms = now_ms();
        let epoch = epoch_of(recv_ms, self.window_ms);
        let request = request_id.map(|key| (key, self.attempts.draw()));
        let lines = encode(stream, request, taps, recv_ms);
        // No accepted body encodes to this much (a 1 MiB body of minimal taps with the longest
        // stream and key is about 10 MiB, `the_largest_accepted_body_fits_one_record`): this
        // keeps it so, whatever the route limits become, for this request alone.
        if lines.len() > MAX_RECORD_LINES {
            return Err(GatewayError::EncodedTooLarge {
                limit: MAX_RECORD_LINES,
            });
        }
        // The budget counts the bytes held until the broker answers, whatever the taps' count:
        // a tap's encoded size varies several times over with its user id and timestamp. The
        // body's reservation covers them when it is large enough; otherwise the request takes
        // the difference, so it holds the larger of the two until the answer.
        let mut permit = reserved;
        if let Some(short) = lines.len().checked_sub(permit.bytes()) {
            permit.merge(self.reserve(client, short)?);
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
        self.tx.try_send(submission).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => GatewayError::Overloaded {
                reason: "ingest queue full, retry shortly",
            },
            mpsc::error::TrySendError::Closed(_) => packer::BATCHER_STOPPED,
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

    /// Takes `bytes` of the in-flight budget and of `client`'s share until the reservation is
    /// dropped, or refuses at once (429 over the share, 503 when the budget is full): the
    /// handlers reserve a body's bytes before reading it, the batcher its encoded records until
    /// the broker answers.
    pub fn reserve(
        &self,
        client: Option<IpAddr>,
        bytes: usize,
    ) -> Result<Reservation, GatewayError> {
        self.budget.reserve(client, bytes)
    }

    pub fn broker_reachable(&self) -> bool {
        self.health.reachable()
    }

    /// Asks the broker now: ready when it answers and the events topic exists with
    /// `events_partitions` partitions.
    pub async fn ready(&self) -> Result<(), StartError> {
        producer::topic_ready(&self.producer, &self.topic, self.partitions).await
    }

    /// The probe's last verdict (None: ready), without a broker round trip; not ready either
    /// once the packer task is gone, which no probe of the broker would see.
    pub fn not_ready(&self) -> Option<String> {
        if self.tx.is_closed() {
            return Some(producer::BATCHER_STOPPED.into());
        }
        self.health.not_ready()
    }

    /// The producer's health, apart from the handle: holding it does not keep the batcher
    /// from finishing.
    pub fn health(&self) -> ProducerHealth {
        ProducerHealth {
            health: Arc::clone(&self.health),
            producer: self.producer.clone(),
        }
    }

    /// librdkafka's out-queue length.
    pub fn producer_queue(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// (bytes holding budget now, the budget).
    pub fn in_flight(&self) -> (usize, usize) {
        self.budget.in_flight()
    }

    /// Clients holding a part of the budget now.
    pub fn budget_clients(&self) -> usize {
        self.budget.clients()
    }

    /// A request's partition follows its stream and its first tap's user, the same on every
    /// gateway (`events_partition`): a retry lands where its first attempt did.
    pub(super) fn partition_for(&self, stream: &str, user_id: &str) -> i32 {
        emostream_protocol::kafka::events_partition(stream, user_id, self.partitions)
    }
}

/// What the gateway knows of its producer, for the exit path and its test.
#[derive(Clone)]
pub struct ProducerHealth {
    health: Arc<Health>,
    producer: Kafka,
}

impl ProducerHealth {
    /// The probe's last verdict (None: ready), or the fatal error.
    pub fn not_ready(&self) -> Option<String> {
        self.health.not_ready()
    }

    /// librdkafka's fatal error, once the producer has failed for good.
    pub fn fatal(&self) -> Option<String> {
        self.health.fatal().map(str::to_string)
    }

    /// Why the batcher's packer task ended early (a panic), once it has.
    pub fn stopped(&self) -> Option<String> {
        self.health.stopped().map(str::to_string)
    }

    /// Resolves once the producer has failed for good or the batcher has stopped.
    pub async fn failed(self) {
        self.health.failed().await
    }

    /// Raises librdkafka's fatal error on this gateway's producer, through librdkafka's own
    /// test hook: the only way to see the exit path, since a broker cannot be made to fence
    /// the producer on demand.
    #[doc(hidden)]
    pub fn raise_fatal_error_for_test(&self, reason: &str) {
        producer::raise_fatal(&self.producer, reason);
    }
}

/// The task that packs submissions into records (watched: if it ends while handles remain,
/// a panic, the gateway is told to drain and exit), and the broker probe.
pub struct Batcher {
    /// Waits for the packer and records in the health why it ended early, if it did.
    task: JoinHandle<()>,
    packer: tokio::task::AbortHandle,
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
        let handle = BatcherHandle {
            tx,
            // The connections' part is set aside (`CONNECTION_BYTES` each), so idle connections
            // never take the bodies' and taps' part, nor bodies theirs.
            budget: Arc::new(Budget::new(
                config
                    .gateway
                    .max_in_flight_bytes
                    .saturating_sub(config.gateway.max_connections * CONNECTION_BYTES),
                config.gateway.max_in_flight_bytes_per_ip,
            )),
            health: Arc::clone(&health),
            producer: producer.clone(),
            topic: topic.clone(),
            mode: config.gateway.ack_mode,
            partitions: config.kafka.events_partitions,
            window_ms: config.epochs.window_ms,
            attempts: Arc::new(Attempts {
                keys: std::hash::RandomState::new(),
                next: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        let probe = producer::spawn_probe(
            producer.clone(),
            topic.clone(),
            config.kafka.events_partitions,
            Arc::clone(&health),
        );
        let packer = Packer {
            producer,
            topic,
            batches: record_batches(config.gateway.flush_max_events),
            in_flight: JoinSet::new(),
            health: Arc::clone(&health),
            metrics,
        };
        let packer = tokio::spawn(packer.run(
            rx,
            Duration::from_millis(config.gateway.flush_ms),
            config.epochs.window_ms,
        ));
        let packer_handle = packer.abort_handle();
        // The packer returns only once every handle is dropped; anything else (a panic) leaves
        // handlers that can only refuse, so the gateway must stop and be restarted.
        let task = tokio::spawn(async move {
            if let Err(e) = packer.await {
                let reason = if e.is_panic() {
                    let payload = e.into_panic();
                    let message = (payload.downcast_ref::<&str>().copied())
                        .or(payload.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("no message");
                    format!("the packer task panicked: {message}")
                } else {
                    "the packer task was cancelled".to_string()
                };
                health.set_stopped(&reason);
            }
        });
        Ok((
            Batcher {
                task,
                packer: packer_handle,
                probe,
            },
            handle,
        ))
    }

    /// The packer task, for a test to stop it as a panic would.
    #[doc(hidden)]
    pub fn packer_for_test(&self) -> tokio::task::AbortHandle {
        self.packer.clone()
    }

    /// Stops at once, before anything was submitted (the gateway refused to start).
    pub fn abort(self) {
        self.task.abort();
        self.packer.abort();
        self.probe.abort();
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

/// The batching policy the packer runs with: `flush_max_events` events or [`FLUSH_BYTES`] make a
/// batch due, and no record's lines pass [`MAX_RECORD_LINES`], so that with its key and framing
/// no record passes the producer's `message.max.bytes`.
fn record_batches(flush_max_events: usize) -> Batches {
    Batches::new(
        flush_max_events,
        FLUSH_BYTES,
        MAX_RECORD_LINES,
        MAX_UNACKED_PER_PARTITION,
    )
}

/// The NDJSON lines of one request's taps, as they go into a record: its stream and `request`
/// (its `Idempotency-Key` and attempt) are repeated on every line, so a line is several times
/// its tap's share of the body.
pub(super) fn encode(
    stream: &str,
    request: Option<(&str, u64)>,
    taps: &[Tap<'_>],
    recv_ms: u64,
) -> Vec<u8> {
    let mut lines = Vec::with_capacity(taps.len() * (96 + stream.len()));
    for tap in taps {
        let event = EmojiEvent {
            stream: Cow::Borrowed(stream),
            user_id: Cow::Borrowed(&tap.user_id),
            emoji: Cow::Borrowed(tap.emoji),
            ts: tap.ts.clone(),
            recv_ms,
            request_id: request.map(|(key, _)| Cow::Borrowed(key)),
            attempt: request.map(|(_, attempt)| attempt),
        };
        serde_json::to_writer(&mut lines, &event).expect("serializing to a Vec cannot fail");
        lines.push(b'\n');
    }
    lines
}
