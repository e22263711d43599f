//! Reading a topic straight from the broker, to check what the system published.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One record as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The record's timestamp (CreateTime: what the producer set), in Unix ms.
    pub timestamp: Option<i64>,
    pub payload: Vec<u8>,
}

/// Every record of `topic` up to its high watermarks at the time of the call, partition by
/// partition, in offset order (payloads only). Blocking: call it from `spawn_blocking`.
pub fn read_all(brokers: &str, topic: &str) -> Vec<Vec<u8>> {
    read_records(brokers, topic)
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

/// [`read_all`] with each record's partition, offset, key and timestamp.
pub fn read_records(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "emostream-e2e-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    // partition → (next offset to read, high watermark)
    let mut pending: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions().iter().map(|p| p.id()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            assignment
                .add_partition_offset(topic, p, Offset::Offset(low))
                .expect("assignment");
            pending.insert(p, (low, high));
        }
    }
    let mut records: BTreeMap<(i32, i64), Record> = BTreeMap::new();
    if pending.is_empty() {
        return Vec::new();
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending.values().any(|(next, high)| next < high) {
        assert!(
            Instant::now() < deadline,
            "reading {topic} took longer than 60 s"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                if let Some((next, high)) = pending.get_mut(&msg.partition()) {
                    if msg.offset() < *high {
                        records.insert(
                            (msg.partition(), msg.offset()),
                            Record {
                                partition: msg.partition(),
                                offset: msg.offset(),
                                key: msg.key().map(<[u8]>::to_vec),
                                timestamp: msg.timestamp().to_millis(),
                                payload: msg.payload().unwrap_or_default().to_vec(),
                            },
                        );
                    }
                    *next = (*next).max(msg.offset() + 1);
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records.into_values().collect()
}
