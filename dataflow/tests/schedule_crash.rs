//! A crash of the whole cluster (SIGKILL of every worker process) with several epochs of one
//! progress record's floor schedule in flight, half of them published: the restart must
//! re-publish those byte for byte and publish the rest exactly.
//!
//! Two processes count taps fed straight onto `emoji-events` (four partitions, 500 ms epochs),
//! among them late taps (received 1.5 s before they land, three epochs back), which a partition
//! folds into the epoch its floor stands at when it reads them: where they land depends on when
//! the floor moved, which only the progress record's floor schedule tells a restart. The steps,
//! with the hold points of crash.rs:
//!
//! 1. After a few records, the progress writer is held before its next record while the floors
//!    run epochs ahead, each passing its epochs at its own offsets among the late taps.
//! 2. Let go, it writes one record whose floor schedule covers every epoch the floors passed
//!    (at least four), and the gate lets them all out; each publisher sends two of them and holds
//!    the rest.
//! 3. Once those two are on `emoji-epochs`, every worker process is killed (SIGKILL, its
//!    supervisor frozen first so it restarts nothing and sends no SIGTERM), and the cluster is
//!    started again: it resumes from that record and replays its whole schedule.
//!
//! Every on-time (stream, epoch) must then hold exactly the taps received in it, the late taps
//! must all be counted once, and every frame published before the kill must have been
//! re-published byte for byte. (A replay that followed only the schedule's first hold would
//! assign the late taps of the later epochs elsewhere and re-publish them differently.)

use emostream_protocol::progress::Progress;
use emostream_protocol::wire::{EmojiEvent, EpochFrame};
use emostream_protocol::Config;
use emostream_testkit::{
    free_port, http, now_ms, topic, wait_for, wait_until, workers, Broker, Process, Scratch,
};
use rdkafka::producer::FutureRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WINDOW_MS: u64 = 500;
const LATENESS_MS: u64 = 500;
/// A late tap lands this long after it was received: three epochs back, behind every floor.
const LATE_BY_MS: u64 = 1500;
const PARTITIONS: i32 = 4;
/// Far beyond what any step here takes (a few epochs, a broker round trip, a cluster start) on a
/// loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const TAP_EVERY: Duration = Duration::from_millis(20);
const STREAMS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const LATE: &str = "late";
const EMOJIS: [&str; 3] = ["🔥", "❤️", "👍🏽"];
/// How far the floors run ahead of the held writer's last record, in epochs: its next record's
/// schedule then covers at least four.
const AHEAD: u64 = 7;

/// What was fed: the on-time taps by (stream, epoch) → emoji → taps, and the late ones by emoji.
#[derive(Default, Clone)]
struct Truth {
    on_time: BTreeMap<(String, u64), BTreeMap<String, u64>>,
    late: BTreeMap<String, u64>,
}

fn config_text(broker: &str) -> String {
    format!(
        r#"[kafka]
brokers = "{broker}"
events_partitions = {PARTITIONS}
[epochs]
window_ms = {WINDOW_MS}
allowed_lateness_ms = {LATENESS_MS}
[dataflow]
processes = ["127.0.0.1:{}", "127.0.0.1:{}"]
metrics = ["127.0.0.1:{}", "127.0.0.1:{}"]
[broadcaster]
main = "127.0.0.1:9000"
clusters = []
[gateway]
listen = "127.0.0.1:{}"
"#,
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port()
    )
}

fn event(stream: &str, emoji: &str, recv_ms: u64) -> String {
    let event = EmojiEvent {
        stream: stream.into(),
        user_id: "u".into(),
        emoji: emoji.into(),
        ts: None,
        recv_ms,
        request_id: None,
        attempt: None,
    };
    serde_json::to_string(&event).expect("an event serializes") + "\n"
}

