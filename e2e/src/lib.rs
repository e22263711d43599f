//! Test harness: starts the real system — the development broker through `scripts/broker.sh`, the
//! gateway, a multi-process timely cluster through `scripts/run_workers.sh`, and every
//! broadcaster role as its own process — on free loopback ports, and talks to it over real
//! sockets. Everything stops (SIGTERM, then SIGKILL) when the [`System`] is dropped.
//!
//! The binaries come from the same target directory as the test (`scripts/test.sh` builds them
//! first). The general plumbing (broker, processes, HTTP, waiting) is `emostream-testkit`'s.
//!
//! # Layout
//!
//! - this file: [`Topology`] and [`System`], the whole system of one test.
//! - [`trace`]: known traces of taps, the ground truth built from the gateway's replies, and the
//!   exact comparison of published epochs against it.
//! - [`viewer`]: a WebSocket viewer recording every frame with its arrival time.
//! - [`taps`]: the benchmarks' open-loop tap driver; [`bench`]: the rest they share.
//! - [`hosts`]: a timely cluster across network namespaces ("hosts") with the broker on its own,
//!   for the tests that cut links or stop one host at a time.

pub mod bench;
pub mod hosts;
pub mod taps;
pub mod trace;
pub mod viewer;

use emostream_protocol::Config;
use emostream_testkit::{binary, free_port, http, procfs, topic, wait_for, wait_until, workers};
use emostream_testkit::{Broker, Process, Scratch};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// The shape of one test's system.
#[derive(Debug, Clone)]
pub struct Topology {
    pub worker_processes: usize,
    /// Worker threads per process.
    pub threads: usize,
    /// The loopback address of each worker process, as if each address were its own host; one
    /// `run_workers.sh -p …` supervisor runs per address. Empty: every process on 127.0.0.1,
    /// under one supervisor.
    pub worker_hosts: Vec<&'static str>,
    pub events_partitions: u32,
    pub window_ms: u64,
    pub allowed_lateness_ms: u64,
    /// Subscribers per cluster, one entry per cluster.
    pub clusters: Vec<usize>,
    /// Extra environment of the worker supervisors (and so of every dataflow process they
    /// start), e.g. a crash point.
    pub worker_env: Vec<(&'static str, String)>,
    /// Extra settings, as (section, TOML lines) added to that section of the configuration
    /// file: `("gateway", "stream_idle_s = 30".into())`.
    pub settings: Vec<(&'static str, String)>,
    /// Gateway processes, each on its own port ([`System::gateways`]).
    pub gateways: usize,
}

impl Default for Topology {
    /// Two worker processes, four partitions, 1 s epochs, one cluster with one subscriber.
    fn default() -> Self {
        Topology {
            worker_processes: 2,
            threads: 1,
            worker_hosts: Vec::new(),
            events_partitions: 4,
            window_ms: 1000,
            allowed_lateness_ms: 1000,
            clusters: vec![1],
            worker_env: Vec::new(),
            settings: Vec::new(),
            gateways: 1,
        }
    }
}

impl Topology {
    fn host_of(&self, process: usize) -> &'static str {
        self.worker_hosts
            .get(process)
            .copied()
            .unwrap_or("127.0.0.1")
    }
}

pub struct System {
    pub config: Config,
    config_path: PathBuf,
    /// The second gateway's address on, in order (the first is the configuration's).
    more_gateways: Vec<String>,
    processes: Vec<Process>,
    topology: Topology,
    /// How many times the processes were started: a restart's logs go to files of their own.
    starts: usize,
    broker: Broker,
    /// Declared last, so it is removed after the processes and the broker have stopped.
    dir: Scratch,
}

impl System {
    /// Starts everything and returns once the gateway is ready and every subscriber answers.
    pub async fn start(topology: Topology) -> System {
        let dir = Scratch::new("e2e");
        let (broker, config) = Broker::start(dir.path(), |address| config_text(&topology, address));
        let more_gateways = (1..topology.gateways)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut system = System {
            config,
            config_path: broker.config_path().to_path_buf(),
            more_gateways,
            processes: Vec::new(),
            topology,
            starts: 0,
            broker,
            dir,
        };
        system.spawn_all().await;
        system
    }

    /// Starts every process again after [`System::stop`], on the same broker, data and
    /// configuration, and returns once the gateway is ready and every subscriber answers.
    pub async fn restart(&mut self) {
        assert!(self.processes.is_empty(), "restart after stop");
        self.spawn_all().await;
    }

