//! The batching policy with exact values (no I/O), and the whole batcher against a real broker:
//! every request answered only once its events are in Kafka, each event there exactly once.

use super::batches::{BatchKey, Batches, OpenBatch};
use super::{Batcher, Submission};
use crate::metrics::Metrics;
use crate::parse::Tap;
use crate::GatewayError;
use emostream_protocol::wire::EmojiEvent;
use emostream_testkit::broker::{minimal_config, minimal_config_with};
use emostream_testkit::topic::read_to_end;
use emostream_testkit::{Broker, Scratch};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{oneshot, Semaphore};

type Answer = oneshot::Receiver<Result<(), GatewayError>>;

/// A request of `events` taps whose lines are `line` repeated, holding that many permits of
/// `budget`; with a receiver for its answer unless it is fire-and-forget.
fn submission(
    budget: &Arc<Semaphore>,
    (partition, stream, epoch): (i32, &str, u64),
    recv_ms: u64,
    events: usize,
    line: &str,
    waits: bool,
) -> (Submission, Option<Answer>) {
    let (ack, answer) = if waits {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let submission = Submission {
        partition,
        stream: stream.into(),
        epoch,
        recv_ms,
        events,
        lines: line.repeat(events).into_bytes(),
        ack,
        permit: Arc::clone(budget)
            .try_acquire_many_owned(events as u32)
            .expect("the test's budget is large enough")
            .into(),
    };
    (submission, answer)
}

/// (partition, stream, epoch, newest receive time, events, lines, acks, budget bytes held) of a
/// due batch.
fn shape(due: &(BatchKey, OpenBatch)) -> (i32, &str, u64, u64, usize, &str, usize, usize) {
    let (key, batch) = due;
    (
        key.partition,
        key.stream.as_str(),
        key.epoch,
        batch.newest_recv_ms,
        batch.events,
        std::str::from_utf8(&batch.lines).unwrap(),
        batch.acks.len(),
        batch.held.bytes(),
    )
}

#[test]
fn a_batch_goes_at_once_to_a_partition_with_nothing_in_flight() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 1 << 20, 2 * (1 << 20), 1);
    let (s, _answer) = submission(&budget, (2, "main", 7), 14_001, 2, "a\n", true);
    let due = batches.add(s).expect("partition 2 is idle");
    assert_eq!(shape(&due), (2, "main", 7, 14_001, 2, "a\na\n", 1, 2));
    assert!(batches.take_all().is_empty());
}

#[test]
fn while_a_record_is_in_flight_its_partition_gathers_until_the_answer() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 1 << 20, 2 * (1 << 20), 1);
    batches.sent(0);
    let (a, _) = submission(&budget, (0, "main", 7), 14_100, 2, "a\n", true);
    let (b, _) = submission(&budget, (0, "main", 7), 14_050, 3, "b\n", true);
    let (c, _) = submission(&budget, (0, "main", 7), 14_080, 1, "c\n", false);
    assert!(batches.add(a).is_none());
    assert!(batches.add(b).is_none());
    assert!(batches.add(c).is_none());
    // Another partition is not held back by partition 0's record.
    let (other, _) = submission(&budget, (1, "main", 7), 14_090, 1, "o\n", true);
    assert_eq!(
        shape(&batches.add(other).expect("partition 1 is idle")),
        (1, "main", 7, 14_090, 1, "o\n", 1, 1)
    );

    let due = batches.acknowledged(0);
    assert_eq!(due.len(), 1);
    // The newest receive time is the record's timestamp; the fire-and-forget request has no ack.
    assert_eq!(
        shape(&due[0]),
        (0, "main", 7, 14_100, 6, "a\na\nb\nb\nb\nc\n", 2, 6)
    );
}

#[test]
fn the_answer_to_one_of_two_records_in_flight_releases_nothing() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 1 << 20, 2 * (1 << 20), 1);
    batches.sent(0);
    batches.sent(0);
    let (a, _) = submission(&budget, (0, "main", 7), 14_100, 1, "a\n", true);
    assert!(batches.add(a).is_none());
    assert!(batches.acknowledged(0).is_empty());
    let due = batches.acknowledged(0);
    assert_eq!(
        due.iter().map(shape).collect::<Vec<_>>(),
        [(0, "main", 7, 14_100, 1, "a\n", 1, 1)]
    );
}

