//! `emostream-bench-e2e` (run by `scripts/bench_e2e.sh`): tap sent → the epoch holding it read by
//! a viewer, through the whole local system, and where the time goes.
//!
//! 1. The whole system as `scripts/up.sh` runs it, on free ports of its own (the e2e tests'
//!    [`System`]): the broker through `scripts/broker.sh` (PostgreSQL storage), the gateway, a
//!    2-process timely cluster through `scripts/run_workers.sh`, the main publisher, and
//!    `cluster.toml`'s clusters of subscribers; epochs, lateness and the topology from the
//!    repository's `cluster.toml`. Everything, the broker's PostgreSQL included, stops at the end,
//!    on an error and on Ctrl-C.
//! 2. `--viewers` WebSocket viewers on `--stream` (`emostream-swarm` processes, each under its
//!    descriptor limit), spread evenly over every subscriber, connected before the first tap.
//! 3. Taps at `--rate` per second, `--batch` per request, open loop, for `--seconds`; per request
//!    its send time and the epoch the 2xx answer names.
//! 4. This tool's own consumer of `emoji-epochs` notes when each epoch's frame is readable there
//!    ("published"); every viewer notes when it read each epoch frame and the count it saw.
//!
//! Then: tap → screen over every (tap, viewer) pair, its three legs, and the exactness check
//! (every viewer saw, for every epoch a tap went into, exactly the taps the gateway acknowledged
//! for it). Exits 1 when the check fails.

mod figures;

use clap::Parser;
use emostream_e2e::bench::{self, descriptor_hard_limit, tail, SWARM_RESERVE};
use emostream_e2e::{taps, System, Topology};
use emostream_protocol::wire::EpochFrame;
use emostream_protocol::Config;
use emostream_testkit::{binary, now_ms, repo_root, Scratch};
use figures::{EpochReads, Published};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "emostream-bench-e2e",
    about = "Tap sent → the epoch holding it read by a viewer, through the whole local system"
)]
struct Args {
    /// WebSocket viewers of the stream, spread over every subscriber.
    #[arg(long, default_value_t = 10_000)]
    viewers: u64,
    /// Taps per second, offered open loop.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Taps per request (1: single-tap requests).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    batch: u64,
    /// Seconds of taps.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The stream tapped and watched (only this tool taps it).
    #[arg(long, default_value = "main")]
    stream: String,
    /// Seconds of taps on another stream first (`STREAM-warmup`): connections opened, the
    /// gateway's producer and the dataflow at the rate before the measured taps.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Where the report (e2e.md) and its key figures (e2e.txt, key=value) are written.
    #[arg(long, default_value = ".run/bench")]
    results: std::path::PathBuf,
    /// Swarm processes at least (more when one would exceed its descriptor limit).
    #[arg(long, default_value_t = 4)]
    swarms: u64,
}

