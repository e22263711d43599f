//! `PublishEpochs` and `WriteProgress` against a real broker (scripts/broker.sh), at 2 worker
//! threads, with the closed epochs and the sources' marks fed by hand: the exact records on the
//! topics (keys, bytes, timestamps, partitions), and the exactly-once order of docs/dataflow.md. The
//! progress record for epoch `e` is written only after every frame of every epoch up to `e` is
//! acknowledged, and no frame of `e + 1` is sent before that record is acknowledged.

use emostream_dataflow::fence::ChainCheck;
use emostream_dataflow::metrics::Metrics;
use emostream_dataflow::progress::{ProgressWriter, WriteProgress};
use emostream_dataflow::publish::{AckedProducer, PublishEpochs};
use emostream_dataflow::Mark;
use emostream_protocol::progress::{Counting, FIRST};
use emostream_protocol::wire::{EmojiCount, EpochFrame, FrameType};
use emostream_protocol::Config;
use emostream_testkit::broker::{minimal_config, minimal_config_with};
use emostream_testkit::topic::read_to_end;
use emostream_testkit::{Broker, Scratch};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::operators::{ConnectLoop, Feedback, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

const WINDOW_MS: u64 = 2000;
/// The settings recorded with the progress, over the 2 events partitions the marks describe.
const COUNTING: Counting = Counting {
    window_ms: WINDOW_MS,
    divisor: 1000,
    events_partitions: 2,
};
/// Far beyond the few round trips to a local broker the dataflow waits on, even on a loaded
/// 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// One record as the broker keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Record {
    partition: i32,
    key: Option<String>,
    timestamp: Option<i64>,
    payload: String,
}

fn frame(stream: &str, epoch: u64, emojis: &[(&str, u64, u64)]) -> EpochFrame {
    EpochFrame {
        kind: FrameType::Epoch,
        stream: stream.into(),
        epoch,
        start_ms: epoch * WINDOW_MS,
        end_ms: (epoch + 1) * WINDOW_MS,
        total: emojis.iter().map(|e| e.1).sum(),
        late: 0,
        emojis: emojis
            .iter()
            .map(|&(emoji, count, scaled)| EmojiCount {
                emoji: emoji.into(),
                count,
                scaled,
            })
            .collect(),
        other: None,
    }
}

/// The closed epochs: two streams, which librdkafka's partitioner (CRC32 of the key) puts on
/// different partitions of a two-partition topic; epoch 2 has only one of them.
fn frames() -> Vec<EpochFrame> {
    vec![
        frame("main", 0, &[("🔥", 3785, 3)]),
        frame("cricket", 0, &[("❤️", 12, 1)]),
        frame("main", 1, &[("👍🏽", 1000, 1)]),
        frame("cricket", 1, &[("🔥", 2000, 2)]),
        frame("main", 2, &[("😂", 1, 1)]),
        frame("main", 3, &[("🔥", 999, 1)]),
        frame("cricket", 3, &[("❤️", 5, 1)]),
    ]
}

fn mark(partition: i32, start: u64, end: u64, position: i64, resume: i64) -> Mark {
    Mark {
        partition,
        start,
        end,
        position,
        resume,
    }
}

/// The sources' marks for events partitions 0 and 1, up to a floor of 5 on both.
fn marks() -> Vec<Mark> {
    vec![
        mark(0, 0, 1, 10, 0),
        mark(1, 0, 2, 7, 0),
        mark(0, 1, 2, 25, 10),
        mark(0, 2, 3, 40, 25),
        mark(1, 2, 4, 19, 7),
        mark(0, 3, 5, 52, 40),
        mark(1, 4, 5, 30, 19),
    ]
}

/// Steps `worker` until `done` or panics after [`DEADLINE`].
fn step_until(worker: &mut Worker, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
}

