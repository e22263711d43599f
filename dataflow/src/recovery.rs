//! Reading the last progress record at start. This runs before the dataflow is built, on the
//! main thread, so its blocking calls stall nothing.

use emostream_protocol::config::KafkaConfig;
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::progress::Progress;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(15);

/// The newest record of `topic` (partition 0), or `None` when it is empty (a first start).
pub fn last_progress(kafka: &KafkaConfig, topic: &str) -> Result<Option<Progress>, String> {
    let consumer: BaseConsumer =
        ClientConfig::from_iter(kafka.client_settings(ClientRole::AssignedReader {
            group: "emostream-recovery",
            fetch_wait_ms: 100,
            partition_eof: false,
        }))
        .create()
        .map_err(|e| e.to_string())?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, PATIENCE)
        .map_err(|e| format!("{topic}: {e}"))?;
    if high <= low {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(high - 1))
        .map_err(|e: KafkaError| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) if msg.offset() == high - 1 => {
                let payload = msg.payload().ok_or("an empty progress record")?;
                return serde_json::from_slice(payload)
                    .map(Some)
                    .map_err(|e| format!("unreadable progress record: {e}"));
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
        }
    }
    Err(format!(
        "the last record of {topic} did not arrive within {PATIENCE:?}"
    ))
}
