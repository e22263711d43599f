//! Reading the last progress record at start. This runs before the dataflow is built, on the
//! main thread, so its blocking calls stall nothing.

use crate::error::Error;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::progress::Progress;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(15);

/// The newest record of `topic` (partition 0), or `None` when it is empty (a first start).
pub fn last_progress(kafka: &KafkaConfig, topic: &str) -> Result<Option<Progress>, Error> {
    let read = |source| Error::ProgressRead {
        topic: topic.to_string(),
        source,
    };
    let consumer: BaseConsumer =
        ClientConfig::from_iter(kafka.client_settings(ClientRole::AssignedReader {
            group: "emostream-recovery",
            fetch_wait_ms: 100,
            partition_eof: false,
        }))
        .create()
        .map_err(|source| Error::Client {
            topic: topic.to_string(),
            client: "recovery reader",
            source,
        })?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, PATIENCE)
        .map_err(read)?;
    if high <= low {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(high - 1))
        .map_err(read)?;
    consumer.assign(&assignment).map_err(read)?;
    let unreadable = |reason: String| Error::ProgressUnreadable {
        topic: topic.to_string(),
        reason,
    };
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) if msg.offset() == high - 1 => {
                let payload = msg
                    .payload()
                    .ok_or_else(|| unreadable("the record is empty".into()))?;
                return serde_json::from_slice(payload)
                    .map(Some)
                    .map_err(|e| unreadable(e.to_string()));
            }
            Some(Ok(_)) | None => {}
            Some(Err(source)) => return Err(read(source)),
        }
    }
    Err(Error::ProgressTimeout {
        topic: topic.to_string(),
        patience: PATIENCE,
    })
}