    async fn spawn_all(&mut self) {
        self.starts += 1;
        let topology = self.topology.clone();
        self.spawn(
            "gateway",
            Command::new(binary("emostream-gateway"))
                .arg("--config")
                .arg(&self.config_path),
        );
        for (i, listen) in self.more_gateways.clone().iter().enumerate() {
            self.spawn(
                &format!("gateway-{}", i + 1),
                Command::new(binary("emostream-gateway"))
                    .arg("--config")
                    .arg(&self.config_path)
                    .env("EMOSTREAM_GATEWAY__LISTEN", listen),
            );
        }
        let mut hosts: Vec<&str> = (0..topology.worker_processes)
            .map(|i| topology.host_of(i))
            .collect();
        hosts.dedup();
        for host in &hosts {
            let mut workers = workers::command(topology.worker_processes, &self.config_path);
            workers.envs(topology.worker_env.iter().map(|(k, v)| (k, v)));
            let name = if hosts.len() == 1 {
                "workers".to_string()
            } else {
                let mine: Vec<String> = (0..topology.worker_processes)
                    .filter(|i| topology.host_of(*i) == *host)
                    .map(|i| i.to_string())
                    .collect();
                workers.args(["-p", &mine.join(",")]);
                format!("workers-{host}")
            };
            self.spawn(&name, &mut workers);
        }
        let broadcaster = binary("emostream-broadcaster");
        self.spawn(
            "main",
            Command::new(&broadcaster)
                .arg("--config")
                .arg(&self.config_path)
                .arg("main"),
        );
        for cluster in self.config.broadcaster.clusters.clone() {
            self.spawn(
                &cluster.name,
                Command::new(&broadcaster)
                    .arg("--config")
                    .arg(&self.config_path)
                    .args(["cluster", "--name", &cluster.name]),
            );
            for i in 0..cluster.subscribers.len() {
                let name = format!("{}-s{i}", cluster.name);
                self.spawn(
                    &name,
                    Command::new(&broadcaster)
                        .arg("--config")
                        .arg(&self.config_path)
                        .args(["subscriber", "--name", &name]),
                );
            }
        }

        for gateway in self.gateways() {
            wait_until(
                &format!("the gateway on {gateway} to be ready"),
                Duration::from_secs(60),
                || {
                    let gateway = gateway.clone();
                    async move {
                        http::get(&gateway, "/readyz")
                            .await
                            .is_ok_and(|r| r.status == 200)
                    }
                },
            )
            .await;
        }
        for sub in self.subscribers() {
            wait_until(
                &format!("subscriber {sub}"),
                Duration::from_secs(60),
                || {
                    let sub = sub.clone();
                    async move {
                        http::get(&sub, "/healthz")
                            .await
                            .is_ok_and(|r| r.status == 200)
                    }
                },
            )
            .await;
        }
    }

    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log = match self.starts {
            1 => self.dir.join(format!("{name}.log")),
            n => self.dir.join(format!("{name}.{n}.log")),
        };
        self.processes.push(Process::spawn(name, command, &log));
    }

    /// Every subscriber's `host:port`, cluster by cluster.
    pub fn subscribers(&self) -> Vec<String> {
        self.config
            .broadcaster
            .clusters
            .iter()
            .flat_map(|c| c.subscribers.clone())
            .collect()
    }

    /// Waits until the main publisher's `/v1/topology` lists every subscriber: before that,
    /// `/register` places viewers on the subscribers it knows so far only.
    pub async fn topology_complete(&self, deadline: Duration) {
        let main = self.config.broadcaster.main.clone();
        let want = self.subscribers().len();
        wait_until(
            "every subscriber in the main publisher's topology",
            deadline,
            || {
                let main = main.clone();
                async move {
                    let Ok(r) = http::get(&main, "/v1/topology").await else {
                        return false;
                    };
                    serde_json::from_str::<emostream_protocol::wire::TopologyView>(&r.body)
                        .is_ok_and(|t| {
                            t.clusters
                                .iter()
                                .map(|c| c.subscribers.len())
                                .sum::<usize>()
                                == want
                        })
                }
            },
        )
        .await;
    }

