//! Dataflow throughput and epoch latency against a bare rdkafka consumer of the same topic.
//!
//! ```text
//! scripts/bench_dataflow.sh                   # 20,000,000 events (builds the release binaries first)
//! scripts/bench_dataflow.sh --events 2000000  # a quick run
//! cargo bench -p emostream-dataflow --bench throughput -- --help
//! ```
//!
//! One run starts its own broker (`scripts/broker.sh` on a free loopback port, the storage engine
//! named by `EMOSTREAM_DEV_BROKER__STORAGE`, PostgreSQL by default) and preloads `emoji-events` with `--events` taps written exactly as the gateway writes
//! them: batch records of NDJSON lines (`protocol::wire::EmojiEvent`), at most `--record-events`
//! per record, one (stream, epoch) per record, key = stream, record timestamp = the newest tap's
//! `recv_ms`, lz4, spread round-robin over the partitions. The taps' receive times cover
//! `--span-epochs` contiguous epochs ending a minute ago, so every epoch closes by watermark while
//! the dataflow catches up. Then it measures, on that same topic:
//!
//! - **bare consume**: one rdkafka `BaseConsumer` assigned every partition from the beginning,
//!   reading until the high watermarks and counting taps as newlines in the payloads. This is the
//!   ceiling: what the broker and librdkafka deliver to one thread that does no work. Best of two
//!   passes (the first warms the broker); `MB/s` is NDJSON payload bytes.
//! - **dataflow, N processes**: `scripts/run_workers.sh -n N` (one worker thread each) from spawn
//!   until the frame of the last preloaded epoch of every stream has been consumed from
//!   `emoji-epochs`. Each run gets fresh epochs and progress topics, so it starts from the
//!   beginning. The frames' `total`s must add up to the preloaded count (asserted).
//!   `events/s` is preloaded taps / those seconds; `ratio` is that over the bare rate (target
//!   ≥ 0.8); `cpu s` is the user+system CPU time of the dataflow processes and of the broker
//!   during the run (two shared cores: the broker competes with the dataflow for them).
//! - **steady load**: a fresh topic set and a `--steady-processes` cluster; the bench produces
//!   `--steady-rate` taps/s for `--steady-secs` straight into Kafka as the gateway would (one
//!   record per (partition, stream, epoch) every `flush_ms`, `recv_ms` = now), and consumes the
//!   frames. Latency = wall time the frame was consumed − the epoch's `end_ms`, over the frames
//!   of the epochs that began after a warm-up and ended before the load stopped. It includes the
//!   consume hop (broker fetch + this consumer, `fetch.wait.max.ms` = 5). Target: p99 ≤
//!   `allowed_lateness_ms` + 100 ms. The design floor is `allowed_lateness_ms` + how far the
//!   broker-confirmed clock of an idle partition trails (the end probe's 25 ms interval and its
//!   round trip): an epoch cannot close earlier.
//!
//! Everything runs on loopback, every wait has a deadline, and the broker and the worker
//! processes are stopped on exit, on panic and on SIGINT/SIGTERM.

use emostream_protocol::epoch::{epoch_bounds, epoch_of};
use emostream_protocol::wire::{ClientTs, EmojiEvent, EpochFrame};
use emostream_protocol::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const EVENTS_TOPIC: &str = "emoji-events";
const EMOJIS: [(&str, u32); 8] = [
    ("🔥", 40),
    ("👍🏽", 20),
    ("❤️", 12),
    ("😂", 10),
    ("👏", 8),
    ("🇮🇳", 5),
    ("👨‍👩‍👧", 3),
    ("🎉", 2),
];

/// Set by SIGINT/SIGTERM. Registering the flag also replaces the signals' default action, so
/// the bench stops at its next check and every guard's `Drop` runs.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Panics (so every guard's `Drop` runs) once SIGINT or SIGTERM has arrived.
fn check_interrupted() {
    if INTERRUPTED.load(Ordering::Relaxed) {
        panic!("interrupted");
    }
}

