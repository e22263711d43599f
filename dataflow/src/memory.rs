//! The cluster's memory is the progress topic: its newest record says where every partition
//! resumes and how the epoch after it is replayed. Lose that record and a restart starts every
//! partition afresh, counts retained events again and re-publishes epochs with other contents.
//! So before anything is counted, worker 0 checks that the memory cannot be lost and was not:
//!
//! - the progress topic has no deleting retention ([`protect`]; created so if missing);
//! - `emoji-epochs` holds no epoch newer than the one after the newest record
//!   ([`check_published`]): an emptied or truncated progress topic beside published epochs;
//! - every events partition still holds the records from its resume offset on, and has not
//!   ended below it: deleted and made again, its offsets name other records
//!   ([`check_events_retained`]).
//!
//! A failed check is a refusal ([`emostream_protocol::exit::REFUSED`]): restarting cannot fix it, an
//! operator must. But for an events partition ending below its resume offset, which a broker
//! may report for a moment after a leader change: that exits to be restarted, and says what
//! it means if it persists. Like recovery, this runs on the main thread before the dataflow is
//! built.

use crate::error::Error;
use crate::reader;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::progress::Progress;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(15);
/// How long an events partition that ends below its resume offset is asked again.
const BEHIND_PATIENCE: Duration = Duration::from_secs(2);
/// The newest records read from each partition of the epochs topic. Within a run no frame of an
/// epoch lands after a frame of a later one in the same partition (an epoch is let out only
/// once every frame before it is acknowledged), so the newest few hold the newest epoch.
const TAIL: i64 = 64;

/// The settings that keep every record of the progress topic, as it is created.
pub const KEEP_EVERYTHING: [(&str, &str); 2] = [("retention.ms", "-1"), ("retention.bytes", "-1")];

/// Creates the progress topic (one partition, [`KEEP_EVERYTHING`]) if the brokers do not have
/// it, and refuses one whose settings let the broker delete records.
pub fn protect(kafka: &KafkaConfig) -> Result<(), Error> {
    let topic = kafka.progress_topic.as_str();
    let admin_error = |source| Error::Admin {
        topic: topic.to_string(),
        source,
    };
    let admin_code = |code| admin_error(KafkaError::AdminOp(code));
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::from_iter(kafka.client_settings(ClientRole::EpochProducer))
            .create()
            .map_err(|source| Error::Client {
                topic: topic.to_string(),
                client: "admin client",
                source,
            })?;
    // The admin client answers through futures; a runtime of this thread alone drives them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds without I/O");
    let options = AdminOptions::new().request_timeout(Some(PATIENCE));
    // By the list of every topic: asking for one by name may create it with the broker's
    // defaults, and rdkafka reports DescribeConfigs of a missing topic as an empty success.
    let exists = admin
        .inner()
        .fetch_metadata(None, PATIENCE)
        .map_err(|source| Error::Metadata {
            topic: topic.to_string(),
            source,
        })?
        .topics()
        .iter()
        .any(|t| t.name() == topic);
    if !exists {
        let new = KEEP_EVERYTHING.iter().fold(
            // The broker's default replication factor (-1: Kafka 2.4 and later, and Nisshi).
            NewTopic::new(topic, 1, TopicReplication::Fixed(-1)),
            |new, (key, value)| new.set(key, value),
        );
        let created = runtime
            .block_on(admin.create_topics([&new], &options))
            .map_err(admin_error)?;
        match created.into_iter().next() {
            Some(Ok(_)) => tracing::info!(topic, "progress topic created, keeping every record"),
            // Another process created it meanwhile: what it made is checked below.
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
            Some(Err((_, code))) => return Err(admin_code(code)),
            None => return Err(admin_code(RDKafkaErrorCode::Fail)),
        }
    }
    let described = runtime
        .block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options))
        .map_err(admin_error)?;
    let resource = match described.into_iter().next() {
        Some(Ok(resource)) => resource,
        Some(Err(code)) => return Err(admin_code(code)),
        None => return Err(admin_code(RDKafkaErrorCode::Fail)),
    };
    let settings: BTreeMap<&str, Option<&str>> = resource
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    match deletes(&settings) {
        Some(reason) => Err(Error::ProgressRetention {
            topic: topic.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why a topic with these settings (as DescribeConfigs reported them) can delete records, or
/// `None`. Kafka reports every setting, defaults included; Nisshi reports only those set on the
/// topic. So an absent `retention.ms` is the broker's default (7 days on both), which deletes;
/// an absent `retention.bytes` is Nisshi's, which is no limit (Kafka would have reported -1).
pub fn deletes(settings: &BTreeMap<&str, Option<&str>>) -> Option<String> {
    let set = |key: &str| settings.get(key).copied().flatten();
    if let Some(policy) = set("cleanup.policy").filter(|p| p.contains("compact")) {
        return Some(format!(
            "cleanup.policy is {policy}: compaction removes records"
        ));
    }
    let limited = |value: &str| value.trim().parse::<i64>().map_or(true, |v| v >= 0);
    match set("retention.ms") {
        None => {
            return Some(
                "retention.ms is not set on it, so the broker's default (7 days on Kafka and \
                 Nisshi) deletes its records"
                    .to_string(),
            )
        }
        Some(ms) if limited(ms) => return Some(format!("retention.ms is {ms}")),
        Some(_) => {}
    }
    match set("retention.bytes") {
        Some(bytes) if limited(bytes) => Some(format!("retention.bytes is {bytes}")),
        _ => None,
    }
}

/// The newest epoch in a frame on `topic`, or `None` when it holds none.
pub fn newest_published(kafka: &KafkaConfig, topic: &str) -> Result<Option<u64>, Error> {
    let read = |source| Error::EpochsRead {
        topic: topic.to_string(),
        source,
    };
    let consumer = reader::assigned(
        kafka,
        topic,
        "published epochs reader",
        "emostream-recovery",
        100,
    )?;
    let partitions = reader::partitions(&consumer, topic, PATIENCE)?;
    // partition → the last offset to read (its newest record when the read began)
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, PATIENCE)
            .map_err(read)?;
        if high > low {
            last.insert(partition, high - 1);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low.max(high - TAIL)))
                .map_err(read)?;
        }
    }
    if last.is_empty() {
        return Ok(None);
    }
    consumer.assign(&assignment).map_err(read)?;
    #[derive(serde::Deserialize)]
    struct Stamped {
        epoch: u64,
    }
    let mut newest = None;
    let deadline = Instant::now() + PATIENCE;
    while !last.is_empty() {
        if Instant::now() >= deadline {
            return Err(Error::ProgressTimeout {
                topic: topic.to_string(),
                patience: PATIENCE,
            });
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => message,
            Some(Err(source)) => return Err(read(source)),
            None => continue,
        };
        if last.get(&message.partition()) <= Some(&message.offset()) {
            last.remove(&message.partition());
        }
        // A record that is not a frame is not ours (the dataflow writes only frames there).
        if let Some(frame) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Stamped>(p).ok())
        {
            newest = newest.max(Some(frame.epoch));
        }
    }
    Ok(newest)
}

