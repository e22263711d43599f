//! Closed epochs → `emoji-epochs`, exactly once across restarts.
//!
//! The operator keeps each epoch's capability until the broker has acknowledged every frame of
//! it, so its output frontier says "every epoch before this is durably published" on all workers.
//! It publishes epoch `e` only once the gate (the progress writer's frontier, fed back one epoch
//! later) says an acknowledged progress record's floor schedule reaches `e`: so at any crash at
//! most the epochs of the last record's schedule are out beyond it, and the replay rule
//! reproduces exactly those. The
//! gate never opens past the records: when the progress writer stops for good, epochs it did not
//! let through are dropped, not published.
//! No Kafka call blocks: sends only enqueue, acknowledgements arrive on librdkafka's thread and
//! wake the operator.

use crate::crash;
use crate::error::Error;
use crate::metrics::Metrics;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::epoch::now_ms;
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::wire::EpochFrame;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;

/// How often an operator waiting on the broker looks again if no callback woke it.
const ACK_POLL: Duration = Duration::from_millis(10);

/// Outstanding deliveries per epoch, shared with librdkafka's callback thread.
#[derive(Default)]
pub struct AckBook {
    state: Mutex<AckState>,
}

#[derive(Default)]
struct AckState {
    outstanding: HashMap<u64, u64>,
    failure: Option<(u64, KafkaError)>,
    /// The epoch and offset of the newest record acknowledged (the progress writer's one
    /// record in flight: where it landed).
    last: Option<(u64, i64)>,
}

impl AckBook {
    pub fn sent(&self, epoch: u64) {
        *self.lock().outstanding.entry(epoch).or_default() += 1;
    }

    fn delivered(&self, epoch: u64, result: Result<Option<i64>, KafkaError>) {
        let mut state = self.lock();
        match result {
            Ok(offset) => {
                if let Some(offset) = offset {
                    state.last = Some((epoch, offset));
                }
                if let Some(n) = state.outstanding.get_mut(&epoch) {
                    *n -= 1;
                    if *n == 0 {
                        state.outstanding.remove(&epoch);
                    }
                }
            }
            Err(e) => state.failure = Some((epoch, e)),
        }
    }

    /// Takes back a [`AckBook::sent`] whose record the producer refused.
    pub fn unsent(&self, epoch: u64) {
        self.settle(epoch);
    }

    /// One record of `epoch` is answered, whatever the outcome: for records whose loss is logged
    /// rather than fatal (trend frames).
    pub fn settle(&self, epoch: u64) {
        self.delivered(epoch, Ok(None));
    }

    /// The offset the newest acknowledged record landed at, if it was one of `epoch`.
    pub fn offset(&self, epoch: u64) -> Option<i64> {
        self.lock()
            .last
            .filter(|(e, _)| *e == epoch)
            .map(|(_, o)| o)
    }

    pub fn acknowledged(&self, epoch: u64) -> bool {
        !self.lock().outstanding.contains_key(&epoch)
    }

    /// The first delivery librdkafka gave up on, if any.
    pub fn failure(&self) -> Option<Error> {
        let (epoch, source) = self.lock().failure.clone()?;
        Some(Error::Delivery { epoch, source })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        // The callback never panics while holding the lock; a poisoned lock still has valid counts.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Delivery reports for one producer: count them in the book and wake the operator that owns
/// the producer (known only once the dataflow is built, hence the cell).
pub struct AckContext {
    book: Arc<AckBook>,
    wake: Arc<OnceLock<SyncActivator>>,
    /// A record librdkafka gave up on is logged and counted as answered (trend frames: derived,
    /// disposable data that must never stop the epochs), not kept as the book's failure.
    best_effort: bool,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: Box<u64>) {
        match result {
            Err((error, _)) if self.best_effort => {
                tracing::warn!(epoch = *epoch, %error, "a record was not delivered");
                self.book.settle(*epoch);
            }
            _ => self.book.delivered(
                *epoch,
                result
                    .as_ref()
                    .map(|m| Some(m.offset()))
                    .map_err(|(e, _)| e.clone()),
            ),
        }
        if let Some(wake) = self.wake.get() {
            // The worker may already be gone at shutdown; nothing is waiting then.
            let _ = wake.activate();
        }
    }
}

/// A producer for one topic whose every record is acknowledged by all in-sync replicas, never
/// duplicated by a retry, and sent at once (records are few and small; waiting to fill a batch
/// only adds latency), with the book of its outstanding deliveries.
pub struct AckedProducer {
    pub producer: ThreadedProducer<AckContext>,
    pub book: Arc<AckBook>,
    pub topic: String,
    wake: Arc<OnceLock<SyncActivator>>,
}

impl AckedProducer {
    /// Creates the producer and fetches the topic's metadata, so the first epoch does not pay
    /// for it. This blocks: call it before the dataflow runs, never inside an operator. A record
    /// librdkafka gives up on is the book's [`AckBook::failure`].
    pub fn connect(kafka: &KafkaConfig, topic: &str) -> Result<Self, Error> {
        Self::create(kafka, topic, false)
    }