/// Runs PublishEpochs → WriteProgress (gate fed back) on 2 workers over [`frames`] and
/// [`marks`], each worker given every other item, each record letting out at most `in_flight`
/// epochs. The inputs stay open at epoch 5 until the gate lets epoch 4 out (the record for epoch
/// 3 is acknowledged), then close.
fn publish(config: &Config, in_flight: u64) {
    let kafka = config.kafka.clone();
    timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let publisher = AckedProducer::connect(&kafka, &kafka.epochs_topic).unwrap();
        let writer = (index == 0).then(|| ProgressWriter {
            producer: AckedProducer::connect(&kafka, &kafka.progress_topic).unwrap(),
            chain: ChainCheck::start(&kafka, &kafka.progress_topic, Duration::from_secs(5))
                .unwrap(),
            follows: FIRST,
            run: RUN,
            in_flight,
        });
        let mut frames_in = InputHandleVec::<u64, EpochFrame>::new();
        let mut marks_in = InputHandleVec::<u64, Mark>::new();
        let progress_probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let (gate_handle, gate) = scope.feedback::<Vec<()>>(1);
            let published = frames_in.to_stream(scope).publish_epochs(
                gate,
                publisher,
                WINDOW_MS,
                Arc::new(Metrics::default()),
            );
            marks_in
                .to_stream(scope)
                .write_progress(published, COUNTING, 0, writer)
                .probe_with(&progress_probe)
                .connect_loop(gate_handle);
        });
        let mut frames = frames();
        let mut marks = marks();
        for epoch in 0..5 {
            frames_in.advance_to(epoch);
            marks_in.advance_to(epoch);
            for (i, f) in frames.extract_if(.., |f| f.epoch == epoch).enumerate() {
                if i % peers == index {
                    frames_in.send(f);
                }
            }
            // A mark is stamped with the floor it leaves (as the source does).
            for (i, m) in marks.extract_if(.., |m| m.start == epoch).enumerate() {
                if i % peers == index {
                    marks_in.send(m);
                }
            }
        }
        frames_in.advance_to(5);
        marks_in.advance_to(5);
        // With the marks' frontier at 5, the marks of epoch 4 are in, so the record for epoch
        // 3 can say where the next run holds its floor; 4 has to wait for later marks.
        step_until(worker, "the progress record for epoch 3", || {
            !progress_probe.less_than(&4)
        });
        // Closing the inputs (a graceful stop) publishes nothing more and writes no record for
        // an epoch without frames.
    })
    .unwrap();
}

/// Every record of `topic`, partition by partition, in offset order, its bytes as text.
fn read_topic(config: &Config, topic: &str) -> Vec<Record> {
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8");
    read_to_end(&config.kafka.brokers, topic)
        .into_iter()
        .map(|r| Record {
            partition: r.partition,
            key: r.key.map(text),
            timestamp: r.timestamp_ms,
            payload: text(r.payload),
        })
        .collect()
}

/// The epochs' records as the broker must hold them, by epoch.
fn epoch_records(partition_of: impl Fn(&str) -> i32) -> Vec<Vec<Record>> {
    let record = |stream: &str, end_ms: i64, payload: &str| Record {
        partition: partition_of(stream),
        key: Some(stream.into()),
        timestamp: Some(end_ms),
        payload: payload.into(),
    };
    vec![
        vec![
            record(
                "main",
                2000,
                r#"{"type":"epoch","stream":"main","epoch":0,"start_ms":0,"end_ms":2000,"total":3785,"late":0,"emojis":[{"emoji":"🔥","count":3785,"scaled":3}]}"#,
            ),
            record(
                "cricket",
                2000,
                r#"{"type":"epoch","stream":"cricket","epoch":0,"start_ms":0,"end_ms":2000,"total":12,"late":0,"emojis":[{"emoji":"❤️","count":12,"scaled":1}]}"#,
            ),
        ],
        vec![
            record(
                "main",
                4000,
                r#"{"type":"epoch","stream":"main","epoch":1,"start_ms":2000,"end_ms":4000,"total":1000,"late":0,"emojis":[{"emoji":"👍🏽","count":1000,"scaled":1}]}"#,
            ),
            record(
                "cricket",
                4000,
                r#"{"type":"epoch","stream":"cricket","epoch":1,"start_ms":2000,"end_ms":4000,"total":2000,"late":0,"emojis":[{"emoji":"🔥","count":2000,"scaled":2}]}"#,
            ),
        ],
        vec![record(
            "main",
            6000,
            r#"{"type":"epoch","stream":"main","epoch":2,"start_ms":4000,"end_ms":6000,"total":1,"late":0,"emojis":[{"emoji":"😂","count":1,"scaled":1}]}"#,
        )],
        vec![
            record(
                "main",
                8000,
                r#"{"type":"epoch","stream":"main","epoch":3,"start_ms":6000,"end_ms":8000,"total":999,"late":0,"emojis":[{"emoji":"🔥","count":999,"scaled":1}]}"#,
            ),
            record(
                "cricket",
                8000,
                r#"{"type":"epoch","stream":"cricket","epoch":3,"start_ms":6000,"end_ms":8000,"total":5,"late":0,"emojis":[{"emoji":"❤️","count":5,"scaled":1}]}"#,
            ),
        ],
    ]
}

