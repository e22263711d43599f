//! Kafka topics as a test sees them: read to the end, watermarks, produce and await the
//! acknowledgement. Blocking calls: from async code, run them in `spawn_blocking`.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a metadata or watermark request may take: seconds on a loaded machine at worst.
const ASK: Duration = Duration::from_secs(10);
/// How long reading a whole topic may take: the largest a test reads is a few MB, read in
/// well under a second; a minute means the broker is not answering.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// One record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The record's timestamp (CreateTime as the tiers write it), in Unix ms.
    pub timestamp_ms: Option<i64>,
}

fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "emostream-testkit-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer")
}

/// Each partition of `topic` → (low, high) watermark.
pub fn watermarks(brokers: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    watermarks_with(&reader(brokers), topic)
}

fn watermarks_with(consumer: &BaseConsumer, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let metadata = consumer
        .fetch_metadata(Some(topic), ASK)
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let marks = consumer
                .fetch_watermarks(topic, p.id(), ASK)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{}: {e}", p.id()));
            (p.id(), marks)
        })
        .collect()
}

/// Calls `visit` on every record of `topic` up to the high watermarks at the time of the call,
/// each partition in offset order (partitions interleaved). Nothing is kept: this reads topics
/// larger than memory.
pub fn for_each_record(brokers: &str, topic: &str, mut visit: impl FnMut(&BorrowedMessage<'_>)) {
    let consumer = reader(brokers);
    // partition → (next offset to read, high watermark)
    let mut pending: BTreeMap<i32, (i64, i64)> = watermarks_with(&consumer, topic)
        .into_iter()
        .filter(|(_, (low, high))| high > low)
        .collect();
    if pending.is_empty() {
        return;
    }
    let mut assignment = TopicPartitionList::new();
    for (p, (low, _)) in &pending {
        assignment
            .add_partition_offset(topic, *p, Offset::Offset(*low))
            .expect("an assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + READ_LIMIT;
    while pending.values().any(|(next, high)| next < high) {
        assert!(
            Instant::now() < deadline,
            "reading {topic} took longer than {READ_LIMIT:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                if let Some((next, high)) = pending.get_mut(&msg.partition()) {
                    if msg.offset() < *high && msg.offset() >= *next {
                        visit(&msg);
                    }
                    *next = (*next).max(msg.offset() + 1);
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
}

/// Every record of `topic` up to its high watermarks at the time of the call, by partition,
/// then offset.
pub fn read_to_end(brokers: &str, topic: &str) -> Vec<Record> {
    let mut records = Vec::new();
    for_each_record(brokers, topic, |m| {
        records.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            timestamp_ms: m.timestamp().to_millis(),
        })
    });
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// The payloads of [`read_to_end`].
pub fn payloads(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
    read_to_end(brokers, topic)
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

/// An idempotent, acks=all producer, as the tiers write.
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("a producer")
}

/// Sends `record` and waits for the broker's acknowledgement (10 s at most, far above a
/// loopback broker's milliseconds); returns its (partition, offset).
pub async fn send<K, P>(producer: &FutureProducer, record: FutureRecord<'_, K, P>) -> (i32, i64)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let topic = record.topic.to_string();
    let delivered = producer
        .send(record, Timeout::After(ASK))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    (delivered.partition, delivered.offset)
}