/// Feeds every partition a record of on-time taps each tick, and every fifth tick a late tap,
/// until `stop`; each record counts in the truth once acknowledged.
async fn feed(config: Config, stop: Arc<AtomicBool>, truth: Arc<Mutex<Truth>>) {
    let producer = topic::producer(&config.kafka.brokers);
    let events = &config.kafka.events_topic;
    let mut tick = 0usize;
    while !stop.load(Ordering::Relaxed) {
        for partition in 0..PARTITIONS {
            let p = partition as usize;
            let stream = STREAMS[(tick + p) % STREAMS.len()];
            let recv_ms = now_ms();
            let emojis: Vec<&str> = (0..1 + tick % 3)
                .map(|i| EMOJIS[(tick + i * p) % EMOJIS.len()])
                .collect();
            let payload: String = emojis.iter().map(|e| event(stream, e, recv_ms)).collect();
            let record = FutureRecord::<str, _>::to(events)
                .partition(partition)
                .key(stream)
                .payload(&payload)
                .timestamp(recv_ms as i64);
            topic::send(&producer, record).await;
            {
                let mut truth = truth.lock().unwrap();
                let counts = (truth.on_time)
                    .entry((stream.to_string(), recv_ms / WINDOW_MS))
                    .or_default();
                for emoji in emojis {
                    *counts.entry(emoji.to_string()).or_default() += 1;
                }
            }
            if tick % 5 == p {
                let emoji = EMOJIS[tick % EMOJIS.len()];
                let recv_ms = now_ms() - LATE_BY_MS;
                let payload = event(LATE, emoji, recv_ms);
                let record = FutureRecord::<str, _>::to(events)
                    .partition(partition)
                    .key(LATE)
                    .payload(&payload)
                    .timestamp(recv_ms as i64);
                topic::send(&producer, record).await;
                *truth
                    .lock()
                    .unwrap()
                    .late
                    .entry(emoji.to_string())
                    .or_default() += 1;
            }
        }
        tick += 1;
        tokio::time::sleep(TAP_EVERY).await;
    }
}

/// Every record on `emoji-epochs`, in order.
async fn published(config: &Config) -> Vec<Vec<u8>> {
    let (brokers, epochs) = (
        config.kafka.brokers.clone(),
        config.kafka.epochs_topic.clone(),
    );
    tokio::task::spawn_blocking(move || topic::payloads(&brokers, &epochs))
        .await
        .expect("reader task")
}

/// One frame per (stream, epoch), with its bytes; panics if one was published twice differently.
fn distinct(payloads: &[Vec<u8>]) -> BTreeMap<(String, u64), (Vec<u8>, EpochFrame)> {
    let mut out: BTreeMap<(String, u64), (Vec<u8>, EpochFrame)> = BTreeMap::new();
    for payload in payloads {
        let frame: EpochFrame = serde_json::from_slice(payload).expect("an epoch frame");
        let key = (frame.stream.clone(), frame.epoch);
        match out.get(&key) {
            Some((first, _)) => assert_eq!(
                String::from_utf8_lossy(first),
                String::from_utf8_lossy(payload),
                "{key:?} was re-published differently"
            ),
            None => {
                out.insert(key, (payload.clone(), frame));
            }
        }
    }
    out
}

async fn progress_records(config: &Config) -> Vec<Progress> {
    let (brokers, progress) = (
        config.kafka.brokers.clone(),
        config.kafka.progress_topic.clone(),
    );
    tokio::task::spawn_blocking(move || topic::read_to_end(&brokers, &progress))
        .await
        .expect("reader task")
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("a progress record"))
        .collect()
}

/// The least floor over every partition, as the processes' metrics last reported them.
async fn least_floor(config: &Config) -> Option<u64> {
    let mut floors = BTreeMap::new();
    for addr in &config.dataflow.metrics {
        let body = http::get(addr, "/metrics").await.ok()?.body;
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("emostream_dataflow_floor_epoch{partition=\"") {
                let (partition, floor) = rest.split_once("\"} ")?;
                floors.insert(partition.to_string(), floor.parse::<u64>().ok()?);
            }
        }
    }
    (floors.len() == PARTITIONS as usize).then(|| floors.into_values().min())?
}

