//! A timely cluster across network hosts of its own (testkit's `netns`): the broker on host
//! `kafka`, dataflow process `i` on host `w{i}` under its own `run_workers.sh -p i`, as separate
//! machines would run them (or several processes per host, each host's `run_workers.sh -n N`
//! finding its own by their addresses), and a load produced straight to `emoji-events` from `kafka` (no
//! gateway: the hosts' links are what the tests cut). Every address is inside a namespace of its
//! own, so fixed ports never clash. Needs root and `ip` (`scripts/install_build_deps.sh`).

use crate::trace::{self, Truth};
use emostream_protocol::wire::{EmojiEvent, EpochFrame};
use emostream_testkit::netns::{Host, Net};
use emostream_testkit::procfs::pids_with;
use emostream_testkit::{
    bin_dir, free_port, now_ms, repo_root, topic, wait_for, Process, Rng, Scratch,
};
use rdkafka::producer::FutureRecord;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];
const PARTITIONS: i32 = 4;
const BROKER_PORT: u16 = 9092;

/// The cluster, its broker and its hosts; everything stops and is removed on drop.
pub struct HostCluster {
    pub window_ms: u64,
    pub brokers: String,
    pub config: PathBuf,
    pub kafka: Host,
    pub workers: Vec<Host>,
    /// Processes on each host: process `i` runs on host `w{i / per_host}`.
    per_host: usize,
    /// Declared before the broker, the folder and the namespaces: dropped (killed) first.
    supervisors: Vec<Option<Process>>,
    /// Held for its drop, which stops the broker.
    _broker: NsBroker,
    dir: Scratch,
    _net: Net,
}

/// The development broker inside a host, stopped on drop.
struct NsBroker {
    host: Host,
    data: PathBuf,
    config: PathBuf,
}

impl NsBroker {
    fn script(&self, action: &str) -> std::process::Command {
        let mut command = self.host.command(repo_root().join("scripts/broker.sh"));
        command
            .env("EMOSTREAM_BIN_DIR", bin_dir())
            .args([action, "--port", &BROKER_PORT.to_string(), "--data"])
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config);
        command
    }
}

impl Drop for NsBroker {
    fn drop(&mut self) {
        let _ = self.script("stop").status();
    }
}

impl HostCluster {
    /// Hosts, broker and topics, and `processes` supervisors, one per host, each started
    /// with `-p i`.
    pub fn start(name: &str, processes: usize, window_ms: u64) -> HostCluster {
        Self::start_on(name, processes, 1, window_ms)
    }