/// Dataflow throughput and epoch latency against a bare rdkafka consumer of the same topic.
#[derive(Debug, Clone, clap::Parser)]
#[command(bin_name = "cargo bench -p emostream-dataflow --bench throughput --")]
struct Args {
    /// Taps to preload.
    #[arg(long, value_name = "N", default_value = "20000000", value_parser = count)]
    events: u64,
    /// Epochs the preload covers.
    #[arg(long, value_name = "E", default_value = "50", value_parser = count)]
    span_epochs: u64,
    /// Streams.
    #[arg(long, value_name = "S", default_value = "8", value_parser = count)]
    streams: u64,
    /// emoji-events partitions.
    #[arg(long, value_name = "P", default_value = "4", value_parser = clap::value_parser!(u32).range(1..))]
    partitions: u32,
    /// Taps per record at most.
    #[arg(long, value_name = "N", default_value = "20000", value_parser = count)]
    record_events: u64,
    /// Dataflow process counts, one catch-up run each.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "1,2",
        value_delimiter = ','
    )]
    processes: Vec<usize>,
    /// Steady load, taps/s.
    #[arg(long, value_name = "R", default_value = "50000", value_parser = number)]
    steady_rate: u64,
    /// Steady load duration; 0 skips it.
    #[arg(long, value_name = "T", default_value = "30", value_parser = number)]
    steady_secs: u64,
    /// Processes under steady load.
    #[arg(long, value_name = "N", default_value_t = 2)]
    steady_processes: usize,
    /// Deadline of each phase.
    #[arg(long, value_name = "T", default_value = "900", value_parser = number)]
    timeout_secs: u64,
    /// Ignored: `cargo bench` passes it to every bench.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A number, written with `_` or `,` between digit groups if wanted (`20_000_000`).
fn number(text: &str) -> Result<u64, String> {
    text.replace(['_', ','], "")
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// A [`number`] above 0.
fn count(text: &str) -> Result<u64, String> {
    match number(text)? {
        0 => Err("must be above 0".into()),
        n => Ok(n),
    }
}

impl Args {
    fn deadline(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

fn main() {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED)).expect("a signal handler");
    }

    let args = <Args as clap::Parser>::parse();
    let repo = repo_root();
    let base = Config::load(&repo.join("cluster.toml")).expect("the repository's cluster.toml");
    let bench = Bench::new(args, base);
    bench.run();
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("dataflow lives inside the workspace")
        .to_path_buf()
}

/// `target/release`, where `scripts/bench_dataflow.sh` built the binaries.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMOSTREAM_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the bench knows its own path");
    // target/release/deps/throughput-hash → target/release
    exe.parent()
        .and_then(Path::parent)
        .expect("benches run from target/<profile>/deps")
        .to_path_buf()
}

use emostream_e2e::free_port;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// Processes: the broker and the worker clusters, stopped by Drop.

/// The development broker, started by `scripts/broker.sh`; stopped (and its data removed) on drop.
struct Broker {
    port: u16,
    dir: PathBuf,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let broker = Broker {
            port: free_port(),
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(&broker.dir).expect("a scratch folder");
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("broker")
    }

