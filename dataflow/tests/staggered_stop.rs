//! A staggered graceful stop, as when SIGTERM reaches one host (or one worker thread) before
//! another: two workers (`run_worker`, in one process but each with its own stop flag), each
//! owning one of the two partitions of `emoji-events` on a real broker, fed taps straight onto
//! the topic (receive time: now) the whole time. Worker 0's source stops first and the taps on its
//! partition go unread while worker 1's floor runs epochs ahead; then worker 1 stops. No epoch may
//! be published without worker 0's unread taps, and a restart must publish exactly the truth,
//! re-publishing any epoch byte for byte.

use emostream_dataflow::metrics::Metrics;
use emostream_dataflow::run_worker;
use emostream_protocol::wire::{EmojiEvent, EpochFrame};
use emostream_protocol::Config;
use emostream_testkit::{now_ms, topic, wait_for, wait_until, Broker, Scratch};
use rdkafka::producer::FutureRecord;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
/// Far beyond what any step here takes (a few epochs, a broker round trip, a dataflow start) on
/// a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
/// A tap arrives on each partition every this often.
const TAP_EVERY: Duration = Duration::from_millis(30);
const STREAMS: [&str; 2] = ["alpha", "beta"];
const EMOJIS: [&str; 3] = ["🔥", "❤️", "👍🏽"];

/// (stream, epoch) → emoji → taps.
type Truth = BTreeMap<(String, u64), BTreeMap<String, u64>>;

fn config_text(broker: &str) -> String {
    format!(
        r#"[kafka]
brokers = "{broker}"
events_partitions = 2
[epochs]
window_ms = {WINDOW_MS}
allowed_lateness_ms = 1000
[dataflow]
processes = ["127.0.0.1:2101"]
threads = 2
[broadcaster]
main = "127.0.0.1:9000"
clusters = []
[gateway]
listen = "127.0.0.1:8080"
"#
    )
}

/// Two workers of one process, each stopped by its own flag.
struct Cluster {
    stops: [Arc<AtomicBool>; 2],
    metrics: Arc<Metrics>,
    done: mpsc::Receiver<Vec<Result<(), String>>>,
}

impl Cluster {
    fn start(config: &Config) -> Cluster {
        let stops = [(); 2].map(|_| Arc::new(AtomicBool::new(false)));
        let metrics = Arc::new(Metrics::default());
        let (send, done) = mpsc::channel();
        let (config, flags, shared) = (config.clone(), stops.clone(), Arc::clone(&metrics));
        std::thread::spawn(move || {
            let guards = timely::execute(timely::Config::process(2), move |worker| {
                let stop = Arc::clone(&flags[worker.index()]);
                run_worker(worker, &config, stop, Arc::clone(&shared)).map_err(|e| e.to_string())
            })
            .expect("timely starts");
            let results = guards
                .join()
                .into_iter()
                .map(|r| r.and_then(|r| r))
                .collect();
            let _ = send.send(results);
        });
        Cluster {
            stops,
            metrics,
            done,
        }
    }

    fn stop(&self, worker: usize) {
        self.stops[worker].store(true, Ordering::Relaxed);
    }

    /// The floor of `partition` as its source last reported it.
    fn floor(&self, partition: i32) -> Option<u64> {
        let line = format!("emostream_dataflow_floor_epoch{{partition=\"{partition}\"}} ");
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.parse().ok())
    }

    /// Waits until both workers have returned, each without an error.
    async fn join(self) {
        let results = tokio::task::spawn_blocking(move || self.done.recv_timeout(DEADLINE))
            .await
            .expect("join task")
            .expect("both workers return after their stop");
        assert_eq!(results, vec![Ok(()), Ok(())]);
    }
}

/// Sends taps to both partitions until `stop`, each record acknowledged before it counts in
/// the truth.
async fn feed(config: Config, stop: Arc<AtomicBool>, truth: Arc<Mutex<Truth>>) {
    let producer = topic::producer(&config.kafka.brokers);
    let mut tick = 0usize;
    while !stop.load(Ordering::Relaxed) {
        for partition in 0..2 {
            let stream = STREAMS[(tick + partition) % 2];
            let recv_ms = now_ms();
            let emojis: Vec<&str> = (0..1 + tick % 3)
                .map(|i| EMOJIS[(tick + i * partition) % 3])
                .collect();
            let payload: String = emojis
                .iter()
                .map(|emoji| {
                    let event = EmojiEvent {
                        stream: stream.into(),
                        user_id: "u".into(),
                        emoji: (*emoji).into(),
                        ts: None,
                        recv_ms,
                        request_id: None,
                        attempt: None,
                    };
                    serde_json::to_string(&event).expect("an event serializes") + "\n"
                })
                .collect();
            let record = FutureRecord::<str, _>::to(&config.kafka.events_topic)
                .partition(partition as i32)
                .key(stream)
                .payload(&payload)
                .timestamp(recv_ms as i64);
            topic::send(&producer, record).await;
            let mut truth = truth.lock().unwrap();
            let counts = truth
                .entry((stream.to_string(), recv_ms / WINDOW_MS))
                .or_default();
            for emoji in emojis {
                *counts.entry(emoji.to_string()).or_default() += 1;
            }
        }
        tick += 1;
        tokio::time::sleep(TAP_EVERY).await;
    }
}

