//! `PublishTrends`: trends frames → the trends topic (key: the frame's stream), acknowledged.
//!
//! A frame of epoch `t` leaves only once both the epochs' published frontier and the gate have
//! passed `t`: every epoch in its window is then complete and acknowledged on the epochs topic
//! (or, for the last one the gate let out, complete and re-published byte for byte by the next
//! run), and a restart reproduces those epochs byte for byte (docs/dataflow.md), so the frame is a
//! function of published epochs only, and the restarted cluster (its windows refilled,
//! [`super::refill`]) sends the same frame again. The published frontier alone is not enough: at
//! a graceful stop it passes the epochs `PublishEpochs` dropped, which can be partial; the gate
//! never passes them. A restarted run sends again the frames of the W epochs before its first
//! (the ones a crash may have cut off, byte-identical where they went out) and drops the frames
//! of the epochs refilled only to fill their windows.
//!
//! Delivery is at least once within a run and best effort across runs: each epoch's capability is
//! held until the broker answered every frame of it, so a graceful stop waits for them; a frame
//! the broker refuses after librdkafka's retries is logged and dropped rather than crashing the
//! worker, because trends are derived, disposable data and must never stop the epochs' path. The
//! producer is the epochs' [`AckedProducer`] (idempotent, acks=all, no linger), with its own
//! books, made [`AckedProducer::best_effort`].

use crate::error::Error;
use crate::publish::AckedProducer;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::trends::TrendFrame;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseRecord;
use std::collections::BTreeMap;
use std::time::Duration;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// How often the operator looks again at unanswered frames if no delivery report woke it.
const ACK_POLL: Duration = Duration::from_millis(10);

/// The trends topic's producer: [`AckedProducer::best_effort`]. `Ok(None)` when the broker does
/// not have the topic: trends are then off for this run, with a warning, and the epochs flow as
/// before.
pub fn connect(kafka: &KafkaConfig, topic: &str) -> Result<Option<AckedProducer>, Error> {
    let producer = AckedProducer::best_effort(kafka, topic)?;
    if producer.is_none() {
        tracing::warn!(topic, "the trends topic does not exist: trends are off");
    }
    Ok(producer)
}

pub trait PublishTrends<'scope> {
    /// Publishes each epoch's trends frames once `published` (the epochs' published frontier)
    /// and `gate` (the progress writer's gate, as `PublishEpochs` sees it) have passed the
    /// epoch, and holds the epoch until the broker answered all of them. Epochs below
    /// `first_epoch` were published by an earlier run; frames of epochs below `resend_from` are
    /// dropped. The returned stream carries no data; its frontier is the first epoch whose
    /// frames are not all answered.
    fn publish_trends(
        self,
        published: Stream<'scope, u64, Vec<()>>,
        gate: Stream<'scope, u64, Vec<()>>,
        first_epoch: u64,
        resend_from: u64,
        producer: AckedProducer,
    ) -> Stream<'scope, u64, Vec<()>>;
}

impl<'scope> PublishTrends<'scope> for Stream<'scope, u64, Vec<TrendFrame>> {
    fn publish_trends(
        self,
        published: Stream<'scope, u64, Vec<()>>,
        gate: Stream<'scope, u64, Vec<()>>,
        first_epoch: u64,
        resend_from: u64,
        producer: AckedProducer,
    ) -> Stream<'scope, u64, Vec<()>> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("PublishTrends".to_owned(), scope);
        let info = builder.operator_info();
        let mut frames = builder.new_input(self, Pipeline);
        let (output, answered) = builder.new_output::<Vec<()>>();
        // Only its frontier matters: it holds no capability of this operator's output.
        let mut published = builder.new_input_connection(published, Pipeline, []);
        let mut gate = builder.new_input_connection(gate, Pipeline, []);

        builder.build(move |_initial| {
            let activator = scope.activator_for(info.address.clone());
            // Set once, by the one operator that owns this producer.
            producer.wake(scope.worker().sync_activator_for(info.address.to_vec()));
            let AckedProducer {
                producer,
                book: deliveries,
                topic,
                ..
            } = producer;
            // epoch → (its capability, frames not yet enqueued)
            let mut unsent: BTreeMap<u64, (Capability<u64>, Vec<TrendFrame>)> = BTreeMap::new();
            // Epochs below it are published: their frames may leave.
            let mut released_to = first_epoch;
            // The gate's frontier as last seen: epochs below it are complete, and published.
            let mut gate_at = first_epoch;
            // No data ever leaves on this output; its capabilities alone carry the frontier.
            let _output = output;

            move |frontiers| {
                frames.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    if *cap.time() < resend_from {
                        return; // epochs refilled only to fill the windows of later ones
                    }
                    let entry = unsent
                        .entry(*cap.time())
                        .or_insert_with(|| (cap, Vec::new()));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                published.for_each_stamp(|_, _| {});
                gate.for_each_stamp(|_, _| {});
                if let Some(&at) = frontiers[2].frontier().first() {
                    gate_at = at;
                }
                match frontiers[1].frontier().first() {
                    Some(&at) => released_to = released_to.max(at.min(gate_at)),
                    // A stop: the published frontier empties whether or not the epochs waiting
                    // at the gate went out. Those below the gate's last frontier did (or will be
                    // re-published byte for byte); the others, maybe partial, did not: their
                    // frames are dropped.
                    None => {
                        released_to = released_to.max(gate_at);
                        for (_, (_, frames)) in unsent.range_mut(released_to..) {
                            frames.clear();
                        }
                    }
                }
                let mut full = false;
                for (epoch, (_, frames)) in unsent.range_mut(..released_to) {
                    while let Some(frame) = frames.pop() {
                        let payload =
                            serde_json::to_vec(&frame).expect("a trends frame always serializes");
                        let record = BaseRecord::with_opaque_to(&topic, Box::new(*epoch))
                            .key(frame.stream().as_bytes())
                            .payload(&payload)
                            .timestamp(frame.end_ms() as i64);
                        // Counted before the send: the answer can arrive on librdkafka's thread
                        // before `send` even returns, and a lost answer would hold the epoch (and
                        // so a graceful stop) forever.
                        deliveries.sent(*epoch);
                        match producer.send(record) {
                            Ok(()) => {}
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                _,
                            )) => {
                                deliveries.unsent(*epoch);
                                frames.push(frame);
                                full = true;
                                break;
                            }
                            Err((error, _)) => {
                                deliveries.unsent(*epoch);
                                tracing::warn!(epoch, %error, "a trends frame was not enqueued");
                            }
                        }
                    }
                    if full {
                        break; // the producer's queue is full: try again shortly
                    }
                }
                // Dropping an epoch's capability says all its frames were answered.
                unsent.retain(|epoch, (_, frames)| {
                    !frames.is_empty() || !deliveries.acknowledged(*epoch)
                });
                if !unsent.is_empty() {
                    activator.activate_after(ACK_POLL);
                }
            }
        });
        answered
    }
}