#[test]
fn a_batch_never_mixes_streams_or_epochs() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 1 << 20, 2 * (1 << 20), 1);
    batches.sent(0);
    for (stream, epoch, recv_ms, line) in [
        ("main", 7, 15_990, "m7\n"),
        ("cricket", 7, 15_991, "c7\n"),
        ("main", 8, 16_000, "m8\n"),
        ("main", 7, 15_999, "m7\n"),
    ] {
        let (s, _) = submission(&budget, (0, stream, epoch), recv_ms, 1, line, true);
        assert!(batches.add(s).is_none());
    }
    let mut due = batches.acknowledged(0);
    due.sort_by(|a, b| (&a.0.stream, a.0.epoch).cmp(&(&b.0.stream, b.0.epoch)));
    assert_eq!(
        due.iter().map(shape).collect::<Vec<_>>(),
        [
            (0, "cricket", 7, 15_991, 1, "c7\n", 1, 1),
            (0, "main", 7, 15_999, 2, "m7\nm7\n", 2, 2),
            (0, "main", 8, 16_000, 1, "m8\n", 1, 1),
        ]
    );
}

#[test]
fn a_batch_reaching_the_event_cap_goes_even_while_its_partition_is_busy() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(5, 1 << 20, 2 * (1 << 20), 1);
    batches.sent(0);
    let (a, _) = submission(&budget, (0, "main", 7), 14_000, 3, "a\n", true);
    let (b, _) = submission(&budget, (0, "main", 7), 14_001, 2, "b\n", true);
    let (c, _) = submission(&budget, (0, "main", 7), 14_002, 4, "c\n", true);
    assert!(batches.add(a).is_none(), "3 of 5 events");
    assert_eq!(
        shape(&batches.add(b).expect("5 of 5 events")),
        (0, "main", 7, 14_001, 5, "a\na\na\nb\nb\n", 2, 5)
    );
    assert!(batches.add(c).is_none(), "a new batch, 4 of 5 events");
}

#[test]
fn a_batch_reaching_the_byte_cap_goes_even_while_its_partition_is_busy() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 10, 2 * 10, 1);
    batches.sent(0);
    let (a, _) = submission(&budget, (0, "main", 7), 14_000, 2, "abc\n", true);
    let (b, _) = submission(&budget, (0, "main", 7), 14_001, 1, "de\n", true);
    assert!(batches.add(a).is_none(), "8 of 10 bytes");
    assert_eq!(
        shape(&batches.add(b).expect("11 bytes: past the cap")),
        (0, "main", 7, 14_001, 3, "abc\nabc\nde\n", 2, 3)
    );
}

#[test]
fn the_flush_tick_takes_every_open_batch_of_every_partition() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 1 << 20, 2 * (1 << 20), 1);
    batches.sent(0);
    batches.sent(3);
    let (a, _) = submission(&budget, (0, "main", 7), 14_000, 1, "a\n", true);
    let (b, _) = submission(&budget, (3, "main", 7), 14_001, 2, "b\n", true);
    assert!(batches.add(a).is_none());
    assert!(batches.add(b).is_none());
    let mut due = batches.take_all();
    due.sort_by_key(|d| d.0.partition);
    assert_eq!(
        due.iter().map(shape).collect::<Vec<_>>(),
        [
            (0, "main", 7, 14_000, 1, "a\n", 1, 1),
            (3, "main", 7, 14_001, 2, "b\nb\n", 1, 2),
        ]
    );
    assert!(batches.take_all().is_empty());
}

#[test]
fn an_epochs_end_takes_the_batches_of_ended_epochs_even_from_busy_partitions() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 1 << 20, 2 * (1 << 20), 1);
    batches.sent(0);
    batches.sent(1);
    let (ended_a, _) = submission(&budget, (0, "main", 6), 13_990, 1, "a\n", true);
    let (ended_b, _) = submission(&budget, (1, "other", 6), 13_999, 2, "b\n", true);
    let (current, _) = submission(&budget, (0, "main", 7), 14_001, 3, "c\n", true);
    for s in [ended_a, ended_b, current] {
        assert!(batches.add(s).is_none(), "both partitions are busy");
    }
    let mut due = batches.take_ended(7);
    due.sort_by_key(|d| d.0.partition);
    assert_eq!(
        due.iter().map(shape).collect::<Vec<_>>(),
        [
            (0, "main", 6, 13_990, 1, "a\n", 1, 1),
            (1, "other", 6, 13_999, 2, "b\nb\n", 1, 2),
        ]
    );
    assert!(batches.take_ended(7).is_empty());
    // The current epoch's batch still waits for its partition's answer.
    assert_eq!(
        batches.take_all().iter().map(shape).collect::<Vec<_>>(),
        [(0, "main", 7, 14_001, 3, "c\nc\nc\n", 1, 3)]
    );
}

