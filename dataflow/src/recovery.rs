//! Reading the last progress record at start, and refusing it when the configuration changed
//! under it. This runs before the dataflow is built, on the main thread, so its blocking calls
//! stall nothing.

use crate::error::Error;
use crate::reader;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::progress::{Counting, Progress};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(15);
/// How many of the newest records are read to find the chain's end. A lost race leaves one
/// record off the chain right behind the winner's, so a few would do; 64 costs nothing.
const TAIL: i64 = 64;

/// The newest record of the chain, and its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub offset: i64,
    pub progress: Progress,
}

/// The newest record on the chain of `topic` (partition 0), or `None` when the topic is empty
/// (a first start).
pub fn last_progress(kafka: &KafkaConfig, topic: &str) -> Result<Option<Recovered>, Error> {
    let read = |source| Error::ProgressRead {
        topic: topic.to_string(),
        source,
    };
    let consumer = reader::assigned(kafka, topic, "recovery reader", "emostream-recovery", 100)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, PATIENCE)
        .map_err(read)?;
    if high <= low {
        // Empty after records were written: retention, DeleteRecords or a recreated topic with
        // offsets kept took the cluster's memory.
        return match high {
            0 => Ok(None),
            _ => Err(Error::ProgressLost {
                what: format!("every record of {topic} is deleted (offsets below {high})"),
            }),
        };
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(low.max(high - TAIL)))
        .map_err(read)?;
    consumer.assign(&assignment).map_err(read)?;
    let unreadable = |offset: i64, reason: String| Error::ProgressUnreadable {
        topic: topic.to_string(),
        reason: format!("offset {offset}: {reason}"),
    };
    let mut records = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                let offset = msg.offset();
                let payload = msg
                    .payload()
                    .ok_or_else(|| unreadable(offset, "the record is empty".into()))?;
                let progress: Progress = serde_json::from_slice(payload)
                    .map_err(|e| unreadable(offset, e.to_string()))?;
                records.push((offset, progress));
                if offset == high - 1 {
                    return Ok(newest_on_chain(records));
                }
            }
            None => {}
            Some(Err(source)) => return Err(read(source)),
        }
    }
    Err(Error::ProgressTimeout {
        topic: topic.to_string(),
        patience: PATIENCE,
    })
}

/// Of `records` (a tail of the topic, in offset order), the newest on the chain: a record is
/// off it when an earlier record already continued the one it follows (it lost the race), or
/// when it follows a record off the chain, or when its epoch is not above the newest on the
/// chain before it (the chain's epochs strictly increase: a loser's record that follows one
/// before the tail, landing long after its race, is not taken for the chain's end). A record
/// following one before the tail, or naming none (written before records named one), is
/// otherwise taken to be on it.
pub fn newest_on_chain(records: Vec<(i64, Progress)>) -> Option<Recovered> {
    let first = records.first()?.0;
    let mut continued = HashSet::new();
    let mut on_chain = HashSet::new();
    let mut newest: Option<Recovered> = None;
    for (offset, progress) in records {
        let later = newest
            .as_ref()
            .is_none_or(|n| progress.epoch > n.progress.epoch);
        let on = later
            && match progress.follows {
                None => true,
                Some(follows) => {
                    (follows < first || on_chain.contains(&follows)) && continued.insert(follows)
                }
            };
        if on {
            on_chain.insert(offset);
            newest = Some(Recovered { offset, progress });
        }
    }
    newest
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
                    later_holds: Vec::new(),
                })
                .collect(),
            follows: None,
            run: None,
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
            "a recent record of emoji-progress is not a progress record: it lists partitions \
             [0, 2], not 0 to 1"
        );
    }

    fn link(epoch: u64, follows: Option<i64>) -> Progress {
        Progress {
            epoch,
            follows,
            ..record(&[0], None)
        }
    }

    fn newest(records: &[(i64, u64, Option<i64>)]) -> Option<(i64, u64)> {
        newest_on_chain(
            records
                .iter()
                .map(|&(offset, epoch, follows)| (offset, link(epoch, follows)))
                .collect(),
        )
        .map(|r| (r.offset, r.progress.epoch))
    }

    #[test]
    fn the_newest_record_on_the_chain_is_recovered() {
        use emostream_protocol::progress::FIRST;
        assert_eq!(newest(&[]), None, "an empty topic");
        assert_eq!(
            newest(&[(0, 3, Some(FIRST)), (1, 4, Some(0)), (2, 5, Some(1))]),
            Some((2, 5)),
            "one cluster"
        );
        // A second cluster's record (3) follows 1 like the first cluster's (2), landing after it.
        assert_eq!(
            newest(&[
                (0, 3, Some(FIRST)),
                (1, 4, Some(0)),
                (2, 5, Some(1)),
                (3, 5, Some(1))
            ]),
            Some((2, 5)),
            "the loser's record, newest in the log, is off the chain"
        );
        assert_eq!(
            newest(&[
                (1, 4, Some(0)),
                (2, 5, Some(1)),
                (3, 5, Some(1)),
                (4, 6, Some(2))
            ]),
            Some((4, 6)),
            "the winner carries on after the loser's record"
        );
        assert_eq!(
            newest(&[
                (1, 4, Some(0)),
                (2, 5, Some(1)),
                (3, 5, Some(1)),
                (4, 6, Some(3))
            ]),
            Some((2, 5)),
            "a record continuing one off the chain is off it too"
        );
        assert_eq!(
            newest(&[(0, 3, Some(FIRST)), (1, 3, Some(FIRST))]),
            Some((0, 3)),
            "two clusters starting on an empty topic: the first record wins"
        );
        assert_eq!(
            newest(&[
                (7, 2, None),
                (8, 3, None),
                (9, 4, Some(8)),
                (10, 4, Some(8))
            ]),
            Some((9, 4)),
            "records from before `follows` are all on the chain"
        );
        assert_eq!(
            newest(&[(70, 9, Some(12)), (71, 10, Some(70))]),
            Some((71, 10)),
            "the tail starts after the record its first one follows"
        );
        // A loser stalled for over a tail's worth of records: its record follows one before
        // the tail, so only its epoch tells it from the chain's end.
        assert_eq!(
            newest(&[
                (100, 50, Some(99)),
                (101, 51, Some(100)),
                (102, 40, Some(12)),
                (103, 51, Some(12))
            ]),
            Some((101, 51)),
            "a record whose epoch is not above the chain's is off it"
        );
    }
}