/// Every frame on `emoji-epochs`, one per (stream, epoch), and how many records held them;
/// panics if a (stream, epoch) was published twice with different bytes.
async fn published(config: &Config) -> (BTreeMap<(String, u64), EpochFrame>, usize) {
    let (brokers, epochs) = (
        config.kafka.brokers.clone(),
        config.kafka.epochs_topic.clone(),
    );
    let payloads = tokio::task::spawn_blocking(move || topic::payloads(&brokers, &epochs))
        .await
        .expect("reader task");
    let mut frames: BTreeMap<(String, u64), (String, EpochFrame)> = BTreeMap::new();
    for payload in &payloads {
        let text = String::from_utf8(payload.clone()).expect("UTF-8");
        let frame: EpochFrame = serde_json::from_str(&text).expect("an epoch frame");
        let key = (frame.stream.clone(), frame.epoch);
        match frames.get(&key) {
            Some((first, _)) => assert_eq!(first, &text, "{key:?} was re-published differently"),
            None => {
                frames.insert(key, (text, frame));
            }
        }
    }
    let frames = frames.into_iter().map(|(k, (_, f))| (k, f)).collect();
    (frames, payloads.len())
}

/// Asserts that `frame` holds exactly the taps of the truth for its (stream, epoch).
fn assert_matches(frame: &EpochFrame, truth: &Truth, what: &str) {
    let key = (frame.stream.clone(), frame.epoch);
    let want = truth
        .get(&key)
        .unwrap_or_else(|| panic!("{what}: {key:?} published without taps"));
    let got: BTreeMap<String, u64> = frame
        .emojis
        .iter()
        .map(|e| (e.emoji.clone(), e.count))
        .collect();
    assert_eq!(&got, want, "{what}: {key:?}");
    assert_eq!(frame.total, want.values().sum::<u64>(), "{what}: {key:?}");
    assert_eq!(frame.late, 0, "{what}: {key:?} late taps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_stops_first_holds_every_later_epoch() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = Scratch::new("dataflow-staggered");
    let (broker, config) = Broker::start(dir.path(), config_text);
    let truth = Arc::new(Mutex::new(Truth::new()));
    let stop_feeding = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn(feed(
        config.clone(),
        Arc::clone(&stop_feeding),
        Arc::clone(&truth),
    ));

    let first = Cluster::start(&config);
    wait_until("two epochs of both streams published", DEADLINE, || async {
        published(&config).await.0.len() >= 4
    })
    .await;
    first.stop(0);
    // Worker 1 keeps reading: its floor runs three epochs past worker 0's stopped one.
    let (held, ahead) = wait_for("worker 1's floor 3 epochs ahead", DEADLINE, || {
        let floors = (first.floor(0), first.floor(1));
        async move {
            match floors {
                (Some(f0), Some(f1)) if f1 >= f0 + 3 => Some((f0, f1)),
                _ => None,
            }
        }
    })
    .await;
    first.stop(1);
    first.join().await;

    let (frames, _) = published(&config).await;
    let last = frames.keys().map(|k| k.1).max().expect("epochs published");
    eprintln!("first run: floors {held} and {ahead} at the stop; epochs published through {last}");
    assert!(
        last < held,
        "epoch {last} was published though worker 0 stopped reading at its floor {held}"
    );
    {
        let truth = truth.lock().unwrap();
        for frame in frames.values() {
            assert_matches(frame, &truth, "first run");
        }
    }

    let second = Cluster::start(&config);
    wait_until(
        "the restarted floors past the first run's",
        DEADLINE,
        || {
            let passed = [0, 1].map(|p| second.floor(p).is_some_and(|f| f > ahead + 1));
            async move { passed == [true, true] }
        },
    )
    .await;
    stop_feeding.store(true, Ordering::Relaxed);
    feeder.await.expect("the feeder");
    let truth = truth.lock().unwrap().clone();
    let (frames, records) = wait_for("every epoch with taps published", DEADLINE, || async {
        let (frames, records) = published(&config).await;
        frames.keys().eq(truth.keys()).then_some((frames, records))
    })
    .await;
    second.stop(0);
    second.stop(1);
    second.join().await;
    for frame in frames.values() {
        assert_matches(frame, &truth, "after the restart");
    }
    eprintln!(
        "{} epochs exact, {records} records ({} identical re-publications)",
        frames.len(),
        records - frames.len()
    );
    drop(broker);
}
