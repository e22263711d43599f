//! A host cut off: the broker on network host `kafka`, the two dataflow processes on hosts `a`
//! and `b` (network namespaces on a bridge, testkit's `netns`), each under its own
//! `run_workers.sh -p i`. Under a steady load produced straight to `emoji-events` from `kafka`,
//! `b`'s link is set down: nothing it sends arrives and nothing reaches it, and no socket is
//! closed. Process 0 on `a` must notice and be restarted by its supervisor within the bound of
//! `dataflow/src/links.rs` (15 s of unacknowledged data, or 10 s of unanswered keepalives, plus
//! the supervisor's second), not after TCP's ~15 minutes. Once `b` is back the cluster forms
//! again, and after the load `emoji-epochs` holds exactly the truth.
//!
//! Needs root and `ip` (`scripts/install_build_deps.sh`), as every netns test does.

use emostream_e2e::trace::{self, Truth};
use emostream_protocol::wire::EmojiEvent;
use emostream_testkit::netns::{Host, Net};
use emostream_testkit::procfs::pids_with;
use emostream_testkit::{
    bin_dir, free_port, now_ms, repo_root, topic, wait_for, Process, Rng, Scratch,
};
use rdkafka::producer::FutureRecord;
use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

const WINDOW_MS: u64 = 1000;
const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];
const PARTITIONS: i32 = 4;
/// links.rs: the user timeout (15 s) is the longer of the two ways a dead link is noticed; the
/// supervisor restarts 1 s after an exit; 14 s of margin for a loaded 2-core machine (an abort,
/// a core dump written, a process start).
const RESTART_BOUND: Duration = Duration::from_secs(30);

/// The development broker inside `host`, stopped on drop.
struct Broker<'a> {
    host: &'a Host,
    port: u16,
    data: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl<'a> Broker<'a> {
    fn start(host: &'a Host, port: u16, dir: &Path, config: &Path) -> Broker<'a> {
        let broker = Broker {
            host,
            port,
            data: dir.join("broker"),
            config: config.to_path_buf(),
        };
        let status = broker.script("start").status().expect("scripts/broker.sh");
        assert!(status.success(), "scripts/broker.sh start in {}", host.ns());
        broker
    }

    fn script(&self, action: &str) -> std::process::Command {
        let mut command = self.host.command(repo_root().join("scripts/broker.sh"));
        command
            .env("EMOSTREAM_BIN_DIR", bin_dir())
            .args([action, "--port", &self.port.to_string(), "--data"])
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config);
        command
    }
}

impl Drop for Broker<'_> {
    fn drop(&mut self) {
        let _ = self.script("stop").status();
    }
}

/// The dataflow process `-p index` of this test's cluster, if one runs.
fn dataflow_pid(config: &Path, index: usize) -> Option<u32> {
    pids_with(&[
        "emostream-dataflow",
        &config.to_string_lossy(),
        &format!(" -p {index} "),
    ])
    .first()
    .copied()
}

