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
//!   ≥ 0.9, [`report::TARGET`]); `cpu s` is the user+system CPU time of the reader (the
//!   dataflow processes, or this bench for the bare consume) and of the broker with its storage
//!   (Nisshi and its PostgreSQL server and backends) during the case, and `idle` the share of
//!   the machine's cores nobody used: on two shared cores the broker competes with the dataflow
//!   for them, and a case with no idle share left is bounded by the cores, not by waiting.
//! - **steady load**: a fresh topic set and a `--steady-processes` cluster; the bench produces
//!   `--steady-rate` taps/s for `--steady-secs` straight into Kafka as the gateway would (one
//!   record per (partition, stream, epoch) every `flush_ms` and at each epoch's end, `recv_ms` =
//!   now), and consumes the frames. Latency = wall time the frame was consumed − the epoch's
//!   `end_ms`, over the frames of the epochs that began after a warm-up and ended before the
//!   load stopped. It includes the consume hop (broker fetch + this consumer,
//!   `fetch.wait.max.ms` = 5). Target: p99 ≤ 350 ms (issue 22). The design floor is
//!   `allowed_lateness_ms` (250) + how far the broker-confirmed clock of an idle partition trails
//!   (the end probe's 25 ms interval and its round trip): an epoch cannot close earlier.
//!
//! Everything runs on loopback, every wait has a deadline, and the broker and the worker
//! processes are stopped on exit, on panic and on SIGINT/SIGTERM.
//!
//! # Layout
//!
//! - this file: the run — a broker, the preload, then each measurement in turn.
//! - `args`: the command line.
//! - `load`: taps written as the gateway writes them (the preload, and the producer the steady
//!   load shares).
//! - `bare`: the bare-consume limit.
//! - `system`: the dataflow cluster under `run_workers.sh`, the frames it publishes, and the
//!   catch-up measurement.
//! - `steady`: the steady-load latency measurement.
//! - `report`: the table and the number formats.

mod args;
mod bare;
mod load;
mod report;
mod steady;
mod system;

use args::Args;
use emostream_protocol::Config;
use emostream_testkit::{free_port, now_ms, repo_root, Broker, Scratch};
use report::{group, print_table, si, write_results};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

const EVENTS_TOPIC: &str = "emoji-events";

/// Set by SIGINT/SIGTERM. Registering the flag also replaces the signals' default action, so
/// the bench stops at its next check and every guard's `Drop` runs.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Panics (so every guard's `Drop` runs) once SIGINT or SIGTERM has arrived.
fn check_interrupted() {
    if INTERRUPTED.load(Ordering::Relaxed) {
        panic!("interrupted");
    }
}

fn main() {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED)).expect("a signal handler");
    }

    let args = <Args as clap::Parser>::parse();
    let base =
        Config::load(&repo_root().join("cluster.toml")).expect("the repository's cluster.toml");
    let bench = Bench::new(args, base);
    bench.run();
}

// ---------------------------------------------------------------------------------------------
// The bench.

struct Bench {
    args: Args,
    base: Config,
    broker: Broker,
    /// Streams' names: s0, s1, …
    streams: Vec<String>,
    /// Configurations, logs and broker data; declared after the broker, which stops first.
    dir: Scratch,
}

impl Bench {
    /// Starts the broker, with the topics of the preload.
    fn new(args: Args, base: Config) -> Bench {
        let dir = Scratch::new("bench");
        let (broker, _) = Broker::start(dir.path(), |brokers| {
            config_text(&args, &base, brokers, EVENTS_TOPIC, "preload", 1)
        });
        let streams = (0..args.streams).map(|s| format!("s{s}")).collect();
        Bench {
            args,
            base,
            broker,
            streams,
            dir,
        }
    }

    /// Writes a cluster.toml for one run (see [`config_text`]) and creates its topics.
    fn config(&self, name: &str, events_topic: &str, suffix: &str, processes: usize) -> PathBuf {
        let text = config_text(
            &self.args,
            &self.base,
            &self.broker.address(),
            events_topic,
            suffix,
            processes,
        );
        Config::from_toml(&text).expect("the generated configuration is valid");
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("writing a cluster.toml");
        self.broker.create_topics(&path);
        path
    }

    fn run(&self) {
        let a = &self.args;
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
        let storage = format!("{:?}", self.base.dev_broker.storage).to_lowercase();
        write_results(&rows, &a.processes, &storage);

        if a.steady_secs > 0 {
            self.steady();
        }
    }
}

/// A cluster.toml for one run: the broker at `brokers`, `processes` free ports, the run's own
/// topics (`suffix`), the repository's epoch settings.
fn config_text(
    args: &Args,
    base: &Config,
    brokers: &str,
    events_topic: &str,
    suffix: &str,
    processes: usize,
) -> String {
    let e = &base.epochs;
    let ports: Vec<String> = (0..processes)
        .map(|_| format!("\"127.0.0.1:{}\"", free_port()))
        .collect();
    format!(
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
        partitions = args.partitions,
        window = e.window_ms,
        lateness = e.allowed_lateness_ms,
        divisor = e.divisor,
        gateway = free_port(),
        flush = base.gateway.flush_ms,
        processes = ports.join(", "),
        idle = base.dataflow.idle_poll_ms,
        main = free_port(),
    )
}
