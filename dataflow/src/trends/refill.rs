//! Refilling the windows at start: the closed epochs a restarted cluster will not count again
//! (those up to the progress record's epoch) are read back from the epochs topic, the replayable
//! record of closed epochs, and entered into the trends stage at their own epochs, so every
//! window holds the same epochs it held before the restart.
//!
//! The read runs before the dataflow is built, on the worker's thread, so its blocking calls
//! stall nothing; [`Refill`] then only replays what was read.

use crate::error::Error;
use crate::reader;
use crate::EpochCount;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::epoch::epoch_bounds;
use emostream_protocol::wire::EpochFrame;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

const PATIENCE: Duration = Duration::from_secs(15);

/// Every (stream, epoch) of `epochs` published on `topic`, as `CountEpochs` emitted it, once
/// each (a re-published frame is byte-identical, so the first copy is kept), ordered by epoch
/// then stream.
///
/// Each partition is read from the first record stamped at or after the end of `epochs.start`
/// (a frame's timestamp is its epoch's `end_ms`) up to the end it had when the read began: the
/// epochs below the progress record's were all acknowledged before it was written, and nothing
/// publishes them again.
pub fn closed_epochs(
    kafka: &KafkaConfig,
    topic: &str,
    epochs: Range<u64>,
    window_ms: u64,
) -> Result<Vec<EpochCount>, Error> {
    if epochs.is_empty() {
        return Ok(Vec::new());
    }
    let read = |source| Error::RefillRead {
        topic: topic.to_string(),
        source,
    };
    let consumer = reader::assigned(
        kafka,
        topic,
        "trends refill reader",
        "emostream-refill",
        100,
    )?;
    let partitions = reader::partitions(&consumer, topic, PATIENCE)?;
    let from_ms = epoch_bounds(epochs.start, window_ms).1 as i64;
    let mut by_time = TopicPartitionList::new();
    for &partition in &partitions {
        by_time
            .add_partition_offset(topic, partition, Offset::Offset(from_ms))
            .map_err(read)?;
    }
    let starts = consumer
        .offsets_for_times(by_time, PATIENCE)
        .map_err(read)?;
    // partition → the offset the read must reach (its end when the read began)
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for element in starts.elements() {
        let partition = element.partition();
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, PATIENCE)
            .map_err(read)?;
        // No record stamped that late: nothing of `epochs` on this partition.
        let Offset::Offset(start) = element.offset() else {
            continue;
        };
        if start < high {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(read)?;
        }
    }
    let mut found: BTreeMap<(u64, String), EpochCount> = BTreeMap::new();
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment).map_err(read)?;
    let deadline = Instant::now() + PATIENCE;
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            return Err(Error::RefillTimeout {
                topic: topic.to_string(),
                patience: PATIENCE,
            });
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => message,
            Some(Err(source)) => return Err(read(source)),
            None => continue,
        };
        let (partition, offset) = (message.partition(), message.offset());
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
        // A record that is not a frame is not ours to read (the dataflow writes only frames).
        let Some(frame) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<EpochFrame>(p).ok())
        else {
            continue;
        };
        if epochs.contains(&frame.epoch) {
            found
                .entry((frame.epoch, frame.stream.clone()))
                .or_insert_with(|| crate::reduce::counted(frame));
        }
    }
    Ok(found.into_values().collect())
}

/// The epochs a run starting at `first_epoch` refills: the W (`window_epochs`) before the first
/// epoch whose frames it sends ([`resend_from`]), so that this one's frames say what changed
/// exactly as they did when it was first counted, and every epoch from there on.
pub fn refilled(first_epoch: u64, window_epochs: u64) -> Range<u64> {
    resend_from(first_epoch, window_epochs).saturating_sub(window_epochs)..first_epoch
}

/// The first epoch whose trend frames a run starting at `first_epoch` sends: the W before it
/// are sent again, since a crash can cut off the frames of the last recorded epochs (their
/// release trails the epochs' publication), and a frame sent twice is byte-identical. A crash
/// with the trends stage lagging more than W epochs behind the published epochs leaves frames
/// older than that unsent.
pub fn resend_from(first_epoch: u64, window_epochs: u64) -> u64 {
    first_epoch.saturating_sub(window_epochs)
}

pub trait Refill<'scope> {
    /// The counts as a stream, each at its own epoch, then nothing: the closed epochs the
    /// trends stage must hold before the first epoch this run counts.
    fn refill(&self, counts: Vec<EpochCount>) -> Stream<'scope, u64, Vec<EpochCount>>;
}

impl<'scope> Refill<'scope> for Scope<'scope, u64> {
    fn refill(&self, counts: Vec<EpochCount>) -> Stream<'scope, u64, Vec<EpochCount>> {
        source::<_, CapacityContainerBuilder<Vec<EpochCount>>, _, _>(*self, "Refill", |cap, _| {
            let mut todo = Some((cap, counts));
            move |output| {
                // Everything at the first activation; dropping the capability then lets the
                // frontier pass every refilled epoch.
                if let Some((cap, counts)) = todo.take() {
                    for count in counts {
                        output.session(&cap.delayed(&count.epoch)).give(count);
                    }
                }
            }
        })
    }
}