#[tokio::test]
async fn a_batch_carries_each_waiting_request_its_answer_and_holds_the_budget_until_then() {
    let budget = Arc::new(Semaphore::new(10));
    let mut batches = Batches::new(1000, 1 << 20, 2 * (1 << 20), 1);
    batches.sent(0);
    let (a, answer_a) = submission(&budget, (0, "main", 7), 14_000, 2, "a\n", true);
    let (b, answer_b) = submission(&budget, (0, "main", 7), 14_001, 3, "b\n", true);
    assert!(batches.add(a).is_none());
    assert!(batches.add(b).is_none());
    assert_eq!(budget.available_permits(), 5);
    let (_, batch) = batches.acknowledged(0).pop().expect("the gathered batch");
    // What the packer does with the broker's answer for the record.
    let refused = GatewayError::BrokerUnavailable { reason: REFUSED };
    for ack in batch.acks {
        ack.send(Err(refused.clone())).unwrap();
    }
    assert_eq!(
        budget.available_permits(),
        5,
        "permits travel with the events"
    );
    drop(batch.held);
    assert_eq!(budget.available_permits(), 10);
    for answer in [answer_a.unwrap(), answer_b.unwrap()] {
        assert!(matches!(
            answer.await.unwrap(),
            Err(GatewayError::BrokerUnavailable { reason }) if reason == REFUSED
        ));
    }
}

const REFUSED: &str = "broker did not acknowledge, retry shortly";

/// The whole batcher on a real broker: 24 concurrent requests of 1 to 3 taps from 8 users on
/// 2 streams, each answered only once its record is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_after_its_events_are_in_kafka_each_once() {
    let dir = Scratch::new("batcher");
    let (broker, config) = Broker::start(dir.path(), |address| minimal_config(address, ""));
    let metrics = Arc::new(Metrics::default());
    let (batcher, handle) = Batcher::start(&config, metrics).expect("a producer");
    let brokers = config.kafka.brokers.clone();
    let topic = config.kafka.events_topic.clone();

    // One request first: its answer means its record is already readable.
    let tap = |user: &str, emoji: &'static str| Tap {
        user_id: Cow::Owned(user.into()),
        emoji,
        ts: None,
    };
    let first = handle
        .submit(
            None,
            "main",
            None,
            &[tap("first", "🔥")],
            handle.reserve(None, 0).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(first.accepted, 1);
    let (b, t) = (brokers.clone(), topic.clone());
    let records = tokio::task::spawn_blocking(move || read_to_end(&b, &t))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some(&b"main"[..]));

    let mut requests = tokio::task::JoinSet::new();
    for i in 0..24u64 {
        let handle = handle.clone();
        requests.spawn(async move {
            let stream = if i % 2 == 0 { "main" } else { "cricket" };
            let user = format!("u{}", i % 8);
            let taps: Vec<Tap> = (0..=i % 3).map(|_| tap(&user, "👍🏽")).collect();
            let accepted = handle
                .submit(None, stream, None, &taps, handle.reserve(None, 0).unwrap())
                .await
                .unwrap();
            (i, accepted.accepted)
        });
    }
    let mut answers = Vec::new();
    while let Some(done) = requests.join_next().await {
        answers.push(done.unwrap());
    }
    answers.sort();
    let accepted: Vec<u64> = answers.iter().map(|a| a.1).collect();
    assert_eq!(
        accepted,
        [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    );

    let records = tokio::task::spawn_blocking(move || read_to_end(&brokers, &topic))
        .await
        .unwrap();
    // (stream, user) → taps on the topic; every record keyed by its stream, on the user's
    // partition, stamped with its newest receive time.
    let mut taps: BTreeMap<(String, String), usize> = BTreeMap::new();
    for record in &records {
        let text = std::str::from_utf8(&record.payload).unwrap();
        let events: Vec<EmojiEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let newest = events.iter().map(|e| e.recv_ms).max().unwrap();
        assert_eq!(record.timestamp_ms, Some(newest as i64));
        for event in &events {
            assert_eq!(record.key.as_deref(), Some(event.stream.as_bytes()));
            assert_eq!(
                record.partition,
                handle.partition_for(&event.stream, &event.user_id)
            );
            *taps
                .entry((event.stream.to_string(), event.user_id.to_string()))
                .or_default() += 1;
        }
    }
    let u = |stream: &str, user: &str, n: usize| ((stream.to_string(), user.to_string()), n);
    // Request i: stream main if i is even, user u(i mod 8), 1 + i mod 3 taps.
    assert_eq!(
        taps,
        BTreeMap::from([
            u("main", "first", 1),
            u("main", "u0", 1 + 2 + 3),
            u("main", "u2", 3 + 1 + 2),
            u("main", "u4", 2 + 3 + 1),
            u("main", "u6", 1 + 2 + 3),
            u("cricket", "u1", 2 + 3 + 1),
            u("cricket", "u3", 1 + 2 + 3),
            u("cricket", "u5", 3 + 1 + 2),
            u("cricket", "u7", 2 + 3 + 1),
        ])
    );

    drop(handle);
    batcher.finish().await;
    drop(broker);
    drop(dir);
}