fn main() -> ExitCode {
    bench::until_signalled(run(Args::parse()))
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

async fn run(args: Args) -> ExitCode {
    let repo = Config::load(&repo_root().join("cluster.toml"))
        .unwrap_or_else(|e| panic!("cluster.toml: {e}"));
    let window_ms = repo.epochs.window_ms;
    let hard = descriptor_hard_limit();
    let per_swarm = hard.saturating_sub(SWARM_RESERVE).max(1);
    let swarms = args.swarms.max(args.viewers.div_ceil(per_swarm)).max(1);
    let clusters: Vec<usize> = repo
        .broadcaster
        .clusters
        .iter()
        .map(|c| c.subscribers.len())
        .collect();

    step(&format!(
        "the system as up.sh runs it, on ports of its own: broker (PostgreSQL), gateway, 2 dataflow processes, main publisher, {} clusters with {:?} subscribers; {window_ms} ms epochs, {} ms lateness",
        clusters.len(),
        clusters,
        repo.epochs.allowed_lateness_ms
    ));
    let system = System::start(Topology {
        worker_processes: 2,
        window_ms,
        allowed_lateness_ms: repo.epochs.allowed_lateness_ms,
        events_partitions: repo.kafka.events_partitions,
        clusters,
        ..Topology::default()
    })
    .await;
    let work = Scratch::new("bench-e2e");

    let stop = Arc::new(AtomicBool::new(false));
    let frames = {
        let (brokers, topic) = (
            system.config.kafka.brokers.clone(),
            system.config.kafka.epochs_topic.clone(),
        );
        let partitions = system.config.kafka.epochs_partitions;
        let (stop, stream) = (Arc::clone(&stop), args.stream.clone());
        std::thread::spawn(move || published(&brokers, &topic, partitions, &stream, &stop))
    };

    let subscribers: Vec<String> = system
        .subscribers()
        .iter()
        .map(|s| format!("ws://{s}"))
        .collect();
    step(&format!(
        "{} viewers of stream {} over {} subscribers, in {swarms} swarm processes (descriptor limit {hard})",
        args.viewers,
        args.stream,
        subscribers.len()
    ));
    // The swarms measure from their own "all connected" until past the last tap's epoch end,
    // its lateness, publication and fan-out.
    let swarm_seconds = args.warmup_seconds + args.seconds + 2 * window_ms.div_ceil(1000) + 5;
    let mut children = Vec::new();
    for s in 0..swarms {
        let share = args.viewers / swarms + u64::from(s < args.viewers % swarms);
        let err = std::fs::File::create(work.join(format!("swarm-{s}.err"))).expect("a log file");
        let out = std::fs::File::create(work.join(format!("swarm-{s}.out"))).expect("a log file");
        let child = tokio::process::Command::new(binary("emostream-swarm"))
            .args(["--subscribers", &subscribers.join(",")])
            .args(["--viewers", &share.to_string()])
            .args(["--stream", &args.stream])
            .args(["--offset", &s.to_string()])
            .args(["--seconds", &swarm_seconds.to_string()])
            .args(["--connect-per-s", "2500"])
            .arg("--out")
            .arg(work.join(format!("swarm-{s}.json")))
            .arg("--epoch-reads")
            .arg(work.join(format!("reads-{s}.json")))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("emostream-swarm starts");
        children.push(child);
    }
    let connect_limit = Duration::from_secs(60 + args.viewers / 1000);
    let Some(lines) = bench::swarms_connected(&mut children, work.path(), connect_limit).await
    else {
        return ExitCode::FAILURE;
    };
    for (s, line) in lines.iter().enumerate() {
        eprintln!("    swarm {s}: {line}");
    }

    let pool = taps::Pool::default();
    let plan = |stream: String, seconds: u64| taps::Plan {
        gateway: system.gateway().to_string(),
        streams: vec![stream],
        rate: args.rate,
        batch: args.batch as usize,
        duration: Duration::from_secs(seconds),
        connections: taps::MAX_CONNECTIONS,
        forwarded: false,
    };
    if args.warmup_seconds > 0 {
        let warmup = format!("{}-warmup", args.stream);
        step(&format!(
            "warm-up: the same taps for {} s on stream {warmup} (not measured)",
            args.warmup_seconds
        ));
        let outcome = taps::drive(plan(warmup, args.warmup_seconds), &pool).await;
        eprintln!(
            "    {} requests, {} acknowledged, {} skipped, {} without an answer",
            outcome.requests,
            outcome.acked.len(),
            outcome.skipped,
            outcome.transport_errors
        );
    }
    step(&format!(
        "taps: {} per second, {} per request, open loop, for {} s, to http://{}/v1/streams/{}/emojis",
        args.rate,
        args.batch,
        args.seconds,
        system.gateway(),
        args.stream
    ));
    let sent_from = Instant::now();
    let outcome = taps::drive(plan(args.stream.clone(), args.seconds), &pool).await;
    let sent_for = sent_from.elapsed();
    eprintln!(
        "    {} requests in {:.1} s, {} acknowledged; waiting for the swarms (they end {swarm_seconds} s after connecting)",
        outcome.requests,
        sent_for.as_secs_f64(),
        outcome.acked.len()
    );

    for (s, child) in children.iter_mut().enumerate() {
        let status = child.wait().await.expect("waiting for a swarm");
        if !status.success() {
            eprintln!(
                "swarm {s} failed ({status}):\n{}",
                tail(&work.join(format!("swarm-{s}.err")))
            );
            return ExitCode::FAILURE;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let published = frames.join().expect("the frames reader");

    let mut reads = EpochReads::default();
    let (mut connected, mut failed, mut dropped) = (0, 0, 0);
    for s in 0..swarms {
        let read = |name: String| {
            std::fs::read_to_string(work.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        reads.add(serde_json::from_str(&read(format!("reads-{s}.json"))).expect("epoch reads"));
        let report: SwarmReport =
            serde_json::from_str(&read(format!("swarm-{s}.json"))).expect("a swarm report");
        connected += report.connected;
        failed += report.failed;
        dropped += report.dropped;
    }

    let stream_reads = reads.streams.remove(&args.stream).unwrap_or_default();
    let figures = figures::compute(
        &outcome.acked,
        window_ms,
        &published,
        &stream_reads,
        connected,
    );
    let acked_taps: u64 = outcome.acked.iter().map(|t| t.taps).sum();
    let mut answer = figures::Histogram::default();
    for &ms in &outcome.answer_ms {
        answer.add(ms, 1);
    }

    // The report goes to stdout and, whole, to the results folder.
    let mut out = String::new();
    macro_rules! say {
        () => { out.push('\n') };
        ($($arg:tt)*) => {{
            out.push_str(&format!($($arg)*));
            out.push('\n');
        }};
    }
    say!("\n## Per epoch of the taps\n");
    say!("| epoch | taps acknowledged | frame total on emoji-epochs | totals viewers saw (viewers) | viewer reads | epoch end → published | end → read p50 / p99 / max |");
    say!("|---|---|---|---|---|---|---|");
    for row in &figures.epochs {
        let end_ms = (row.epoch + 1) * window_ms;
        let seen: Vec<String> = row
            .seen
            .iter()
            .map(|(total, late, n)| {
                if *late > 0 {
                    format!("{total} (late {late}) ×{n}")
                } else {
                    format!("{total} ×{n}")
                }
            })
            .collect();
        say!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.epoch,
            row.acked,
            row.published.map_or("-".into(), |p| p.total.to_string()),
            seen.join(", "),
            row.viewer_reads,
            row.published.map_or("-".into(), |p| format!(
                "{} ms",
                p.at_ms.saturating_sub(end_ms)
            )),
            row.end_to_read.summary()
        );
    }

    say!("\n## Tap sent → the epoch holding it read by a viewer\n");
    let refused: Vec<String> = outcome
        .refused
        .iter()
        .map(|(s, n)| format!("{n} × {s}"))
        .collect();
    say!("| what | over | p50 / p99 / max |");
    say!("|---|---|---|");
    say!(
        "| **tap → screen** (tap sent → a viewer's read of the epoch frame holding it) | {} (tap, viewer) pairs | **{}** |",
        figures.tap_to_screen.count(),
        figures.tap_to_screen.summary()
    );
    say!(
        "| 1. tap sent → its epoch's end (the window wait, 0–{window_ms} ms by design) | {} taps | {} |",
        figures.tap_to_end.count(),
        figures.tap_to_end.summary()
    );
    say!(
        "| 2. epoch end → frame readable on emoji-epochs (dataflow; this tool's consume hop included) | {} epochs | {} |",
        figures.end_to_published.count(),
        figures.end_to_published.summary()
    );
    say!(
        "| 3. readable on emoji-epochs → read by a viewer (broadcaster fan-out; {} reads came before this tool's consumer had the frame, counted as 0) | {} viewer reads | {} |",
        figures.read_before_published,
        figures.published_to_read.count(),
        figures.published_to_read.summary()
    );
    say!(
        "| 2 + 3. epoch end → read by a viewer | {} viewer reads | {} |",
        figures.end_to_read.count(),
        figures.end_to_read.summary()
    );
    say!(
        "| (tap sent → the gateway's 2xx, beside the path) | {} requests | {} |",
        answer.count(),
        answer.summary()
    );
    say!();
    say!(
        "taps: {} requests of {} in {:.1} s ({:.0} taps/s offered), {} taps acknowledged, refused {}, no answer {}, skipped (all {} connections busy) {}",
        outcome.requests,
        args.batch,
        sent_for.as_secs_f64(),
        outcome.requests as f64 * args.batch as f64 / sent_for.as_secs_f64(),
        acked_taps,
        if refused.is_empty() { "0".into() } else { refused.join(", ") },
        outcome.transport_errors,
        taps::MAX_CONNECTIONS,
        outcome.skipped
    );
    say!(
        "viewers: {} asked, {connected} connected to the end, {failed} failed to connect, {dropped} dropped; {swarms} swarm processes",
        args.viewers
    );
    say!("percentiles are nearest-rank over 1 ms buckets; the legs' percentiles do not add up to the total's. Clock: this machine's wall clock (Unix ms) for every stamp.");
    let exact = figures.mismatches.is_empty()
        && outcome.transport_errors == 0
        && failed == 0
        && dropped == 0
        && connected == args.viewers
        && !figures.epochs.is_empty();
    if exact {
        say!(
            "EXACT: every viewer saw, for each of the {} epochs, the taps the gateway acknowledged for it ({acked_taps} in all)",
            figures.epochs.len()
        );
        say!(
            "E2E viewers={connected} taps={acked_taps} p50_ms={} p99_ms={} max_ms={}",
            figures.tap_to_screen.percentile(0.5).unwrap_or(0),
            figures.tap_to_screen.percentile(0.99).unwrap_or(0),
            figures.tap_to_screen.percentile(1.0).unwrap_or(0)
        );
    } else {
        say!("MISMATCH:");
        for m in &figures.mismatches {
            say!("  {m}");
        }
        if outcome.transport_errors > 0 {
            say!(
                "  {} requests got no answer: whether they landed is unknown ({:?})",
                outcome.transport_errors,
                outcome.errors
            );
        }
        if connected != args.viewers || failed > 0 || dropped > 0 {
            say!("  viewers: {connected} of {} connected to the end, {failed} failed, {dropped} dropped", args.viewers);
        }
    }
    print!("{out}");
    let p = |q: f64, h: &figures::Histogram| h.percentile(q).map_or(-1, |v| v as i64);
    let keys = format!(
        "# scripts/bench_e2e.sh, {} viewers, {} taps/s x{} per request, {} s, {} cores\n\
         viewers={connected}\ntaps_acknowledged={acked_taps}\nexact={}\n\
         tap_to_screen_p50_ms={}\ntap_to_screen_p99_ms={}\ntap_to_screen_max_ms={}\n\
         tap_to_end_p50_ms={}\nend_to_published_p50_ms={}\nend_to_published_max_ms={}\n\
         published_to_read_p50_ms={}\npublished_to_read_p99_ms={}\n",
        args.viewers,
        args.rate,
        args.batch,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        u8::from(exact),
        p(0.5, &figures.tap_to_screen),
        p(0.99, &figures.tap_to_screen),
        p(1.0, &figures.tap_to_screen),
        p(0.5, &figures.tap_to_end),
        p(0.5, &figures.end_to_published),
        p(1.0, &figures.end_to_published),
        p(0.5, &figures.published_to_read),
        p(0.99, &figures.published_to_read),
    );
    let written = std::fs::create_dir_all(&args.results)
        .and_then(|()| std::fs::write(args.results.join("e2e.md"), &out))
        .and_then(|()| std::fs::write(args.results.join("e2e.txt"), keys));
    match written {
        Ok(()) => eprintln!("report: {}", args.results.join("e2e.md").display()),
        Err(e) => eprintln!("could not write to {}: {e}", args.results.display()),
    }
    if exact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The fields of a swarm's `--out` report this tool reads.
#[derive(serde::Deserialize)]
struct SwarmReport {
    connected: u64,
    failed: u64,
    dropped: u64,
}

/// Reads `emoji-epochs` from the beginning until `stop`: per epoch of `stream`, when its frame
/// was first readable here, and its count.
fn published(
    brokers: &str,
    topic: &str,
    partitions: u32,
    stream: &str,
    stop: &AtomicBool,
) -> BTreeMap<u64, Published> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "emostream-bench-e2e")
        .set("enable.auto.commit", "false")
        // A frame should reach this reader as soon as it is written: short fetch waits (as
        // bench_dataflow's steady phase reads them).
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("an assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let at_ms = now_ms();
        let Ok(msg) = result else { continue };
        let Some(frame) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<EpochFrame>(p).ok())
        else {
            continue;
        };
        if frame.stream == stream {
            // A re-published epoch is byte-identical; the first copy is the publication.
            out.entry(frame.epoch).or_insert(Published {
                at_ms,
                total: frame.total,
                late: frame.late,
            });
        }
    }
    out
}
