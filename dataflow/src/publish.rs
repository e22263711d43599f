//! Closed epochs → `emoji-epochs`. The sink operator only hands frames to an outbox; the worker
//! loop moves them into librdkafka's queue between steps, so no Kafka call ever runs inside an
//! operator and a full producer queue delays publication instead of blocking the worker.

use emostream_protocol::wire::EpochFrame;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

/// Frames waiting for the producer, shared by the sink operator and the worker loop of one
/// worker thread (hence `Rc<RefCell>`, never shared across threads).
pub type Outbox = Rc<RefCell<VecDeque<EpochFrame>>>;

pub trait PublishEpochs {
    /// Queues every frame in `outbox`, in the order epochs close.
    fn publish_to(self, outbox: Outbox);
}

impl PublishEpochs for Stream<'_, u64, Vec<EpochFrame>> {
    fn publish_to(self, outbox: Outbox) {
        self.sink(Pipeline, "PublishEpochs", move |(input, _frontier)| {
            input.for_each_stamp(|_stamp, data| {
                let mut outbox = outbox.borrow_mut();
                for batch in data {
                    outbox.extend(batch.drain(..));
                }
            });
        });
    }
}

/// Logs records the broker refused; librdkafka already retried them.
pub struct DeliveryLog;

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "an epoch was not published");
        }
    }
}

/// The worker's producer for `emoji-epochs`.
pub struct Publisher {
    producer: ThreadedProducer<DeliveryLog>,
    topic: String,
    outbox: Outbox,
}

impl Publisher {
    pub fn new(
        brokers: &str,
        topic: &str,
        outbox: Outbox,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // An epoch must not be lost or written twice by a retry.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Epochs are small and few; send each at once rather than waiting to fill a batch.
            .set("linger.ms", "0")
            .create_with_context(DeliveryLog)?;
        Ok(Publisher {
            producer,
            topic: topic.to_string(),
            outbox,
        })
    }

    /// Moves queued frames into librdkafka's queue; stops at the first full-queue refusal and
    /// keeps the rest for the next call.
    pub fn pump(&self) {
        let mut outbox = self.outbox.borrow_mut();
        while let Some(frame) = outbox.pop_front() {
            let payload = serde_json::to_vec(&frame).expect("a frame always serializes");
            let record = BaseRecord::to(&self.topic)
                .key(frame.stream.as_bytes())
                .payload(&payload)
                .timestamp(frame.end_ms as i64);
            if let Err((e, _)) = self.producer.send(record) {
                tracing::warn!(error = %e, epoch = frame.epoch, "producer queue full, will retry");
                outbox.push_front(frame);
                break;
            }
        }
    }

    /// At shutdown: waits for the broker to acknowledge every published epoch.
    pub fn flush(&self) {
        self.pump();
        if let Err(e) = self.producer.flush(Duration::from_secs(30)) {
            tracing::error!(error = %e, "epochs not acknowledged at shutdown");
        }
    }
}