/// The run id the writer stamps its records with.
const RUN: u64 = 0x5eed;

/// The progress records for epochs 0 to 3 (no key, no timestamp of ours: the producer's clock),
/// each continuing the record at the offset `follows` gives.
fn progress_payloads(follows: [i64; 4]) -> Vec<String> {
    let records = [
        r#"{"epoch":0,"counting":{"window_ms":2000,"divisor":1000,"events_partitions":2},"partitions":[{"partition":0,"resume_offset":0,"skip_before":10,"hold_until":25},{"partition":1,"resume_offset":0,"skip_before":7,"hold_until":7}]}"#,
        r#"{"epoch":1,"counting":{"window_ms":2000,"divisor":1000,"events_partitions":2},"partitions":[{"partition":0,"resume_offset":10,"skip_before":25,"hold_until":40},{"partition":1,"resume_offset":0,"skip_before":7,"hold_until":19}]}"#,
        r#"{"epoch":2,"counting":{"window_ms":2000,"divisor":1000,"events_partitions":2},"partitions":[{"partition":0,"resume_offset":25,"skip_before":40,"hold_until":52},{"partition":1,"resume_offset":7,"skip_before":19,"hold_until":19}]}"#,
        r#"{"epoch":3,"counting":{"window_ms":2000,"divisor":1000,"events_partitions":2},"partitions":[{"partition":0,"resume_offset":40,"skip_before":52,"hold_until":52},{"partition":1,"resume_offset":7,"skip_before":19,"hold_until":30}]}"#,
    ];
    records
        .iter()
        .zip(follows)
        .map(|(record, follows)| {
            format!(
                "{},\"follows\":{follows},\"run\":{RUN}}}",
                record.strip_suffix('}').unwrap()
            )
        })
        .collect()
}

/// Frames and progress records on one single-partition topic: the broker's append order is the
/// order the two operators' sends were acknowledged in, so the log itself shows the protocol.
#[test]
fn frames_and_progress_records_alternate_epoch_by_epoch() {
    let dir = Scratch::new("dataflow-alternate");
    let (broker, config) = Broker::start(dir.path(), |address| {
        let kafka =
            "epochs_topic = \"emoji-log\"\nprogress_topic = \"emoji-log\"\nepochs_partitions = 1";
        minimal_config_with(address, kafka, "")
    });
    publish(&config, 1);
    let log = read_topic(&config, "emoji-log");

    // Cut the log into runs of frames, each followed by one progress record.
    let mut got: Vec<(Vec<Record>, Option<String>)> = vec![(Vec::new(), None)];
    for record in log {
        if record.key.is_some() {
            got.last_mut().unwrap().0.push(record);
        } else {
            got.last_mut().unwrap().1 = Some(record.payload);
            got.push((Vec::new(), None));
        }
    }
    got.pop_if(|(frames, progress)| frames.is_empty() && progress.is_none());
    // Within an epoch, the two workers' frames go out in either order.
    for (frames, _) in &mut got {
        frames.sort();
    }
    let mut want: Vec<(Vec<Record>, Option<String>)> = epoch_records(|_| 0)
        .into_iter()
        // Each record follows the previous one, behind that epoch's frames in the shared log.
        .zip(progress_payloads([FIRST, 2, 5, 7]).into_iter().map(Some))
        .collect();
    for (frames, _) in &mut want {
        frames.sort();
    }
    assert_eq!(got, want);
    drop(broker);
}

