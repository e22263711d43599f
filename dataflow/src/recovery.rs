//! Reading the last progress record at start, and refusing it when the configuration changed
//! under it. This runs before the dataflow is built, on the main thread, so its blocking calls
//! stall nothing.

use crate::error::Error;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::progress::{Counting, Progress};
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

/// Refuses a progress record written with other settings than `counting`: the window and the
/// divisor decide which epoch a tap is in and what it publishes, and the partition list is what
/// the replay rule holds every partition to. A record written before the settings were recorded
/// is accepted with any window and divisor; its partition list still tells the partition count.
/// (Partitions added to the events topic are refused rather than started fresh: their records
/// would land in epochs that may already be published.)
pub fn check(progress: &Progress, counting: Counting, topic: &str) -> Result<(), Error> {
    let changed = |setting, recorded: u64, configured: u64| {
        (recorded != configured).then(|| Error::SettingChanged {
            topic: topic.to_string(),
            setting,
            recorded,
            configured,
        })
    };
    let listed: Vec<i32> = progress.partitions.iter().map(|p| p.partition).collect();
    let mut mismatches = vec![changed(
        "kafka.events_partitions",
        listed.len() as u64,
        counting.events_partitions.into(),
    )];
    if mismatches[0].is_none() && !listed.iter().copied().eq(0..listed.len() as i32) {
        return Err(Error::ProgressUnreadable {
            topic: topic.to_string(),
            reason: format!(
                "it lists partitions {listed:?}, not 0 to {}",
                listed.len() - 1
            ),
        });
    }
    if let Some(recorded) = progress.counting {
        mismatches.extend([
            changed("epochs.window_ms", recorded.window_ms, counting.window_ms),
            changed("epochs.divisor", recorded.divisor, counting.divisor),
            changed(
                "kafka.events_partitions",
                recorded.events_partitions.into(),
                counting.events_partitions.into(),
            ),
        ]);
    }
    match mismatches.into_iter().flatten().next() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emostream_protocol::progress::PartitionProgress;

    const TOPIC: &str = "emoji-progress";

    fn record(partitions: &[i32], counting: Option<Counting>) -> Progress {
        Progress {
            epoch: 7,
            counting,
            partitions: partitions
                .iter()
                .map(|&partition| PartitionProgress {
                    partition,
                    resume_offset: 0,
                    skip_before: 0,
                    hold_until: 0,
                })
                .collect(),
        }
    }

    fn counting(window_ms: u64, divisor: u64, events_partitions: u32) -> Counting {
        Counting {
            window_ms,
            divisor,
            events_partitions,
        }
    }

    #[test]
    fn a_record_of_other_settings_is_refused_naming_the_setting() {
        let configured = counting(2000, 1000, 2);
        let recorded = |c| record(&[0, 1], Some(c));
        assert!(check(&recorded(configured), configured, TOPIC).is_ok());
        let cases = [
            (
                recorded(counting(1000, 1000, 2)),
                "epochs.window_ms is 2000, but the epochs recorded on emoji-progress were counted \
                 with 1000: restarting with another value would renumber or recount epochs \
                 already published. Restore epochs.window_ms = 1000, or start on new progress \
                 and epochs topics",
            ),
            (
                recorded(counting(2000, 100, 2)),
                "epochs.divisor is 1000, but the epochs recorded on emoji-progress were counted \
                 with 100: restarting with another value would renumber or recount epochs \
                 already published. Restore epochs.divisor = 100, or start on new progress and \
                 epochs topics",
            ),
            (
                record(&[0, 1, 2], Some(counting(2000, 1000, 3))),
                "kafka.events_partitions is 2, but the epochs recorded on emoji-progress were \
                 counted with 3: restarting with another value would renumber or recount epochs \
                 already published. Restore kafka.events_partitions = 3, or start on new \
                 progress and epochs topics",
            ),
        ];
        for (progress, message) in cases {
            let error = check(&progress, configured, TOPIC).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
    }

    /// A record written before the settings were recorded: window and divisor unknown, accepted;
    /// its partition list still tells the partition count.
    #[test]
    fn an_older_record_is_checked_by_its_partition_list() {
        let configured = counting(2000, 1000, 2);
        assert!(check(&record(&[0, 1], None), configured, TOPIC).is_ok());
        assert!(check(&record(&[0, 1], None), counting(500, 7, 2), TOPIC).is_ok());
        let added = check(&record(&[0, 1], None), counting(2000, 1000, 4), TOPIC).unwrap_err();
        assert!(
            matches!(
                added,
                Error::SettingChanged {
                    setting: "kafka.events_partitions",
                    recorded: 2,
                    configured: 4,
                    ..
                }
            ),
            "{added}"
        );
        let odd = check(&record(&[0, 2], None), configured, TOPIC).unwrap_err();
        assert_eq!(
            odd.to_string(),
            "the last record of emoji-progress is not a progress record: it lists partitions \
             [0, 2], not 0 to 1"
        );
    }
}