    /// [`AckedProducer::connect`] for records whose loss is logged rather than fatal (trend
    /// frames): a record librdkafka gives up on counts as answered. `Ok(None)` when the broker
    /// does not have the topic.
    pub fn best_effort(kafka: &KafkaConfig, topic: &str) -> Result<Option<Self>, Error> {
        let producer = Self::create(kafka, topic, true)?;
        Ok((producer.partition_count(topic)? > 0).then_some(producer))
    }

    fn create(kafka: &KafkaConfig, topic: &str, best_effort: bool) -> Result<Self, Error> {
        let book = Arc::new(AckBook::default());
        let wake = Arc::new(OnceLock::new());
        let producer: ThreadedProducer<AckContext> =
            ClientConfig::from_iter(kafka.client_settings(ClientRole::EpochProducer))
                .create_with_context(AckContext {
                    book: Arc::clone(&book),
                    wake: Arc::clone(&wake),
                    best_effort,
                })
                .map_err(|source| Error::Client {
                    topic: topic.to_string(),
                    client: "producer",
                    source,
                })?;
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .map_err(|source| Error::Metadata {
                topic: topic.to_string(),
                source,
            })?;
        Ok(AckedProducer {
            producer,
            book,
            topic: topic.to_string(),
            wake,
        })
    }

    /// Refuses to start when the brokers' `topic` does not have exactly `expected` partitions:
    /// with fewer, a worker waits forever on a partition that is not there; with more, taps in
    /// the extra ones are never read; and the progress topic's newest record is the recovery
    /// state only if it has one partition.
    pub fn expect_partitions(&self, topic: &str, expected: u32) -> Result<(), Error> {
        let found = self.partition_count(topic)?;
        if found == expected as usize {
            Ok(())
        } else {
            Err(Error::Partitions {
                topic: topic.to_string(),
                found,
                expected,
            })
        }
    }

    /// How many partitions the brokers' `topic` has (0: no such topic).
    fn partition_count(&self, topic: &str) -> Result<usize, Error> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .map_err(|source| Error::Metadata {
                topic: topic.to_string(),
                source,
            })?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }

    /// Routes delivery wake-ups to the operator at `address`.
    pub fn wake(&self, activator: SyncActivator) {
        // Set once, by the one operator that owns this producer.
        let _ = self.wake.set(activator);
    }
}

pub trait PublishEpochs<'scope> {
    /// Publishes each closed epoch's frames once the gate allows, and holds the epoch until the
    /// broker acknowledged all of them. The returned stream carries no data: its frontier is the
    /// first epoch not yet durably published.
    fn publish_epochs(
        self,
        gate: Stream<'scope, u64, Vec<()>>,
        producer: AckedProducer,
        window_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Stream<'scope, u64, Vec<()>>;
}

