//! Reading back the closed epochs the trends windows refill from, against a real broker: the
//! epochs asked for, each (stream, epoch) once however often it was published, nothing outside
//! the range, and a foreign record skipped; found by record timestamp on every partition of the
//! epochs topic, including a frame re-published after later epochs (as after a restart).

use emostream_dataflow::trends::refill::closed_epochs;
use emostream_dataflow::EpochCount;
use emostream_protocol::wire::{EmojiCount, EpochFrame, FrameType};
use emostream_protocol::Config;
use emostream_testkit::broker::minimal_config_with;
use emostream_testkit::{topic, Broker, Scratch};
use rdkafka::producer::FutureRecord;

const WINDOW_MS: u64 = 2000;

fn frame(stream: &str, epoch: u64, emojis: &[(&str, u64)]) -> EpochFrame {
    EpochFrame {
        kind: FrameType::Epoch,
        stream: stream.into(),
        epoch,
        start_ms: epoch * WINDOW_MS,
        end_ms: (epoch + 1) * WINDOW_MS,
        total: emojis.iter().map(|e| e.1).sum(),
        late: emojis.len() as u64 - 1,
        emojis: emojis
            .iter()
            .map(|&(emoji, count)| EmojiCount {
                emoji: emoji.into(),
                count,
                scaled: (count / 1000).max(1),
            })
            .collect(),
        other: None,
    }
}

fn count(stream: &str, epoch: u64, emojis: &[(&str, u64)]) -> EpochCount {
    EpochCount {
        stream: stream.into(),
        epoch,
        total: emojis.iter().map(|e| e.1).sum(),
        late: emojis.len() as u64 - 1,
        emojis: emojis.iter().map(|(e, n)| (e.to_string(), *n)).collect(),
    }
}

/// Appends `payload` to `partition` of the epochs topic, stamped `timestamp_ms`.
fn append(config: &Config, partition: i32, timestamp_ms: i64, payload: &[u8]) {
    let producer = topic::producer(&config.kafka.brokers);
    let record = FutureRecord::<(), _>::to(&config.kafka.epochs_topic)
        .partition(partition)
        .timestamp(timestamp_ms)
        .payload(payload);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(topic::send(&producer, record));
}

fn publish(config: &Config, partition: i32, frame: &EpochFrame) {
    let payload = serde_json::to_vec(frame).unwrap();
    append(config, partition, frame.end_ms as i64, &payload);
}

#[test]
fn the_closed_epochs_of_a_range_are_read_back_once_each() {
    let dir = Scratch::new("dataflow-refill");
    let (_broker, config) = Broker::start(dir.path(), |address| {
        minimal_config_with(address, "epochs_partitions = 2", "")
    });
    let read = |epochs| {
        closed_epochs(&config.kafka, &config.kafka.epochs_topic, epochs, WINDOW_MS)
            .expect("the epochs topic is readable")
    };
    assert_eq!(read(0..15), Vec::new(), "an empty topic");

    let main = |epoch| frame("main", epoch, &[("🔥", 1000 + epoch), ("❤️", 2)]);
    let cricket = |epoch| frame("cricket", epoch, &[("😂", epoch)]);
    for epoch in 1..=9 {
        publish(&config, 0, &main(epoch));
        if epoch % 2 == 1 {
            publish(&config, 1, &cricket(epoch));
        }
    }
    // A restart re-published epochs 8 and 9 of main after both were out, and a foreign producer
    // wrote a line that is no frame, stamped inside the range.
    publish(&config, 0, &main(8));
    publish(&config, 0, &main(9));
    append(&config, 1, 7 * WINDOW_MS as i64, b"not a frame");

    let main_count = |epoch| count("main", epoch, &[("🔥", 1000 + epoch), ("❤️", 2)]);
    let cricket_count = |epoch| count("cricket", epoch, &[("😂", epoch)]);
    assert_eq!(
        read(5..9),
        vec![
            cricket_count(5),
            main_count(5),
            main_count(6),
            cricket_count(7),
            main_count(7),
            main_count(8),
        ]
    );
    assert_eq!(read(9..12), vec![cricket_count(9), main_count(9)]);
    assert_eq!(read(0..2), vec![cricket_count(1), main_count(1)]);
    assert_eq!(read(10..25), Vec::new(), "nothing stamped that late");
    assert_eq!(read(4..4), Vec::new(), "an empty range");
}