/// One record per 20 ms, streams in turn, 30 taps each, over the partitions in turn, for
/// `duration`, each acknowledged before the next; returns what was sent by (stream, epoch).
fn produce(brokers: &str, topic_name: &str, duration: Duration) -> Truth {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let producer = topic::producer(brokers);
        let mut rng = Rng::seeded(17);
        let mut truth = Truth::new();
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        let started = Instant::now();
        let mut i = 0usize;
        while started.elapsed() < duration {
            pace.tick().await;
            let stream = STREAMS[i % STREAMS.len()];
            let recv_ms = now_ms();
            let mut payload = String::new();
            for _ in 0..30 {
                let emoji = trace::emoji(&mut rng);
                let event = EmojiEvent {
                    stream: Cow::Borrowed(stream),
                    user_id: Cow::Borrowed("cut"),
                    emoji: Cow::Borrowed(emoji),
                    ts: None,
                    recv_ms,
                };
                payload.push_str(&serde_json::to_string(&event).expect("an event serializes"));
                payload.push('\n');
                *truth
                    .entry((stream.to_string(), recv_ms / WINDOW_MS))
                    .or_default()
                    .entry(emoji.to_string())
                    .or_default() += 1;
            }
            let record = FutureRecord::to(topic_name)
                .partition(i as i32 % PARTITIONS)
                .key(stream)
                .payload(&payload)
                .timestamp(recv_ms as i64);
            topic::send(&producer, record).await;
            i += 1;
        }
        truth
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_host_restarts_the_cluster_within_the_bound_and_epochs_stay_exact() {
    let net = Net::new(&["kafka", "a", "b"]);
    let (kafka, a, b) = (net.host("kafka"), net.host("a"), net.host("b"));
    let dir = Scratch::new("e2e-host-cut");
    // Every address is inside a namespace of its own, so fixed ports do not clash.
    let brokers = format!("{}:9092", kafka.addr());
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "{brokers}"
events_partitions = {PARTITIONS}
[epochs]
window_ms = {WINDOW_MS}
allowed_lateness_ms = 1000
divisor = 1000
[gateway]
listen = "127.0.0.1:{gateway}"
[dataflow]
processes = ["{a}:2101", "{b}:2101"]
threads = 1
metrics = ["{a}:9101", "{b}:9101"]
[broadcaster]
main = "127.0.0.1:{main}"
clusters = []
"#,
            a = a.addr(),
            b = b.addr(),
            gateway = free_port(),
            main = free_port(),
        ),
    )
    .expect("the test's config");
    let _broker = Broker::start(kafka, 9092, dir.path(), &config);
    let mut supervisors: Vec<Process> = [(a, 0), (b, 1)]
        .into_iter()
        .map(|(host, index)| {
            let mut command = host.command(repo_root().join("scripts/run_workers.sh"));
            command
                .args(["-n", "2", "-p", &index.to_string(), "-c"])
                .arg(&config)
                .env("EMOSTREAM_BIN_DIR", bin_dir());
            Process::spawn(
                &format!("workers-{}", host.label()),
                &mut command,
                &dir.join(format!("workers-{}.log", host.label())),
            )
        })
        .collect();
    let progress =
        |brokers: String| kafka.enter(move || topic::watermarks(&brokers, "emoji-progress")[&0].1);

    let load = {
        let (kafka, brokers) = (kafka.clone(), brokers.clone());
        std::thread::spawn(move || {
            kafka.enter(|| produce(&brokers, "emoji-events", Duration::from_secs(45)))
        })
    };
    wait_for(
        "the cluster to record progress",
        Duration::from_secs(60),
        || {
            let recorded = progress(brokers.clone());
            async move { (recorded >= 5).then_some(()) }
        },
    )
    .await;
    let before = dataflow_pid(&config, 0).expect("process 0 runs");

    b.set_link(false);
    let cut = Instant::now();
    eprintln!("host b cut off");
    let restarted = wait_for("process 0 on host a to be restarted", RESTART_BOUND, || {
        let now = dataflow_pid(&config, 0);
        async move { now.filter(|pid| *pid != before).map(|_| cut.elapsed()) }
    })
    .await;
    eprintln!("process 0 restarted {restarted:?} after the cut (bound {RESTART_BOUND:?})");
    b.set_link(true);

    let recorded = progress(brokers.clone());
    wait_for(
        "the cluster to record progress again",
        Duration::from_secs(90),
        || {
            let now = progress(brokers.clone());
            async move { (now > recorded).then_some(()) }
        },
    )
    .await;
    let truth = tokio::task::spawn_blocking(move || load.join().expect("the load thread"))
        .await
        .expect("the load task");
    let frames = wait_for(
        "every epoch on emoji-epochs",
        Duration::from_secs(90),
        || {
            let payloads = {
                let brokers = brokers.clone();
                kafka.enter(move || topic::payloads(&brokers, "emoji-epochs"))
            };
            let frames = trace::distinct_frames(&payloads);
            let all = truth.keys().all(|k| frames.contains_key(k));
            async move { all.then_some(frames) }
        },
    )
    .await;
    eprintln!(
        "{} epochs exact, {} taps",
        frames.len(),
        truth.values().flat_map(|m| m.values()).sum::<u64>()
    );
    trace::assert_exact(&frames, &truth, WINDOW_MS, "emoji-epochs after a host cut");
    for supervisor in &mut supervisors {
        supervisor.stop(Duration::from_secs(15));
    }
}
