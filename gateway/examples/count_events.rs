//! Counts the emojis that landed on the events topic, for `scripts/bench_ingest.sh`: reads every
//! partition to its high watermark and sums the event lines of the records whose key is
//! `--stream`. Counting in Kafka, not from the HTTP replies, is the point. Prints
//! `events records first_ms last_ms`, the last two being the least and greatest record
//! timestamps (the gateway's receive time of each batch's newest event).
//!
//! `count_events --brokers 127.0.0.1:9092 --topic emoji-events --stream s`

use emostream_testkit::topic;
use rdkafka::Message;
use std::collections::HashMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        args.insert(k.trim_start_matches("--").to_string(), v);
    }
    let arg = |k: &str| args.get(k).cloned().ok_or(format!("--{k} is required"));
    let (brokers, topic, stream) = (arg("brokers")?, arg("topic")?, arg("stream")?);

    let (mut events, mut records, mut first_ms, mut last_ms) = (0u64, 0u64, i64::MAX, 0i64);
    // Only up to the high watermarks read at the start: that is the snapshot being counted.
    topic::for_each_record(&brokers, &topic, |message| {
        if message.key() == Some(stream.as_bytes()) {
            let ts = message.timestamp().to_millis().unwrap_or(0);
            let payload = message.payload().unwrap_or_default();
            events += payload.iter().filter(|&&b| b == b'\n').count() as u64;
            records += 1;
            first_ms = first_ms.min(ts);
            last_ms = last_ms.max(ts);
        }
    });
    println!("{events} {records} {first_ms} {last_ms}");
    Ok(())
}
