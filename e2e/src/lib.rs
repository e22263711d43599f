//! Test harness: starts the real system — the development broker through `scripts/broker.sh`, the
//! gateway, a multi-process timely cluster through `scripts/run_workers.sh`, and every
//! broadcaster role as its own process — on free loopback ports, and talks to it over real
//! sockets. Everything stops (SIGTERM, then SIGKILL) when the [`System`] is dropped.
//!
//! The binaries come from the same target directory as the test (`scripts/test.sh` builds them
//! first).

pub mod broker;
pub mod http;
pub mod kafka;
pub mod trace;
pub mod viewer;

use emostream_protocol::Config;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    pub dir: PathBuf,
    config_path: PathBuf,
    children: Vec<(String, Child)>,
    broker: broker::Broker,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives inside the workspace")
        .to_path_buf()
}

/// `target/<profile>`, where cargo put this test's executable (`…/deps/test-hash`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf()
}

/// A binary of this workspace, from the target directory the test runs from.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A loopback port nobody uses right now, for a process started later to listen on.
///
/// It comes from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 and
/// up here), never from it: a port the kernel handed out and took back can be handed out again to
/// any outgoing connection — librdkafka's, the broker's to its PostgreSQL — before the process
/// it was meant for binds it, and that process then fails with "address in use". Each call in a
/// process takes the next candidate after a per-process starting point, so two calls never
/// return the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {high}");
}

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, deadline, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Waits until `probe` yields a value, polling every 20 ms; panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl System {
    /// Starts everything and returns once the gateway is ready and every subscriber answers.
    pub async fn start(topology: Topology) -> System {
        let dir = std::env::temp_dir().join(format!(
            "emostream-e2e-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        let broker_port = free_port();
        let config_text = config_text(&topology, broker_port);
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, &config_text).expect("writing the test's cluster.toml");
        let config = Config::from_toml(&config_text).expect("the generated configuration is valid");

        let broker = broker::Broker::start(broker_port, &dir.join("broker"), &config_path, &[]);
        let mut system = System {
            config,
            dir,
            config_path,
            children: Vec::new(),
            broker,
        };
        system.spawn(
            "gateway",
            Command::new(binary("emostream-gateway"))
                .arg("--config")
                .arg(&system.config_path),
        );
        let mut hosts: Vec<&str> = (0..topology.worker_processes)
            .map(|i| topology.host_of(i))
            .collect();
        hosts.dedup();
        for host in &hosts {
            let mut workers = Command::new(repo_root().join("scripts/run_workers.sh"));
            workers
                .args(["-n", &topology.worker_processes.to_string(), "-c"])
                .arg(&system.config_path)
                .env("EMOSTREAM_BIN_DIR", bin_dir());
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
            system.spawn(&name, &mut workers);
        }
        let broadcaster = binary("emostream-broadcaster");
        system.spawn(
            "main",
            Command::new(&broadcaster)
                .arg("--config")
                .arg(&system.config_path)
                .arg("main"),
        );
        for cluster in system.config.broadcaster.clusters.clone() {
            system.spawn(
                &cluster.name,
                Command::new(&broadcaster)
                    .arg("--config")
                    .arg(&system.config_path)
                    .args(["cluster", "--name", &cluster.name]),
            );
            for i in 0..cluster.subscribers.len() {
                let name = format!("{}-s{i}", cluster.name);
                system.spawn(
                    &name,
                    Command::new(&broadcaster)
                        .arg("--config")
                        .arg(&system.config_path)
                        .args(["subscriber", "--name", &name]),
                );
            }
        }

        let gateway = system.config.gateway.listen.clone();
        wait_until("the gateway to be ready", Duration::from_secs(60), || {
            let gateway = gateway.clone();
            async move {
                http::get(&gateway, "/readyz")
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        for sub in system.subscribers() {
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
        system
    }

    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("a log file");
        let child = command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.push((name.to_string(), child));
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

    pub fn gateway(&self) -> &str {
        &self.config.gateway.listen
    }

    /// The pids of this system's running dataflow processes (children of the supervisors).
    pub fn dataflow_pids(&self) -> Vec<u32> {
        let config = self.config_path.to_string_lossy().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    cmd.contains("emostream-dataflow") && cmd.contains(&config)
                })
            })
            .collect()
    }

    /// The pid of a child started by the harness, by name (`gateway`, `workers`, `c0-s1`, …).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }
}

impl System {
    /// SIGTERM to every process (the broadcaster side first), then waits up to 15 s for each;
    /// returns how each ended (`None`: it had to be killed). The broker keeps running.
    pub fn stop(&mut self) -> Vec<(String, Option<std::process::ExitStatus>)> {
        for (_, child) in self.children.iter().rev() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut out = Vec::new();
        for (name, mut child) in self.children.drain(..).rev() {
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!("{name} did not stop on SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            out.push((name, status));
        }
        out
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
                    tokio::task::spawn_blocking(move || kafka::read_all(&brokers, &topic))
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

    /// Runs `scripts/broker.sh ACTION` (`start`, `stop`, `kill`) on this system's broker: its
    /// port, data folder and configuration. `start` after `stop` resumes on the same data.
    pub fn broker(&self, action: &str) {
        self.broker.run(action);
    }

    /// The log a child wrote (stdout and stderr), by name.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
        // Before its data folder goes with the rest.
        self.broker.stop_quietly();
        // EMOSTREAM_KEEP_LOGS keeps a passing test's logs too, for looking at timings.
        if !std::thread::panicking() && std::env::var_os("EMOSTREAM_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

fn config_text(t: &Topology, broker_port: u16) -> String {
    let processes: Vec<String> = (0..t.worker_processes)
        .map(|i| format!("\"{}:{}\"", t.host_of(i), free_port()))
        .collect();
    let metrics: Vec<String> = (0..t.worker_processes)
        .map(|i| format!("\"{}:{}\"", t.host_of(i), free_port()))
        .collect();
    let mut text = format!(
        r#"[kafka]
brokers = "127.0.0.1:{broker_port}"
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