impl<'scope> PublishEpochs<'scope> for Stream<'scope, u64, Vec<EpochFrame>> {
    fn publish_epochs(
        self,
        gate: Stream<'scope, u64, Vec<()>>,
        producer: AckedProducer,
        window_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Stream<'scope, u64, Vec<()>> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("PublishEpochs".to_owned(), scope);
        let info = builder.operator_info();
        let mut frames = builder.new_input(self, Pipeline);
        let (output, published) = builder.new_output::<Vec<()>>();
        // The gate only delays sends; it must not hold the published frontier back, or that
        // frontier (which the gate itself waits on) could only creep one epoch per round trip.
        let mut gate = builder.new_input_connection(gate, Pipeline, []);

        builder.build(move |_initial| {
            let activator = scope.activator_for(info.address.clone());
            producer.wake(scope.worker().sync_activator_for(info.address.to_vec()));
            let AckedProducer {
                producer,
                book,
                topic,
                ..
            } = producer;
            // epoch → (its capability, frames not yet sent, frames received)
            let mut waiting: BTreeMap<u64, (Capability<u64>, Vec<EpochFrame>, u64)> =
                BTreeMap::new();
            // epoch → (its capability, frames sent)
            let mut sent: BTreeMap<u64, (Capability<u64>, u64)> = BTreeMap::new();
            // The gate's frontier as last seen: epochs before it may be published.
            let mut gate_at = 0;
            // Epochs sent since the gate last moved: of the floor schedule it opened then.
            let mut sent_of_schedule = 0u64;
            // No data ever leaves on this output; its capabilities alone carry the frontier.
            let _output = output;

            move |frontiers| {
                let (frames_frontier, gate_frontier) = (&frontiers[0], &frontiers[1]);
                frames.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let time = *cap.time();
                    let entry = waiting.entry(time).or_insert_with(|| (cap, Vec::new(), 0));
                    for batch in data {
                        entry.2 += batch.len() as u64;
                        entry.1.append(batch);
                    }
                });
                gate.for_each_stamp(|_, _| {});
                if let Some(failure) = book.failure() {
                    // librdkafka gave up after its own retries. Crash: the supervisor restarts
                    // the cluster and the progress record makes the replay exact.
                    panic!("an epoch could not be published: {failure}");
                }

                match gate_frontier.frontier().first() {
                    Some(&at) => {
                        if at != gate_at {
                            sent_of_schedule = 0;
                        }
                        gate_at = at;
                    }
                    // The progress writer stopped for good (a stop): no record will ever back
                    // an epoch past its last frontier in this run, so such epochs are dropped
                    // unpublished (they can be partial: see source.rs), for the next run to
                    // count in full. With nothing in flight, this is the end of the dataflow.
                    None => {
                        let unpublished: Vec<u64> =
                            waiting.range(gate_at..).map(|(e, _)| *e).collect();
                        if !unpublished.is_empty() {
                            tracing::info!(?unpublished, "epochs left for the next run");
                            waiting.retain(|e, _| *e < gate_at);
                        }
                    }
                }
                while let Some(mut entry) = waiting.first_entry() {
                    let epoch = *entry.key();
                    if epoch >= gate_at {
                        break; // the progress record for epoch - 1 is not acknowledged yet
                    }
                    if sent_of_schedule >= 2 && epoch + 1 < gate_at && crash::held("mid-schedule") {
                        break; // a test's hold only: the schedule stays half published
                    }
                    let frames = &mut entry.get_mut().1;
                    while let Some(frame) = frames.pop() {
                        let payload =
                            serde_json::to_vec(&frame).expect("a frame always serializes");
                        let record = BaseRecord::with_opaque_to(&topic, Box::new(epoch))
                            .key(frame.stream.as_bytes())
                            .payload(&payload)
                            .timestamp(frame.end_ms as i64);
                        // Counted before the send: the acknowledgement can arrive on librdkafka's
                        // thread before `send` even returns.
                        book.sent(epoch);
                        match producer.send(record) {
                            Ok(()) if !frames.is_empty() && crash::armed("between-frames") => {
                                // A test's crash point only: the frame just sent is acknowledged
                                // first (blocking), so the crash leaves the epoch half published.
                                let _ = producer.flush(Duration::from_secs(10));
                                panic!("crash point between-frames reached (EMOSTREAM_CRASH_AT)");
                            }
                            Ok(()) => {}
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                _,
                            )) => {
                                book.unsent(epoch);
                                frames.push(frame);
                                break;
                            }
                            Err((e, _)) => panic!("cannot enqueue epoch {epoch}: {e}"),
                        }
                    }
                    if !entry.get().1.is_empty() {
                        break; // the producer's queue is full: try again shortly
                    }
                    let (_, (cap, _, frames)) = entry.remove_entry();
                    tracing::debug!(epoch, frames, "epoch sent");
                    sent.insert(epoch, (cap, frames));
                    sent_of_schedule += 1;
                }

                // Dropping an epoch's capability announces it as durably published.
                sent.retain(|epoch, (_, frames)| {
                    let keep = !book.acknowledged(*epoch) || frames_frontier.less_equal(epoch);
                    if !keep {
                        let end_ms = (epoch + 1) * window_ms;
                        metrics.published(*frames, now_ms().saturating_sub(end_ms));
                    }
                    keep
                });
                if !sent.is_empty() || !waiting.is_empty() {
                    activator.activate_after(ACK_POLL);
                }
            }
        });
        published
    }
}