    /// The configuration file every process of this system reads.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// How the child named `name` ended, if it has (`None` while it runs).
    pub fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        self.processes
            .iter_mut()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no process named {name}"))
            .try_exit()
    }

    /// Sends `signal` to the child named `name` (e.g. SIGKILL to a supervisor, so that it
    /// restarts nothing), without waiting.
    pub fn signal(&self, name: &str, signal: i32) {
        self.processes
            .iter()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no process named {name}"))
            .signal(signal);
    }

    pub fn gateway(&self) -> &str {
        &self.config.gateway.listen
    }

    /// Every gateway's `host:port`, the configuration's first.
    pub fn gateways(&self) -> Vec<String> {
        std::iter::once(self.config.gateway.listen.clone())
            .chain(self.more_gateways.iter().cloned())
            .collect()
    }

    /// The pids of this system's running dataflow processes (children of the supervisors).
    pub fn dataflow_pids(&self) -> Vec<u32> {
        workers::pids(&self.config_path)
    }

    /// Each running process of this system by name, with its pid: the dataflow processes as
    /// `dataflow-<pid>` in place of their supervisors.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = (self.processes.iter())
            .filter(|p| !p.name().starts_with("workers"))
            .map(|p| (p.name().to_string(), p.pid()))
            .collect();
        let mut dataflow = self.dataflow_pids();
        dataflow.sort_unstable();
        out.extend(
            dataflow
                .into_iter()
                .map(|pid| (format!("dataflow-{pid}"), pid)),
        );
        out
    }

    /// Each running process's resident memory in KiB, by name (as [`System::pids`]).
    pub fn resident_kib(&self) -> Vec<(String, u64)> {
        (self.pids().into_iter())
            .filter_map(|(name, pid)| Some((name, procfs::rss_kib(pid)?)))
            .collect()
    }

    /// Each running process's anonymous resident memory (`RssAnon`) in KiB, by name: its heap,
    /// stacks and the allocator's arenas, without the pages of its binary and libraries mapped
    /// from disk (`RssFile`), which grow as code runs for the first time and which the kernel
    /// may drop, not the process give back.
    pub fn anonymous_kib(&self) -> Vec<(String, u64)> {
        (self.pids().into_iter())
            .filter_map(|(name, pid)| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("RssAnon:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some((name, kib))
            })
            .collect()
    }

    /// SIGTERM to every process (the broadcaster side first), then waits up to 15 s for each;
    /// returns how each ended (`None`: it had to be killed). The broker keeps running.
    pub fn stop(&mut self) -> Vec<(String, Option<ExitStatus>)> {
        for process in self.processes.iter().rev() {
            process.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        self.processes
            .drain(..)
            .rev()
            .map(|mut process| {
                let status = process.wait_until(deadline);
                (process.name().to_string(), status)
            })
            .collect()
    }

    /// Waits until `emoji-epochs` holds each stream's marker epoch (so, epochs being published
    /// in order per stream, everything before it too) and returns every record read then, and
    /// the distinct frames (checking that any re-published frame is byte-identical).
    pub async fn published_through(
        &self,
        markers: &std::collections::BTreeMap<String, u64>,
        deadline: Duration,
    ) -> (
        usize,
        std::collections::BTreeMap<(String, u64), emostream_protocol::wire::EpochFrame>,
    ) {
        let (brokers, topic) = (
            self.config.kafka.brokers.clone(),
            self.config.kafka.epochs_topic.clone(),
        );
        wait_for("every marker epoch on emoji-epochs", deadline, || {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            async move {
                let payloads =
                    tokio::task::spawn_blocking(move || topic::payloads(&brokers, &topic))
                        .await
                        .expect("reader task");
                let frames = trace::distinct_frames(&payloads);
                markers
                    .iter()
                    .all(|(s, e)| frames.contains_key(&(s.clone(), *e)))
                    .then_some((payloads.len(), frames))
            }
        })
        .await
    }

    /// This system's broker, to stop, kill and start again (on the same data) during a test.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The log a child wrote (stdout and stderr), by name.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
        // The broker stops when its field drops, before the folder holding its data goes.
    }
}

fn config_text(t: &Topology, broker: &str) -> String {
    let processes: Vec<String> = (0..t.worker_processes)
        .map(|i| format!("\"{}:{}\"", t.host_of(i), free_port()))
        .collect();
    let metrics: Vec<String> = (0..t.worker_processes)
        .map(|i| format!("\"{}:{}\"", t.host_of(i), free_port()))
        .collect();
    let mut text = format!(
        r#"[kafka]
brokers = "{broker}"
events_partitions = {partitions}
[epochs]
window_ms = {window}
allowed_lateness_ms = {lateness}
divisor = 1000
[gateway]
listen = "127.0.0.1:{gateway}"
[dataflow]
processes = [{processes}]
threads = {threads}
metrics = [{metrics}]
[broadcaster]
main = "127.0.0.1:{main}"
"#,
        partitions = t.events_partitions,
        window = t.window_ms,
        lateness = t.allowed_lateness_ms,
        gateway = free_port(),
        processes = processes.join(", "),
        threads = t.threads,
        metrics = metrics.join(", "),
        main = free_port(),
    );
    for (section, lines) in &t.settings {
        let header = format!("[{section}]\n");
        let at = text
            .find(&header)
            .unwrap_or_else(|| panic!("no [{section}] in the test configuration"))
            + header.len();
        text.insert_str(at, &format!("{lines}\n"));
    }
    for (i, subscribers) in t.clusters.iter().enumerate() {
        let subs: Vec<String> = (0..*subscribers)
            .map(|_| format!("\"127.0.0.1:{}\"", free_port()))
            .collect();
        text.push_str(&format!(
            "[[broadcaster.clusters]]\nname = \"c{i}\"\nlisten = \"127.0.0.1:{}\"\nsubscribers = [{}]\n",
            free_port(),
            subs.join(", ")
        ));
    }
    text
}