/// Three epochs in flight: the marks are in up to a floor of 5 from the start, so the record
/// for epoch 0 carries the floor schedule of epochs 1 to 3 and lets all three out at once; the
/// record for 3 (the first epoch it let out all published) lets out 4, as far as the floors passed.
#[test]
fn a_record_lets_out_the_epochs_of_its_floor_schedule() {
    let dir = Scratch::new("dataflow-in-flight");
    let (broker, config) = Broker::start(dir.path(), |address| {
        let kafka =
            "epochs_topic = \"emoji-log\"\nprogress_topic = \"emoji-log\"\nepochs_partitions = 1";
        minimal_config_with(address, kafka, "")
    });
    publish(&config, 3);
    let mut got: Vec<(Vec<Record>, Option<String>)> = vec![(Vec::new(), None)];
    for record in read_topic(&config, "emoji-log") {
        if record.key.is_some() {
            got.last_mut().unwrap().0.push(record);
        } else {
            got.last_mut().unwrap().1 = Some(record.payload);
            got.push((Vec::new(), None));
        }
    }
    got.pop_if(|(frames, progress)| frames.is_empty() && progress.is_none());
    for (frames, _) in &mut got {
        frames.sort();
    }
    let mut epochs = epoch_records(|_| 0);
    let mut later: Vec<Record> = epochs.drain(1..).flatten().collect();
    later.sort();
    let mut first = epochs.remove(0);
    first.sort();
    let scheduled = format!(
        r#"{{"epoch":0,"counting":{{"window_ms":2000,"divisor":1000,"events_partitions":2}},"partitions":[{{"partition":0,"resume_offset":0,"skip_before":10,"hold_until":25,"later_holds":[40,52]}},{{"partition":1,"resume_offset":0,"skip_before":7,"hold_until":7,"later_holds":[19,19]}}],"follows":{FIRST},"run":{RUN}}}"#
    );
    // Epoch 0's two frames and the record at offset 2; epochs 1 to 3's five frames (offsets 3 to
    // 7) and the record for 3, exactly as with one epoch in flight, following offset 2.
    let record_3 = progress_payloads([FIRST, 0, 0, 2]).remove(3);
    assert_eq!(got, vec![(first, Some(scheduled)), (later, Some(record_3))]);
    drop(broker);
}

/// The topics as configured by default: frames keyed by stream on a two-partition topic, every
/// stream on its own partition in epoch order; progress records on partition 0 of their own.
#[test]
fn frames_are_keyed_by_stream_and_progress_has_its_own_topic() {
    let dir = Scratch::new("dataflow-layout");
    let (broker, config) = Broker::start(dir.path(), |address| minimal_config(address, ""));
    assert_eq!(
        (
            config.kafka.epochs_partitions,
            config.kafka.progress_topic.as_str()
        ),
        (2, "emoji-progress")
    );
    publish(&config, 1);

    // CRC32("main") is even and CRC32("cricket") odd (librdkafka's consistent_random).
    let partition_of = |stream: &str| if stream == "main" { 0 } else { 1 };
    let mut want: Vec<Record> = epoch_records(partition_of).concat();
    // One stream's epochs keep their order on its partition.
    want.sort_by_key(|r| r.partition);
    assert_eq!(read_topic(&config, &config.kafka.epochs_topic), want);

    let progress: Vec<(i32, Option<String>, String)> =
        read_topic(&config, &config.kafka.progress_topic)
            .into_iter()
            .map(|r| (r.partition, r.key, r.payload))
            .collect();
    let want: Vec<(i32, Option<String>, String)> = progress_payloads([FIRST, 0, 1, 2])
        .into_iter()
        .map(|p| (0, None, p))
        .collect();
    assert_eq!(progress, want);
    drop(broker);
}