async fn exists(file: PathBuf, what: &str) {
    wait_until(what, DEADLINE, || {
        let exists = file.exists();
        async move { exists }
    })
    .await;
}

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn cluster(config: &Path, hold: &Path, log: &Path) -> Process {
    Process::spawn(
        "workers",
        workers::command(2, config)
            .env("EMOSTREAM_HOLD_AT", "before-progress-write,mid-schedule")
            .env("EMOSTREAM_HOLD_FILE", hold),
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_a_floor_schedule_half_published_replays_it_byte_for_byte() {
    // Not "dataflow-…": workers::pids finds the processes by "emostream-dataflow" in their command
    // lines, and the supervisor's names the configuration file in this folder.
    let dir = Scratch::new("schedule-crash");
    let (broker, config) = Broker::start(dir.path(), config_text);
    let truth = Arc::new(Mutex::new(Truth::default()));
    let stop_feeding = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn(feed(
        config.clone(),
        Arc::clone(&stop_feeding),
        Arc::clone(&truth),
    ));
    let hold = dir.join("hold");
    let hold_writer = with_suffix(&hold, ".before-progress-write");
    let hold_publishers = with_suffix(&hold, ".mid-schedule");
    let mut workers = cluster(broker.config_path(), &hold, &dir.join("workers.log"));

    // 1. A few records on the chain, then the writer held while the floors run ahead.
    wait_until("the first progress records", DEADLINE, || async {
        progress_records(&config).await.len() >= 3
    })
    .await;
    std::fs::write(&hold_writer, "").unwrap();
    exists(
        with_suffix(&hold_writer, ".held"),
        "the writer held before a record",
    )
    .await;
    // Armed only now: every epoch let out is published, so only the next schedule can hold.
    std::fs::write(&hold_publishers, "").unwrap();
    let last = progress_records(&config).await.pop().expect("records");
    let allowed = last.last_reproducible();
    let floor = wait_for("the floors ahead of the gate", DEADLINE, || async {
        least_floor(&config).await.filter(|f| *f >= allowed + AHEAD)
    })
    .await;

    // 2. One record lets them all out; the publishers send two of them.
    std::fs::remove_file(&hold_writer).unwrap();
    exists(
        with_suffix(&hold_publishers, ".held"),
        "the publishers held mid-schedule",
    )
    .await;
    let record = progress_records(&config).await.pop().expect("records");
    let through = record.last_reproducible();
    eprintln!(
        "record for epoch {} (floors at {floor}): schedule {}..={through}, holds {:?}",
        record.epoch,
        record.epoch + 1,
        record
            .partitions
            .iter()
            .map(|p| p.holds().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    assert_eq!(record.epoch, allowed, "the record follows the held one");
    assert!(
        through >= record.epoch + 4,
        "a schedule of four epochs or more"
    );
    assert!(
        record.partitions.iter().any(|p| {
            let holds: BTreeSet<i64> = p.holds().collect();
            holds.len() > 2
        }),
        "the floors passed the schedule's epochs at several offsets"
    );
    let schedule = record.epoch + 1..=through;
    let first_two: Vec<(String, u64)> = {
        let truth = truth.lock().unwrap();
        (truth.on_time.keys())
            .filter(|(_, e)| *e == record.epoch + 1 || *e == record.epoch + 2)
            .cloned()
            .collect()
    };
    assert!(!first_two.is_empty());
    wait_until(
        "the schedule's first two epochs published",
        DEADLINE,
        || async {
            let frames = distinct(&published(&config).await);
            first_two.iter().all(|k| frames.contains_key(k))
        },
    )
    .await;

    // 3. Every worker process killed; the supervisor frozen first, then killed too.
    workers.signal(libc::SIGSTOP);
    let pids = workers::pids(broker.config_path());
    assert_eq!(pids.len(), 2, "two worker processes");
    for pid in &pids {
        // SAFETY: kill(2) on a pid of our own test's dataflow process.
        assert_eq!(unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) }, 0);
    }
    wait_until("every worker process gone", DEADLINE, || {
        let gone = workers::pids(broker.config_path()).is_empty();
        async move { gone }
    })
    .await;
    workers.signal(libc::SIGKILL);
    let _ = workers.wait_until(std::time::Instant::now() + DEADLINE);
    let before = distinct(&published(&config).await);
    let in_schedule: Vec<(String, u64)> = (before.keys())
        .filter(|(_, e)| schedule.contains(e))
        .cloned()
        .collect();
    let unpublished = {
        let truth = truth.lock().unwrap();
        (truth.on_time.keys())
            .filter(|k| schedule.contains(&k.1) && !before.contains_key(*k))
            .count()
    };
    eprintln!(
        "killed: {} frames of the schedule published, {unpublished} on-time ones not",
        in_schedule.len()
    );
    assert!(
        unpublished > 0,
        "the schedule is half published at the kill"
    );
    assert_eq!(
        progress_records(&config).await.pop().map(|r| r.epoch),
        Some(record.epoch),
        "no record after the one whose schedule was in flight"
    );

    std::fs::remove_file(&hold_publishers).unwrap();
    let mut workers = cluster(broker.config_path(), &hold, &dir.join("workers.2.log"));
    wait_until(
        "the restarted cluster past the schedule",
        DEADLINE,
        || async {
            progress_records(&config)
                .await
                .last()
                .is_some_and(|r| r.epoch > through + 1)
        },
    )
    .await;
    stop_feeding.store(true, Ordering::Relaxed);
    feeder.await.expect("the feeder");
    let truth = truth.lock().unwrap().clone();
    let (payloads, frames) = wait_for("every tap published", DEADLINE, || async {
        let payloads = published(&config).await;
        let frames = distinct(&payloads);
        let late = late_counts(&frames);
        let on_time = frames.keys().filter(|(s, _)| s != LATE);
        (on_time.eq(truth.on_time.keys()) && late == truth.late).then_some((payloads, frames))
    })
    .await;
    workers.stop(Duration::from_secs(15));

    for (key, (_, frame)) in frames.iter().filter(|(k, _)| k.0 != LATE) {
        let want = &truth.on_time[key];
        let got: BTreeMap<String, u64> = (frame.emojis.iter())
            .map(|e| (e.emoji.clone(), e.count))
            .collect();
        assert_eq!(&got, want, "{key:?}");
        assert_eq!(frame.total, want.values().sum::<u64>(), "{key:?}");
        assert_eq!(frame.late, 0, "{key:?}");
    }
    // Every frame of the schedule published before the kill went out again, the same bytes.
    for key in &in_schedule {
        let bytes = &before[key].0;
        assert!(
            payloads.iter().filter(|p| *p == bytes).count() >= 2,
            "{key:?} was not re-published"
        );
    }
    let late_frames = in_schedule.iter().filter(|k| k.0 == LATE).count();
    eprintln!(
        "{} frames exact, {} records ({} identical re-publications, {late_frames} of late taps \
         in the schedule)",
        frames.len(),
        payloads.len(),
        payloads.len() - frames.len()
    );
    assert!(
        late_frames > 0,
        "late taps were published in the schedule's first epochs"
    );
    drop(broker);
}

/// The late taps counted, by emoji, over every epoch.
fn late_counts(frames: &BTreeMap<(String, u64), (Vec<u8>, EpochFrame)>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (_, frame) in frames.iter().filter(|(k, _)| k.0 == LATE).map(|(_, f)| f) {
        for e in &frame.emojis {
            *out.entry(e.emoji.clone()).or_default() += e.count;
        }
    }
    out
}