/// The budget counts bytes of encoded events, not events: with 150 bytes of it left, one tap of
/// a 128-character user id (an encoded line of about 200 bytes) is refused at once, and one tap
/// of a 1-character user id (about 70 bytes) is taken.
#[tokio::test]
async fn the_in_flight_budget_counts_bytes_not_events() {
    let dir = Scratch::new("batcher-bytes");
    let (_broker, config) = Broker::start(dir.path(), |address| minimal_config(address, ""));
    let (_batcher, handle) = Batcher::start(&config, Arc::new(Metrics::default())).unwrap();
    let tap = |user: String| Tap {
        user_id: Cow::Owned(user),
        emoji: "🔥",
        ts: None,
    };
    // What is left for bodies and taps once the connections' part is set aside.
    let g = &config.gateway;
    let budget =
        g.max_in_flight_bytes - g.max_connections * emostream_protocol::config::CONNECTION_BYTES;
    assert_eq!(handle.in_flight(), (0, budget));
    let held = handle.reserve(None, budget - 150).unwrap();
    assert_eq!(
        handle
            .submit(
                None,
                "main",
                None,
                &[tap("x".repeat(128))],
                handle.reserve(None, 0).unwrap()
            )
            .await,
        Err(GatewayError::Overloaded {
            reason: "ingest budget full, retry shortly"
        })
    );
    let accepted = handle
        .submit(
            None,
            "main",
            None,
            &[tap("s".into())],
            handle.reserve(None, 0).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(accepted.accepted, 1);
    // Answered, so its bytes are back: only the test's own hold remains.
    assert_eq!(handle.in_flight(), (budget - 150, budget));
    drop(held);
    assert_eq!(handle.in_flight(), (0, budget));
}

#[test]
fn a_request_that_would_take_its_open_batch_past_the_record_cap_sends_it_first() {
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = Batches::new(1000, 10, 20, 1);
    batches.sent(0);
    let (a, _) = submission(&budget, (0, "main", 7), 14_000, 2, "abc\n", true);
    let (big, _) = submission(&budget, (0, "main", 7), 14_001, 5, "def\n", true);
    assert!(batches.room_for(&a).is_none(), "no open batch yet");
    assert!(batches.add(a).is_none(), "8 of 10 bytes");
    // 8 + 20 bytes would pass the 20-byte cap: the open batch goes as it is, alone.
    assert_eq!(
        shape(&batches.room_for(&big).expect("past the record cap")),
        (0, "main", 7, 14_000, 2, "abc\nabc\n", 1, 2)
    );
    assert_eq!(
        shape(
            &batches
                .add(big)
                .expect("20 bytes: past the flush threshold")
        ),
        (0, "main", 7, 14_001, 5, "def\ndef\ndef\ndef\ndef\n", 1, 5)
    );
}

/// librdkafka refuses a record for good when its key and value together with its largest
/// per-record framing (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`, 36 bytes: five varints and the
/// attributes byte) pass the producer's `message.max.bytes` (rdkafka_msg.c, `rd_kafka_msg_new0`).
const LIBRDKAFKA_RECORD_OVERHEAD: usize = 36;

/// A batch filled to exactly `message.max.bytes` of lines would be refused by librdkafka once
/// its key (the stream) and framing are added, and every request in it answered 500: with the
/// batcher's own caps, the second request's lines open the next record instead.
#[test]
fn a_batch_of_lines_up_to_the_message_limit_leaves_room_for_the_key_and_framing() {
    use crate::producer::{FLUSH_BYTES, MAX_RECORD_BYTES};
    let budget = Arc::new(Semaphore::new(100));
    let mut batches = super::record_batches(1_000_000);
    batches.sent(0);
    let key = (0, LONGEST_STREAM, 7);
    let first = format!("{}\n", "a".repeat(FLUSH_BYTES - 2));
    let second = format!("{}\n", "b".repeat(MAX_RECORD_BYTES - first.len() - 1));
    let (a, _) = submission(&budget, key, 14_000, 1, &first, true);
    let (b, _) = submission(&budget, key, 14_001, 1, &second, true);
    let mut due: Vec<(BatchKey, OpenBatch)> = Vec::new();
    for s in [a, b] {
        due.extend(batches.room_for(&s));
        due.extend(batches.add(s));
    }
    due.extend(batches.take_all());
    let records: Vec<(usize, usize)> = due
        .iter()
        .map(|(_, batch)| (batch.events, batch.lines.len()))
        .collect();
    assert_eq!(records, [(1, first.len()), (1, second.len())]);
    for (key, batch) in &due {
        let wire = LIBRDKAFKA_RECORD_OVERHEAD + key.stream.len() + batch.lines.len();
        assert!(wire <= MAX_RECORD_BYTES, "{wire} bytes");
    }
}

/// The longest stream id and `Idempotency-Key` the routes take.
const LONGEST_STREAM: &str = "s123456789012345678901234567890123456789012345678901234567890123";

fn longest_key() -> String {
    "k".repeat(128)
}

/// The batch route's largest body of the smallest taps (each user under the per-user burst):
/// the most lines one request can make.
fn largest_body() -> Vec<u8> {
    let mut body = b"[".to_vec();
    for i in 0.. {
        let user = format!("{:02}", i / 100);
        let item = format!(r#"{{"user_id":"{user}","emoji":"©"}}"#);
        if body.len() + item.len() + 2 > crate::routes::BATCH_BODY_LIMIT {
            break;
        }
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.resize(crate::routes::BATCH_BODY_LIMIT - 1, b' ');
    body.push(b']');
    body
}

#[test]
fn the_largest_accepted_body_fits_one_record() {
    use crate::parse::{self, BodyFormat, Rules};
    let body = largest_body();
    let taps = parse::batch_body(&body, BodyFormat::Json, &Rules::new(&[]).unwrap()).unwrap();
    let key = longest_key();
    // The longest attempt number too.
    let request = Some((key.as_str(), u64::MAX));
    let lines = super::encode(LONGEST_STREAM, request, &taps, 1_733_000_000_000);
    assert_eq!((body.len(), taps.len()), (1_048_576, 34_147));
    // Ten times the body (10.05 MiB): the stream, key and attempt are on every line.
    assert_eq!(
        lines.len(),
        9_482_866 + 34_147 * r#","attempt":18446744073709551615"#.len()
    );
    assert!(lines.len() <= crate::producer::MAX_RECORD_LINES);
}

/// The whole batcher on a real broker, frozen (SIGSTOP) so that one record stays in flight and
/// the next batch stays open: the open batch is filled to just under the flush threshold, then
/// the largest accepted body with the longest stream and `Idempotency-Key` joins it. Together
/// they would pass the producer's `message.max.bytes` and every request in the record would get
/// 500; instead the open batch goes first, and every request is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_request_joining_a_full_open_batch_fails_no_other_request() {
    use crate::parse::{self, BodyFormat, Rules};
    use crate::producer::{FLUSH_BYTES, MAX_RECORD_LINES};
    use emostream_testkit::wait_until;
    use std::process::Command;
    use std::time::Duration;
    const HOUR_MS: u64 = 3_600_000;
    let dir = Scratch::new("batcher-record-cap");
    // One partition; an epoch of a day or more with at least an hour left (a day-long one has
    // none between 23:00 and 24:00 UTC, and waiting for the next would hold the test for up to
    // an hour), and a minute's flush tick, so that neither an epoch boundary nor the tick
    // splits the batch the test builds.
    let now = emostream_testkit::clock::now_ms();
    let window_ms = (24..)
        .map(|hours| hours * HOUR_MS)
        .find(|window| now % window < window - HOUR_MS)
        .expect("some window of a day or more has an hour left");
    let (broker, config) = Broker::start(dir.path(), |address| {
        minimal_config_with(
            address,
            &format!(
                "events_partitions = 1\n[epochs]\nwindow_ms = {window_ms}\n\
                 allowed_lateness_ms = 60250"
            ),
            "flush_ms = 60000\nflush_max_events = 1000000\ndelivery_timeout_ms = 60000\n\
             drain_timeout_ms = 70000",
        )
    });
    let (_batcher, handle) = Batcher::start(&config, Arc::new(Metrics::default())).unwrap();
    let tap = |user: String| Tap {
        user_id: Cow::Owned(user),
        emoji: "🔥",
        ts: None,
    };
    let submit = |user_ids: Vec<String>, key: Option<String>| {
        let handle = handle.clone();
        tokio::spawn(async move {
            let taps: Vec<Tap> = user_ids.into_iter().map(tap).collect();
            let reserved = handle.reserve(None, 0).unwrap();
            handle
                .submit(None, LONGEST_STREAM, key.as_deref(), &taps, reserved)
                .await
        })
    };
    // Connected and the topic known before the broker freezes.
    submit(vec!["warm".into()], None).await.unwrap().unwrap();
    let pid = broker.pid().expect("the broker's pid").to_string();
    let signal = |name: &str| {
        let status = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let in_flight = submit(vec!["in-flight".into()], None);
    // Taken by the packer and handed to librdkafka (whose queue may also hold a probe's
    // metadata request).
    let packed = |records: i32| {
        let handle = handle.clone();
        async move {
            handle.tx.capacity() == super::SUBMISSION_QUEUE && handle.producer_queue() >= records
        }
    };
    wait_until("a record in flight", Duration::from_secs(30), || packed(1)).await;
    // Fillers of one size each, up to one line under the flush threshold.
    let user = |i: usize| format!("f{i:06}");
    let line = super::encode(LONGEST_STREAM, None, &[tap(user(0))], 1_733_000_000_000).len();
    let fillers = (FLUSH_BYTES - 1) / line;
    let mut requests = Vec::new();
    for start in (0..fillers).step_by(5_000) {
        requests.push(submit(
            (start..fillers.min(start + 5_000)).map(user).collect(),
            None,
        ));
    }
    let body = largest_body();
    let big: Vec<String> = parse::batch_body(&body, BodyFormat::Json, &Rules::new(&[]).unwrap())
        .unwrap()
        .into_iter()
        .map(|t| t.user_id.into_owned())
        .collect();
    let big_taps = big.len();
    let big = submit(big, Some(longest_key()));
    // The filled batch and the large request's, each its own record, behind the one in flight.
    wait_until("both records queued", Duration::from_secs(60), || packed(3)).await;
    signal("-CONT");
    assert_eq!(in_flight.await.unwrap().unwrap().accepted, 1);
    let mut filled = 0;
    for request in requests {
        filled += request.await.unwrap().unwrap().accepted;
    }
    assert_eq!(filled as usize, fillers);
    assert_eq!(big.await.unwrap().unwrap().accepted as usize, big_taps);

    let (brokers, topic) = (
        config.kafka.brokers.clone(),
        config.kafka.events_topic.clone(),
    );
    let records = tokio::task::spawn_blocking(move || read_to_end(&brokers, &topic))
        .await
        .unwrap();
    // (lines, lines carrying the key) per record, in log order.
    let shapes: Vec<(usize, usize)> = records
        .iter()
        .map(|r| {
            let text = std::str::from_utf8(&r.payload).unwrap();
            let keyed = text
                .lines()
                .filter(|l| l.contains(r#""request_id""#))
                .count();
            (text.lines().count(), keyed)
        })
        .collect();
    assert_eq!(shapes, [(1, 0), (1, 0), (fillers, 0), (big_taps, big_taps)]);
    assert!(records.iter().all(|r| r.payload.len() <= MAX_RECORD_LINES));
}
