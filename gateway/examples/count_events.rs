//! Counts the emojis that landed on the events topic, for `scripts/bench_ingest.sh`: reads every
//! partition to its high watermark and sums the event lines of the records whose key is
//! `--stream`. Counting in Kafka, not from the HTTP replies, is the point. Prints
//! `events records first_ms last_ms`, the last two being the least and greatest record
//! timestamps (the gateway's receive time of each batch's first event).
//!
//! `count_events --brokers 127.0.0.1:9092 --topic emoji-events --partitions 4 --stream s`

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        args.insert(k.trim_start_matches("--").to_string(), v);
    }
    let arg = |k: &str| args.get(k).cloned().ok_or(format!("--{k} is required"));
    let (brokers, topic, stream) = (arg("brokers")?, arg("topic")?, arg("stream")?);
    let partitions: i32 = arg("partitions")?.parse()?;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "emostream-bench-count")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
        if high > 0 {
            assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
            remaining.insert(p, high);
        }
    }
    let (mut events, mut records, mut first_ms, mut last_ms) = (0u64, 0u64, i64::MAX, 0i64);
    if !remaining.is_empty() {
        consumer.assign(&assignment)?;
    }
    while !remaining.is_empty() {
        let Some(message) = consumer.poll(Duration::from_secs(10)) else {
            return Err("no record for 10 s before the high watermark".into());
        };
        let message = message?;
        // Only up to the high watermark read at the start: that is the snapshot being counted.
        let Some(&high) = remaining.get(&message.partition()) else {
            continue;
        };
        if message.offset() >= high {
            remaining.remove(&message.partition());
            continue;
        }
        let ts = message.timestamp().to_millis().unwrap_or(0);
        if message.key() == Some(stream.as_bytes()) {
            let payload = message.payload().unwrap_or_default();
            events += payload.iter().filter(|&&b| b == b'\n').count() as u64;
            records += 1;
            first_ms = first_ms.min(ts);
            last_ms = last_ms.max(ts);
        }
        if message.offset() + 1 >= high {
            remaining.remove(&message.partition());
        }
    }
    println!("{events} {records} {first_ms} {last_ms}");
    Ok(())
}