    /// `hosts` hosts with `per_host` processes each (ports 2101, 2102, …), and one supervisor
    /// per host, each started; with more than one process per host the supervisors get no
    /// `-p`, and each starts the processes whose addresses are its host's.
    pub fn start_on(name: &str, hosts: usize, per_host: usize, window_ms: u64) -> HostCluster {
        let labels: Vec<String> = std::iter::once("kafka".to_string())
            .chain((0..hosts).map(|i| format!("w{i}")))
            .collect();
        let net = Net::new(&labels.iter().map(String::as_str).collect::<Vec<_>>());
        let kafka = net.host("kafka").clone();
        let workers: Vec<Host> = (0..hosts)
            .map(|i| net.host(&format!("w{i}")).clone())
            .collect();
        let dir = Scratch::new(name);
        let brokers = format!("{}:{BROKER_PORT}", kafka.addr());
        let on_each = |port: u16| {
            workers
                .iter()
                .flat_map(|w| {
                    (0..per_host as u16).map(move |j| format!("\"{}:{}\"", w.addr(), port + j))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = dir.join("cluster.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{brokers}\"\nevents_partitions = {PARTITIONS}\n\
                 [epochs]\nwindow_ms = {window_ms}\nallowed_lateness_ms = 1000\ndivisor = 1000\n\
                 [gateway]\nlisten = \"127.0.0.1:{}\"\n\
                 [dataflow]\nprocesses = [{}]\nthreads = 1\nmetrics = [{}]\n\
                 [broadcaster]\nmain = \"127.0.0.1:{}\"\nclusters = []\n",
                free_port(),
                on_each(2101),
                on_each(9101),
                free_port(),
            ),
        )
        .expect("the test's configuration");
        let broker = NsBroker {
            host: kafka.clone(),
            data: dir.join("broker"),
            config: config.clone(),
        };
        let status = broker.script("start").status().expect("scripts/broker.sh");
        assert!(
            status.success(),
            "scripts/broker.sh start in {}",
            kafka.ns()
        );
        let mut cluster = HostCluster {
            window_ms,
            brokers,
            config,
            kafka,
            workers,
            per_host,
            supervisors: (0..hosts).map(|_| None).collect(),
            _broker: broker,
            dir,
            _net: net,
        };
        for i in 0..hosts {
            cluster.start_supervisor(i);
        }
        cluster
    }

    /// The supervisor of host `w{i}` (again, after it stopped): `run_workers.sh -p i` with one
    /// process per host, else `run_workers.sh -n N` alone; its log is `w{i}-<ms>.log`, one per
    /// start.
    pub fn start_supervisor(&mut self, i: usize) {
        let host = &self.workers[i];
        let mut command = host.command(repo_root().join("scripts/run_workers.sh"));
        let processes = self.workers.len() * self.per_host;
        command.args(["-n", &processes.to_string()]);
        if self.per_host == 1 {
            command.args(["-p", &i.to_string()]);
        }
        command
            .arg("-c")
            .arg(&self.config)
            .env("EMOSTREAM_BIN_DIR", bin_dir());
        let log = self.dir.join(format!("w{i}-{}.log", now_ms()));
        self.supervisors[i] = Some(Process::spawn(&format!("w{i}"), &mut command, &log));
    }

    /// The supervisor of host `w{i}`.
    pub fn supervisor(&mut self, i: usize) -> &mut Process {
        self.supervisors[i]
            .as_mut()
            .unwrap_or_else(|| panic!("no supervisor on w{i}"))
    }

    /// Everything host `w{i}`'s supervisors and their processes wrote, start after start.
    pub fn log(&self, i: usize) -> String {
        let prefix = format!("w{i}-");
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix))
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// The running dataflow process `-p i`, if any.
    pub fn dataflow_pid(&self, i: usize) -> Option<u32> {
        pids_with(&[
            "emostream-dataflow",
            &self.config.to_string_lossy(),
            &format!(" -p {i} "),
        ])
        .first()
        .copied()
    }

    /// Records on the progress topic: one per published epoch.
    pub fn progress_records(&self) -> i64 {
        let brokers = self.brokers.clone();
        self.kafka
            .enter(move || topic::watermarks(&brokers, "emoji-progress")[&0].1)
    }

    /// Every record on `emoji-epochs`, and one frame per (stream, epoch), any re-published
    /// frame checked byte-identical.
    pub fn epochs(&self) -> (usize, BTreeMap<(String, u64), EpochFrame>) {
        let brokers = self.brokers.clone();
        let payloads = self
            .kafka
            .enter(move || topic::payloads(&brokers, "emoji-epochs"));
        (payloads.len(), trace::distinct_frames(&payloads))
    }

    /// Waits up to 90 s until `emoji-epochs` holds every (stream, epoch) of `truth`, and returns
    /// what [`HostCluster::epochs`] read then.
    pub async fn published(&self, truth: &Truth) -> (usize, BTreeMap<(String, u64), EpochFrame>) {
        wait_for(
            "every epoch on emoji-epochs",
            Duration::from_secs(90),
            || {
                let (records, frames) = self.epochs();
                let all = truth.keys().all(|k| frames.contains_key(k));
                async move { all.then_some((records, frames)) }
            },
        )
        .await
    }

    /// Produces from host `kafka` in the background: one record per 20 ms, streams in turn, 30
    /// taps each, partitions in turn, for `duration`, each acknowledged before the next. The
    /// counter tells how many records are in; the thread returns the truth by (stream, epoch).
    pub fn load(&self, duration: Duration, seed: u64) -> Load {
        let produced = Arc::new(AtomicU64::new(0));
        let (kafka, brokers, window_ms) =
            (self.kafka.clone(), self.brokers.clone(), self.window_ms);
        let counter = Arc::clone(&produced);
        let thread = std::thread::spawn(move || {
            kafka.enter(|| produce(&brokers, window_ms, duration, seed, &counter))
        });
        Load { produced, thread }
    }
}

/// A load running in the background.
pub struct Load {
    pub produced: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Truth>,
}

impl Load {
    pub fn records(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Waits for the end of the load (off the async runtime's threads) and returns the truth.
    pub async fn truth(self) -> Truth {
        tokio::task::spawn_blocking(move || self.thread.join().expect("the load thread"))
            .await
            .expect("the load task")
    }
}

fn produce(
    brokers: &str,
    window_ms: u64,
    duration: Duration,
    seed: u64,
    produced: &AtomicU64,
) -> Truth {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let producer = topic::producer(brokers);
        let mut rng = Rng::seeded(seed);
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
                    user_id: Cow::Borrowed("host"),
                    emoji: Cow::Borrowed(emoji),
                    ts: None,
                    recv_ms,
                    request_id: None,
                    attempt: None,
                };
                payload.push_str(&serde_json::to_string(&event).expect("an event serializes"));
                payload.push('\n');
                *truth
                    .entry((stream.to_string(), recv_ms / window_ms))
                    .or_default()
                    .entry(emoji.to_string())
                    .or_default() += 1;
            }
            let record = FutureRecord::to("emoji-events")
                .partition(i as i32 % PARTITIONS)
                .key(stream)
                .payload(&payload)
                .timestamp(recv_ms as i64);
            topic::send(&producer, record).await;
            produced.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
        truth
    })
}