    /// Starts the broker if it is not running, and creates the topics `config` names.
    fn ensure_topics(&self, config: &Path) {
        let status = Command::new(repo_root().join("scripts/broker.sh"))
            .args(["start", "--port", &self.port.to_string(), "--data"])
            .arg(self.data())
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/broker.sh runs");
        assert!(status.success(), "scripts/broker.sh start failed");
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data().join("broker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/broker.sh"))
            .args(["stop", "--data"])
            .arg(self.data())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() || std::env::var_os("EMOSTREAM_KEEP_LOGS").is_some() {
            eprintln!("logs and broker data kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A timely cluster under `scripts/run_workers.sh`; SIGTERM (then SIGKILL) on drop.
struct Workers {
    child: Child,
    config: PathBuf,
}

impl Workers {
    fn start(processes: usize, config: &Path, log: &Path) -> Workers {
        let log = std::fs::File::create(log).expect("a log file");
        let child = Command::new(repo_root().join("scripts/run_workers.sh"))
            .args(["-n", &processes.to_string(), "-c"])
            .arg(config)
            .env("EMOSTREAM_BIN_DIR", bin_dir())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("scripts/run_workers.sh starts");
        Workers {
            child,
            config: config.to_path_buf(),
        }
    }

    /// The running dataflow processes of this cluster (children of the supervisor).
    fn pids(&self) -> Vec<u32> {
        let config = self.config.to_string_lossy().to_string();
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

    /// The supervisor's exit status, once it has exited (it should not before we stop it).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How often the supervisor restarted the cluster because a process died.
    fn restarts(log: &Path) -> usize {
        std::fs::read_to_string(log)
            .map_or(0, |l| l.matches("restarting the whole cluster").count())
    }

    /// User + system CPU seconds of the dataflow processes so far.
    fn cpu_secs(&self) -> f64 {
        self.pids().into_iter().map(cpu_secs).sum()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let leftovers = self.pids();
        // SIGTERM to the supervisor: it stops its processes (TERM, then KILL after 10 s).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        for pid in leftovers {
            // Only if the supervisor did not get to it (the pid is re-checked by its cmdline).
            if self.pids().contains(&pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// User + system CPU seconds of one process (0 if it is gone).
fn cpu_secs(pid: u32) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    });
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    (field(11).unwrap_or(0.0) + field(12).unwrap_or(0.0)) / ticks
}

// ---------------------------------------------------------------------------------------------
// Producing batch records as the gateway does.

#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                eprintln!("delivery failed: {e}");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// The gateway's producer settings (gateway/src/producer.rs), with a bounded local queue.
fn producer(brokers: &str) -> (ThreadedProducer<DeliveryContext>, Arc<Deliveries>) {
    let deliveries = Arc::new(Deliveries::default());
    let producer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.max.bytes", (16 * 1024 * 1024).to_string())
        // 256 MiB of records waiting for the broker at most: QueueFull is back-pressure.
        .set("queue.buffering.max.kbytes", (256 * 1024).to_string())
        .set("message.timeout.ms", "120000")
        .create_with_context(DeliveryContext(Arc::clone(&deliveries)))
        .expect("a producer");
    (producer, deliveries)
}

/// Sends one record, waiting while librdkafka's queue is full.
fn send(producer: &ThreadedProducer<DeliveryContext>, record: BaseRecord<'_, [u8], [u8]>) {
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(_), back)) => {
                check_interrupted();
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("cannot produce: {e}"),
        }
    }
}

fn wait_acked(producer: &ThreadedProducer<DeliveryContext>, deliveries: &Deliveries, sent: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while deliveries.acked.load(Ordering::Relaxed) + deliveries.failed.load(Ordering::Relaxed)
        < sent
    {
        check_interrupted();
        assert!(
            Instant::now() < deadline,
            "records not acknowledged in 300 s"
        );
        let _ = producer.flush(Duration::from_millis(100));
    }
    assert_eq!(
        deliveries.failed.load(Ordering::Relaxed),
        0,
        "some records were not delivered"
    );
}

/// A small deterministic generator (xorshift64*), so every run writes the same taps.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A skewed emoji, as crowds send them.
    fn emoji(&mut self) -> &'static str {
        let total: u32 = EMOJIS.iter().map(|(_, w)| w).sum();
        let mut pick = (self.next() % u64::from(total)) as u32;
        for (emoji, weight) in EMOJIS {
            if pick < weight {
                return emoji;
            }
            pick -= weight;
        }
        EMOJIS[0].0
    }
}

/// Appends `n` taps of `stream` with receive times spread over `[from_ms, from_ms + span_ms)`.
fn write_taps(buf: &mut Vec<u8>, rng: &mut Rng, stream: &str, n: u64, from_ms: u64, span_ms: u64) {
    let mut user = String::new();
    for i in 0..n {
        let recv_ms = from_ms + i * span_ms / n.max(1);
        user.clear();
        use std::fmt::Write;
        let _ = write!(user, "u{}", rng.next() % 1_000_000);
        let event = EmojiEvent {
            stream: Cow::Borrowed(stream),
            user_id: Cow::Borrowed(&user),
            emoji: Cow::Borrowed(rng.emoji()),
            ts: Some(ClientTs::Millis(recv_ms.saturating_sub(rng.next() % 200))),
            recv_ms,
        };
        serde_json::to_writer(&mut *buf, &event).expect("an event serializes");
        buf.push(b'\n');
    }
}