/// Refuses to start when `published` (the newest epoch on the epochs topic) is beyond what the
/// newest progress record can reproduce: the epochs of its floor schedule may be out (the gate
/// lets them through before their own record), nothing later.
pub fn check_published(
    recovered: Option<&Progress>,
    published: Option<u64>,
    progress: &str,
    epochs: &str,
) -> Result<(), Error> {
    let Some(published) = published else {
        return Ok(());
    };
    let what = match recovered {
        None => {
            format!("{epochs} holds epoch {published}, but {progress} holds no progress record")
        }
        Some(p) if published > p.last_reproducible() => format!(
            "{epochs} holds epoch {published}, but the newest progress record on {progress} is \
             for epoch {} and reproduces epochs up to {}: the records after it are gone",
            p.epoch,
            p.last_reproducible()
        ),
        Some(_) => return Ok(()),
    };
    Err(Error::ProgressLost { what })
}

/// Refuses to start when a partition of the events topic no longer holds its resume offset:
/// the events from there to its log start are needed by epochs not yet published, and gone.
/// Or when it ends below the resume offset: the topic was deleted and made again (or its log
/// truncated), and its offsets no longer name the records the progress record counted, so the
/// replay would skip new taps as counted ones. A new leader answers with an error rather than a
/// high watermark it has not caught up on (KIP-207), but older brokers may not: a partition
/// that ends below is asked again for [`BEHIND_PATIENCE`], and the refusal exits to be
/// restarted ([`Error::exit_status`]).
pub fn check_events_retained(kafka: &KafkaConfig, progress: &Progress) -> Result<(), Error> {
    let topic = &kafka.events_topic;
    let consumer = reader::assigned(
        kafka,
        topic,
        "events watermark reader",
        "emostream-recovery",
        100,
    )?;
    let watermarks = |partition| {
        consumer
            .fetch_watermarks(topic, partition, PATIENCE)
            .map_err(|source| Error::EventsRead {
                topic: topic.to_string(),
                source,
            })
    };
    for p in &progress.partitions {
        let (mut low, mut high) = watermarks(p.partition)?;
        let asked = Instant::now();
        while high < p.resume_offset && asked.elapsed() < BEHIND_PATIENCE {
            std::thread::sleep(Duration::from_millis(250));
            (low, high) = watermarks(p.partition)?;
        }
        if high < p.resume_offset {
            return Err(Error::EventsBehind {
                topic: topic.to_string(),
                partition: p.partition,
                resume: p.resume_offset,
                high,
            });
        }
        if p.resume_offset < low {
            return Err(Error::EventsDeleted {
                topic: topic.to_string(),
                partition: p.partition,
                resume: p.resume_offset,
                low,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_topic_that_keeps_every_record_is_accepted() {
        type Settings = &'static [(&'static str, &'static str)];
        let cases: [(Settings, Option<&str>); 9] = [
            (&KEEP_EVERYTHING, None),
            (&[("retention.ms", "-1")], None),
            (
                &[("retention.ms", "-1"), ("cleanup.policy", "delete")],
                None,
            ),
            (&[("retention.ms", " -1 "), ("retention.bytes", "-5")], None),
            (
                &[],
                Some(
                    "retention.ms is not set on it, so the broker's default (7 days on Kafka and \
                     Nisshi) deletes its records",
                ),
            ),
            (
                &[("retention.ms", "86400000"), ("retention.bytes", "-1")],
                Some("retention.ms is 86400000"),
            ),
            (
                &[("retention.ms", "-1"), ("retention.bytes", "1073741824")],
                Some("retention.bytes is 1073741824"),
            ),
            (
                &[("retention.ms", "-1"), ("cleanup.policy", "compact,delete")],
                Some("cleanup.policy is compact,delete: compaction removes records"),
            ),
            (
                &[("retention.ms", "forever")],
                Some("retention.ms is forever"),
            ),
        ];
        for (settings, want) in cases {
            let settings = settings.iter().map(|(k, v)| (*k, Some(*v))).collect();
            assert_eq!(deletes(&settings).as_deref(), want, "{settings:?}");
        }
    }

    #[test]
    fn published_epochs_beyond_the_record_after_the_newest_are_refused() {
        let record = |epoch| Progress {
            epoch,
            counting: None,
            partitions: Vec::new(),
            follows: None,
            run: None,
        };
        let check = |recovered: Option<u64>, published| {
            check_published(
                recovered.map(record).as_ref(),
                published,
                "emoji-progress",
                "emoji-epochs",
            )
            .map_err(|e| e.to_string())
        };
        assert_eq!(check(None, None), Ok(()), "a first start");
        assert_eq!(check(Some(9), None), Ok(()), "the epochs topic emptied");
        assert_eq!(check(Some(9), Some(3)), Ok(()));
        assert_eq!(check(Some(9), Some(9)), Ok(()));
        assert_eq!(
            check(Some(9), Some(10)),
            Ok(()),
            "the gate lets one out ahead"
        );
        let refusal = |what: &str| {
            Err(format!(
                "refusing to start: {what}. Counting now would count retained events again and \
                 re-publish epochs with other contents. Restore the progress topic's records, or \
                 start over on new progress and epochs topics (docs/operations.md, \"The progress \
                 topic\")"
            ))
        };
        assert_eq!(
            check(Some(9), Some(11)),
            refusal(
                "emoji-epochs holds epoch 11, but the newest progress record on emoji-progress \
                 is for epoch 9 and reproduces epochs up to 10: the records after it are gone"
            )
        );
        // A record whose floor schedule lets three epochs out.
        let scheduled = Progress {
            partitions: vec![emostream_protocol::progress::PartitionProgress {
                partition: 0,
                resume_offset: 0,
                skip_before: 0,
                hold_until: 0,
                later_holds: vec![4, 7],
            }],
            ..record(9)
        };
        let scheduled = |published| {
            check_published(Some(&scheduled), Some(published), "p", "e").map_err(|e| e.to_string())
        };
        assert_eq!(scheduled(12), Ok(()), "the schedule's epochs may be out");
        assert!(scheduled(13).is_err(), "beyond the schedule");
        assert_eq!(
            check(None, Some(11)),
            refusal("emoji-epochs holds epoch 11, but emoji-progress holds no progress record")
        );
    }
}
