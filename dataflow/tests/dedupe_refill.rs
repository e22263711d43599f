//! Refilling the idempotency keys at start, against a real broker: the records from the first
//! one stamped a horizon before the record just below the resume offset (found by timestamp, a
//! late-stamped record included) up to the resume offset are remembered, nothing from the
//! resume offset on, and a copy of a remembered request read after the restart is a repeat.

use emostream_dataflow::dedupe::{refill, Verdict};
use emostream_protocol::wire::EmojiEvent;
use emostream_protocol::Config;
use emostream_testkit::broker::minimal_config_with;
use emostream_testkit::{topic, Broker, Scratch};
use rdkafka::producer::FutureRecord;

const HORIZON_MS: u64 = 20_000;

/// Appends a record of one tap of `user` with `key` sent by `attempt` to partition 0, stamped
/// `timestamp_ms`; returns its offset.
fn append(config: &Config, timestamp_ms: i64, user: &str, key: &str, attempt: u64) -> i64 {
    let event = EmojiEvent {
        stream: "main".into(),
        user_id: user.into(),
        emoji: "🔥".into(),
        ts: None,
        recv_ms: timestamp_ms as u64,
        request_id: Some(key.into()),
        attempt: Some(attempt),
    };
    let mut payload = serde_json::to_vec(&event).unwrap();
    payload.push(b'\n');
    let producer = topic::producer(&config.kafka.brokers);
    let record = FutureRecord::to(&config.kafka.events_topic)
        .partition(0)
        .key("main")
        .timestamp(timestamp_ms)
        .payload(&payload);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(topic::send(&producer, record))
        .1
}

#[test]
fn the_keys_of_a_horizon_before_the_resume_offset_are_remembered() {
    let dir = Scratch::new("dataflow-dedupe-refill");
    let (_broker, config) = Broker::start(dir.path(), |address| {
        minimal_config_with(address, "events_partitions = 2", "")
    });
    // (timestamp, key): the record before the resume offset is stamped 110,000, so the refill
    // starts at the first record stamped 90,000 or later: offset 1.
    let log = [
        (50_000, "a"),  // 0: before the refill's start, and a horizon old anyway
        (100_000, "b"), // 1: the refill starts here
        (85_000, "c"),  // 2: stamped earlier (another gateway's clock), read all the same
        (110_000, "d"), // 3: just below the resume offset
        (111_000, "e"), // 4: the resume offset: the source reads it, not the refill
    ];
    for (i, (ts, key)) in log.iter().enumerate() {
        assert_eq!(append(&config, *ts, "u", key, i as u64), i as i64);
    }
    let resumes = [(0, 4), (1, 0)];
    let mut keys = refill(
        &config.kafka,
        &config.kafka.events_topic,
        &resumes,
        HORIZON_MS,
        1_000,
    )
    .expect("the events topic is readable");
    assert_eq!(keys.keys().copied().collect::<Vec<_>>(), [0, 1]);
    assert!(keys[&1].is_empty(), "partition 1 resumes at its start");
    let partition = keys.get_mut(&0).unwrap();
    assert_eq!(partition.len(), 3, "b, c and d");
    // The source goes on from offset 4 with new attempts of every key.
    partition.record(111_000);
    let verdicts: Vec<(&str, Verdict)> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(|key| (key, partition.tap("main", "u", key, 100)))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("a", Verdict::Count),
            ("b", Verdict::Repeat),
            ("c", Verdict::Repeat),
            ("d", Verdict::Repeat),
            ("e", Verdict::Count),
        ]
    );
}