// ---------------------------------------------------------------------------------------------
// The bench.

struct Bench {
    args: Args,
    base: Config,
    broker: Broker,
    /// Streams' names: s0, s1, …
    streams: Vec<String>,
}

struct Preload {
    records: u64,
    bytes: u64,
    first_epoch: u64,
    last_epoch: u64,
    secs: f64,
}

struct Row {
    name: String,
    secs: f64,
    events: u64,
    bytes: Option<u64>,
    cpu: Option<(f64, f64)>,
}

impl Bench {
    fn new(args: Args, base: Config) -> Bench {
        let dir = std::env::temp_dir().join(format!(
            "emostream-bench-{}-{}",
            std::process::id(),
            free_port()
        ));
        let broker = Broker::start(&dir);
        let streams = (0..args.streams).map(|s| format!("s{s}")).collect();
        Bench {
            args,
            base,
            broker,
            streams,
        }
    }

    /// A cluster.toml for one run: this broker, `processes` free ports, the run's own topics
    /// (`suffix`), the repository's epoch settings.
    fn config(&self, name: &str, events_topic: &str, suffix: &str, processes: usize) -> PathBuf {
        let e = &self.base.epochs;
        let ports: Vec<String> = (0..processes)
            .map(|_| format!("\"127.0.0.1:{}\"", free_port()))
            .collect();
        let text = format!(
            r#"[kafka]
brokers = "{brokers}"
events_topic = "{events_topic}"
epochs_topic = "bench-epochs-{suffix}"
progress_topic = "bench-progress-{suffix}"
events_partitions = {partitions}
epochs_partitions = 2
[epochs]
window_ms = {window}
allowed_lateness_ms = {lateness}
divisor = {divisor}
[gateway]
listen = "127.0.0.1:{gateway}"
flush_ms = {flush}
[dataflow]
processes = [{processes}]
threads = 1
idle_poll_ms = {idle}
[broadcaster]
main = "127.0.0.1:{main}"
clusters = []
"#,
            brokers = self.broker.address(),
            partitions = self.args.partitions,
            window = e.window_ms,
            lateness = e.allowed_lateness_ms,
            divisor = e.divisor,
            gateway = free_port(),
            flush = self.base.gateway.flush_ms,
            processes = ports.join(", "),
            idle = self.base.dataflow.idle_poll_ms,
            main = free_port(),
        );
        Config::from_toml(&text).expect("the generated configuration is valid");
        let path = self.broker.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("writing a cluster.toml");
        self.broker.ensure_topics(&path);
        path
    }

    fn run(&self) {
        let a = &self.args;
        // The broker and the events topic.
        self.config("preload", EVENTS_TOPIC, "preload", 1);
        let preload = self.preload();
        let window = self.base.epochs.window_ms;
        println!(
            "\nEmostream dataflow benchmark: {} taps, {} streams x {} epochs ({} s of receive time \
             ending {} s ago), {} records of <= {} taps, {} partitions, {:.0} MB of NDJSON; \
             Nisshi 0.8.1 ({}) on loopback; {} cores",
            group(a.events),
            a.streams,
            preload.last_epoch - preload.first_epoch + 1,
            a.span_epochs * window / 1000,
            (now_ms() - (preload.last_epoch + 1) * window) / 1000,
            group(preload.records),
            group(a.record_events),
            a.partitions,
            preload.bytes as f64 / 1e6,
            // The scripts' broker reads the same variable; Config::load applied it here.
            format!("{:?}", self.base.dev_broker.storage).to_lowercase(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        println!(
            "preload: {:.1} s ({}/s taps, {:.0} records/s, {:.0} MB/s)",
            preload.secs,
            si(a.events as f64 / preload.secs),
            preload.records as f64 / preload.secs,
            preload.bytes as f64 / 1e6 / preload.secs
        );

        let mut rows = vec![self.bare_consume(&preload)];
        for &n in &a.processes {
            rows.push(self.dataflow_catch_up(n, &preload));
        }
        print_table(&rows);

        if a.steady_secs > 0 {
            self.steady();
        }
    }

    /// Writes the preload: for each epoch, for each stream, its taps in records of at most
    /// `record_events`, each to the next partition.
    fn preload(&self) -> Preload {
        let a = &self.args;
        let window = self.base.epochs.window_ms;
        // The span ends a minute ago, on an epoch boundary.
        let last_epoch = epoch_of(now_ms() - 60_000, window) - 1;
        let first_epoch = last_epoch + 1 - a.span_epochs;
        let (producer, deliveries) = producer(&self.broker.address());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let cells = a.span_epochs * a.streams;
        let (mut records, mut bytes, mut written) = (0u64, 0u64, 0u64);
        let mut buf = Vec::new();
        let started = Instant::now();
        for (i, epoch) in (first_epoch..=last_epoch).enumerate() {
            let (start_ms, _) = epoch_bounds(epoch, window);
            // This epoch's records, in time order across streams.
            let mut cell_records: Vec<(usize, u64)> = Vec::new();
            for (s, _) in self.streams.iter().enumerate() {
                let cell = i as u64 * a.streams + s as u64;
                // Taps of this (stream, epoch): an even share, the remainder to the first cells.
                let n = a.events / cells + u64::from(cell < a.events % cells);
                let mut left = n;
                while left > 0 {
                    let take = left.min(a.record_events);
                    cell_records.push((s, take));
                    left -= take;
                }
            }
            let slots = cell_records.len() as u64;
            for (j, (s, n)) in cell_records.into_iter().enumerate() {
                check_interrupted();
                let from_ms = start_ms + j as u64 * window / slots;
                let span_ms = (window / slots).max(1);
                buf.clear();
                write_taps(&mut buf, &mut rng, &self.streams[s], n, from_ms, span_ms);
                let record = BaseRecord::to(EVENTS_TOPIC)
                    .partition((records % u64::from(a.partitions)) as i32)
                    .key(self.streams[s].as_bytes())
                    .payload(&buf[..])
                    .timestamp((from_ms + n.saturating_sub(1) * span_ms / n.max(1)) as i64);
                send(&producer, record);
                records += 1;
                bytes += buf.len() as u64;
                written += n;
            }
        }
        assert_eq!(written, a.events);
        wait_acked(&producer, &deliveries, records);
        Preload {
            records,
            bytes,
            first_epoch,
            last_epoch,
            secs: started.elapsed().as_secs_f64(),
        }
    }

    /// (a) The best of two bare passes: the first also warms the broker's page cache and SQLite,
    /// which would otherwise flatter the dataflow runs that follow it.
    fn bare_consume(&self, preload: &Preload) -> Row {
        let passes = [self.bare_pass(preload), self.bare_pass(preload)];
        eprintln!(
            "  bare passes: {:.2} s, {:.2} s (the best is shown)",
            passes[0].secs, passes[1].secs
        );
        let [first, second] = passes;
        if second.secs < first.secs {
            second
        } else {
            first
        }
    }

    /// One BaseConsumer on every partition from the beginning to the high watermarks.
    fn bare_pass(&self, preload: &Preload) -> Row {
        let broker_pid = self.broker.pid();
        let broker_cpu0 = broker_pid.map_or(0.0, cpu_secs);
        let started = Instant::now();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.address())
            .set("group.id", "emostream-bench-bare")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let mut high = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in 0..self.args.partitions as i32 {
            let (_, h) = consumer
                .fetch_watermarks(EVENTS_TOPIC, p, Duration::from_secs(10))
                .expect("high watermarks");
            if h > 0 {
                high.insert(p, h);
                assignment
                    .add_partition_offset(EVENTS_TOPIC, p, Offset::Beginning)
                    .expect("an assignment");
            }
        }
        consumer.assign(&assignment).expect("assign");
        let (mut events, mut bytes, mut records) = (0u64, 0u64, 0u64);
        let deadline = started + self.args.deadline();
        while !high.is_empty() {
            check_interrupted();
            assert!(Instant::now() < deadline, "bare consume timed out");
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(msg)) => {
                    if let Some(payload) = msg.payload() {
                        events += payload.iter().filter(|b| **b == b'\n').count() as u64;
                        bytes += payload.len() as u64;
                    }
                    records += 1;
                    if high.get(&msg.partition()) == Some(&(msg.offset() + 1)) {
                        high.remove(&msg.partition());
                    }
                }
                Some(Err(e)) => panic!("bare consumer: {e}"),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(records, preload.records, "bare consumer records");
        assert_eq!(events, self.args.events, "bare consumer taps");
        Row {
            name: "bare rdkafka consume".into(),
            secs,
            events,
            bytes: Some(bytes),
            cpu: Some((
                0.0, // not a dataflow process; the consumer's own CPU is this bench's
                broker_pid.map_or(0.0, cpu_secs) - broker_cpu0,
            )),
        }
    }

    /// (b) The dataflow with `processes` processes, from spawn to the last preloaded epoch
    /// of every stream consumed from its epochs topic.
    fn dataflow_catch_up(&self, processes: usize, preload: &Preload) -> Row {
        let suffix = format!("{processes}p");
        let config = self.config(&format!("run-{suffix}"), EVENTS_TOPIC, &suffix, processes);
        let epochs_topic = format!("bench-epochs-{suffix}");
        let frames = FrameReader::new(&self.broker.address(), &epochs_topic);
        let broker_pid = self.broker.pid();
        let broker_cpu0 = broker_pid.map_or(0.0, cpu_secs);
        let log = self.broker.dir.join(format!("workers-{suffix}.log"));
        let started = Instant::now();
        let mut workers = Workers::start(processes, &config, &log);

        let expected = self.args.events;
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        let mut last: HashMap<String, u64> = HashMap::new();
        let (mut total, mut duplicates, mut late) = (0u64, 0u64, 0u64);
        let deadline = started + self.args.deadline();
        let mut cpu = 0.0;
        let mut next_report = Instant::now() + Duration::from_secs(10);
        loop {
            check_interrupted();
            if Instant::now() >= deadline {
                panic!(
                    "dataflow ({processes} processes) did not publish every epoch in {:?}: \
                     {total} of {expected} taps in {} frames, {} cluster restarts; see {}",
                    self.args.deadline(),
                    seen.len(),
                    Workers::restarts(&log),
                    log.display()
                );
            }
            if let Some(status) = workers.exited() {
                panic!("run_workers.sh exited ({status}); see {}", log.display());
            }
            // CPU is sampled while the processes live (they are gone after the drop).
            cpu = workers.cpu_secs().max(cpu);
            if Instant::now() >= next_report {
                eprintln!(
                    "  [{processes}p] {:.0} s: {} frames, {} of {} taps",
                    started.elapsed().as_secs_f64(),
                    seen.len(),
                    group(total),
                    group(expected)
                );
                next_report += Duration::from_secs(10);
            }
            for (frame, _) in frames.poll(Duration::from_millis(50)) {
                if !seen.insert((frame.stream.clone(), frame.epoch)) {
                    duplicates += 1;
                    continue;
                }
                total += frame.total;
                late += frame.late;
                let entry = last.entry(frame.stream.clone()).or_default();
                *entry = (*entry).max(frame.epoch);
            }
            let done = self
                .streams
                .iter()
                .all(|s| last.get(s).is_some_and(|e| *e >= preload.last_epoch));
            if done && total >= expected {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let broker_cpu = broker_pid.map_or(0.0, cpu_secs) - broker_cpu0;
        cpu = workers.cpu_secs().max(cpu);
        drop(workers);
        let restarts = Workers::restarts(&log);
        assert_eq!(
            restarts,
            0,
            "a dataflow process died; see {}",
            log.display()
        );
        assert_eq!(
            total, expected,
            "the frames' totals must add up to the preloaded taps"
        );
        assert_eq!(duplicates, 0, "a fresh run published an epoch twice");
        assert_eq!(
            seen.len() as u64,
            self.args.streams * (preload.last_epoch - preload.first_epoch + 1),
            "one frame per (stream, epoch)"
        );
        if late > 0 {
            eprintln!("  [{processes}p] note: {late} taps reported late");
        }
        Row {
            name: format!(
                "dataflow, {processes} process{}",
                if processes == 1 { "" } else { "es" }
            ),
            secs,
            events: total,
            bytes: Some(preload.bytes),
            cpu: Some((cpu, broker_cpu)),
        }
    }

    /// Steady load into a fresh topic set; latency from each epoch's end to its frame.
    fn steady(&self) {
        let a = &self.args;
        let window = self.base.epochs.window_ms;
        let lateness = self.base.epochs.allowed_lateness_ms;
        let flush_ms = self.base.gateway.flush_ms.max(1);
        let events_topic = "bench-steady-events";
        let config = self.config("steady", events_topic, "steady", a.steady_processes);
        let frames = FrameReader::new(&self.broker.address(), "bench-epochs-steady");
        let (producer, deliveries) = producer(&self.broker.address());
        let log = self.broker.dir.join("workers-steady.log");
        let mut workers = Workers::start(a.steady_processes, &config, &log);
        // Let the cluster connect before the load starts, so startup is not measured.
        std::thread::sleep(Duration::from_secs(2));

        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let load_start = now_ms();
        let load_end = load_start + a.steady_secs * 1000;
        let per_ms = a.steady_rate as f64 / 1000.0;
        let (mut produced, mut records) = (0u64, 0u64);
        let mut from = load_start;
        let mut owed = 0.0f64;
        let mut buf = Vec::new();
        let mut consumed: Vec<(EpochFrame, u64)> = Vec::new();
        let mut tick = Instant::now();
        // The gateway's packer: every flush_ms, one record per (partition, stream, epoch) of the
        // taps received since the last flush.
        while from < load_end {
            check_interrupted();
            tick += Duration::from_millis(flush_ms);
            // Consume frames while waiting for the next flush tick.
            while Instant::now() < tick {
                consumed.extend(frames.poll(Duration::from_millis(5)));
                if let Some(status) = workers.exited() {
                    panic!("run_workers.sh exited ({status}); see {}", log.display());
                }
            }
            let to = now_ms().min(load_end);
            // Split [from, to) at epoch boundaries: a batch never spans two epochs.
            let mut at = from;
            while at < to {
                let boundary = epoch_bounds(epoch_of(at, window), window).1.min(to);
                owed += (boundary - at) as f64 * per_ms;
                let n = owed as u64;
                owed -= n as f64;
                let cells = a.streams * u64::from(a.partitions);
                for cell in 0..cells {
                    let share = n / cells + u64::from(cell < n % cells);
                    if share == 0 {
                        continue;
                    }
                    let stream = &self.streams[(cell % a.streams) as usize];
                    let partition = (cell / a.streams) as i32;
                    buf.clear();
                    write_taps(&mut buf, &mut rng, stream, share, at, boundary - at);
                    let record = BaseRecord::to(events_topic)
                        .partition(partition)
                        .key(stream.as_bytes())
                        .payload(&buf[..])
                        // The newest receive time in the record, as the gateway stamps it.
                        .timestamp(
                            (at + share.saturating_sub(1) * (boundary - at) / share.max(1)) as i64,
                        );
                    send(&producer, record);
                    records += 1;
                    produced += share;
                }
                at = boundary;
            }
            from = to;
        }
        wait_acked(&producer, &deliveries, records);

        // Wait for every epoch the load touched (the last closes by the wall clock).
        let last_epoch = epoch_of(load_end - 1, window);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_interrupted();
            consumed.extend(frames.poll(Duration::from_millis(5)));
            let total: u64 = consumed.iter().map(|(f, _)| f.total).sum();
            let done = consumed.iter().any(|(f, _)| f.epoch >= last_epoch) && total >= produced;
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "steady load: {total} of {produced} taps published after 60 s; see {}",
                log.display()
            );
        }
        drop(workers);
        let total: u64 = consumed.iter().map(|(f, _)| f.total).sum();
        assert_eq!(
            total, produced,
            "steady load: frames' totals vs taps produced"
        );

        // Epochs that began after a warm-up of two epochs and ended while the load ran.
        let warmup = load_start + 2 * window;
        let mut latencies: Vec<i64> = consumed
            .iter()
            .filter(|(f, _)| f.start_ms >= warmup && f.end_ms <= load_end)
            .map(|(f, at)| *at as i64 - f.end_ms as i64)
            .collect();
        latencies.sort_unstable();
        let epochs: HashSet<u64> = consumed.iter().map(|(f, _)| f.epoch).collect();
        println!(
            "\nsteady load: {} taps/s for {} s into {} partitions ({} records of ~{} taps, one per \
             (partition, stream) every {} ms), {} processes; {} taps in {} epochs, totals exact",
            group(a.steady_rate),
            a.steady_secs,
            a.partitions,
            group(records),
            produced / records.max(1),
            flush_ms,
            a.steady_processes,
            group(produced),
            epochs.len()
        );
        if latencies.is_empty() {
            println!("  no epoch inside the measured window: use a longer --steady-secs");
            return;
        }
        let target = lateness as i64 + 100;
        let p99 = percentile(&latencies, 0.99);
        println!(
            "  epoch end -> frame consumed ({} frames): p50 {} ms  p99 {} ms  max {} ms  \
             | target p99 <= {} ms (allowed lateness {} + 100): {}",
            latencies.len(),
            percentile(&latencies, 0.50),
            p99,
            latencies[latencies.len() - 1],
            target,
            lateness,
            if p99 <= target { "met" } else { "NOT met" }
        );
        println!(
            "  (includes the consume hop: broker fetch + this bench's consumer; the design floor \
             is allowed lateness + the end probe's interval and round trip, {} + 25 ms and more)",
            lateness
        );
    }
}

/// Reads an epochs topic from the beginning: every frame with the wall time it was consumed.
struct FrameReader {
    consumer: BaseConsumer,
}

impl FrameReader {
    fn new(brokers: &str, topic: &str) -> FrameReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "emostream-bench-frames")
            .set("enable.auto.commit", "false")
            // A frame should reach the bench as soon as it is written: short fetch waits.
            .set("fetch.wait.max.ms", "5")
            .create()
            .expect("a consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..2 {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("an assignment");
        }
        consumer.assign(&assignment).expect("assign");
        FrameReader { consumer }
    }

    fn poll(&self, timeout: Duration) -> Vec<(EpochFrame, u64)> {
        let mut out = Vec::new();
        let mut wait = timeout;
        while let Some(result) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            let msg = result.unwrap_or_else(|e| panic!("frames consumer: {e}"));
            let at = now_ms();
            let payload = msg.payload().expect("a frame has a payload");
            let frame: EpochFrame = serde_json::from_slice(payload)
                .unwrap_or_else(|e| panic!("not an epoch frame ({e}): {payload:?}"));
            out.push((frame, at));
        }
        out
    }
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn print_table(rows: &[Row]) {
    let bare = rows[0].events as f64 / rows[0].secs;
    println!(
        "\n{:<24} {:>9} {:>11} {:>8} {:>9}   {:>20}",
        "case", "seconds", "taps/s", "MB/s", "vs bare", "cpu s dataflow/broker"
    );
    for row in rows {
        let rate = row.events as f64 / row.secs;
        let mbps = row.bytes.map_or("".to_string(), |b| {
            format!("{:.0}", b as f64 / 1e6 / row.secs)
        });
        let cpu = row.cpu.map_or(String::new(), |(d, b)| {
            if d > 0.0 {
                format!("{d:.1} / {b:.1}")
            } else {
                format!("- / {b:.1}")
            }
        });
        println!(
            "{:<24} {:>9.2} {:>11} {:>8} {:>9.2}   {:>20}",
            row.name,
            row.secs,
            si(rate),
            mbps,
            rate / bare,
            cpu
        );
    }
    let verdicts: Vec<String> = rows[1..]
        .iter()
        .map(|r| {
            let ratio = r.events as f64 / r.secs / bare;
            format!(
                "{}: {:.2} {}",
                r.name,
                ratio,
                if ratio >= 0.8 { "met" } else { "NOT met" }
            )
        })
        .collect();
    println!("target dataflow >= 0.80 x bare: {}", verdicts.join("; "));
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1234567.0 → "1.23 M".
fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
