//! `emostream-bench-streams` (run by `scripts/bench_streams.sh`): what a live stream costs the
//! broadcaster tiers that keep every stream (the main and cluster publishers), and whether they
//! give it back once the streams go idle.
//!
//! 1. A main publisher whose synthetic source emits `--epochs` epochs of `--streams` streams (each
//!    epoch: every stream's epoch, trending and sentiment frame, and the popular frame), a cluster
//!    publisher and a subscriber, as release processes with `stream_idle_s = --idle-s`.
//! 2. Each tier's resident memory (`VmRSS`) before the first frame (the baseline), once both
//!    upper tiers hold every frame (live), and once both have forgotten every stream (after the
//!    idle time), with what the hub counts it holds (`emostream_broadcaster_held_bytes`).
//!
//! ```text
//! emostream-bench-streams --streams 10000 --epochs 1 --idle-s 30   # idle streams: one epoch each
//! emostream-bench-streams --streams 2000 --epochs 60 --idle-s 30   # active streams: full rings
//! ```

use emostream_testkit::{bin_dir, free_port, http, Process, Scratch};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Parser)]
#[command(name = "emostream-bench-streams")]
struct Args {
    /// Streams the synthetic source emits.
    #[arg(long, default_value_t = 10_000)]
    streams: u64,
    /// Epochs of each (every 2 s) before the source stops: 1 for an idle stream's cost, 60 (the
    /// ring) for a busy one's.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// The tiers' `stream_idle_s`.
    #[arg(long, default_value_t = 30)]
    idle_s: u64,
}

const TIERS: [&str; 3] = ["main", "cluster", "subscriber"];

fn main() -> ExitCode {
    let args: Args = clap::Parser::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime at start");
    runtime.block_on(run(args))
}

/// One sample of a series on a tier's `/metrics`.
async fn metric(port: u16, series: &str) -> Option<f64> {
    let answer = http::request(&format!("127.0.0.1:{port}"), "GET", "/metrics", None, b"")
        .await
        .ok()?;
    answer.body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn series(name: &str, tier: &str) -> String {
    format!("emostream_broadcaster_{name}{{tier=\"{tier}\"}}")
}

/// Polls `what` every 100 ms until it holds or `limit` passes.
async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("gave up waiting for {what} after {limit:?}");
    false
}

struct Sample {
    rss_kib: [u64; 3],
    held: [f64; 3],
}

async fn sample(processes: &[Process; 3], ports: [u16; 3]) -> Sample {
    let mut held = [0.0; 3];
    for (i, tier) in TIERS.iter().enumerate() {
        held[i] = metric(ports[i], &series("held_bytes", tier))
            .await
            .unwrap_or(f64::NAN);
    }
    Sample {
        rss_kib: std::array::from_fn(|i| processes[i].rss_kib().unwrap_or_default()),
        held,
    }
}

async fn run(args: Args) -> ExitCode {
    let scratch = Scratch::new("bench-streams");
    let ports = [free_port(), free_port(), free_port()];
    let [main, cluster, sub] = ports;
    let config = scratch.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n\
             [dataflow]\nprocesses = [\"127.0.0.1:0\"]\n\
             [broadcaster]\nmain = \"127.0.0.1:{main}\"\nstream_idle_s = {}\n\
             [[broadcaster.clusters]]\nname = \"c0\"\nlisten = \"127.0.0.1:{cluster}\"\n\
             subscribers = [\"127.0.0.1:{sub}\"]\n",
            args.idle_s
        ),
    )
    .expect("the scratch folder is writable");
    let streams: Vec<String> = (0..args.streams).map(|i| format!("s-{i}")).collect();
    let epochs = args.epochs.to_string();
    let role = |name: &str, role: &[&str]| {
        Process::spawn(
            name,
            Command::new(bin_dir().join("emostream-broadcaster"))
                .env("RUST_LOG", "warn")
                .arg("--config")
                .arg(&config)
                .args(role),
            &scratch.join(format!("{name}.log")),
        )
    };
    let streams_arg = streams.join(",");
    let processes = [
        role(
            "main",
            &[
                "main",
                "--synthetic-ms",
                "2000",
                "--synthetic-streams",
                &streams_arg,
                "--synthetic-epochs",
                &epochs,
            ],
        ),
        role("cluster", &["cluster", "--name", "c0"]),
        role("subscriber", &["subscriber", "--name", "c0-s0"]),
    ];
    let frames_in = |port: u16, tier: &'static str| async move {
        metric(port, &series("frames_in_total", tier)).await
    };
    if !until("every tier up", Duration::from_secs(20), async || {
        let mut up = true;
        for (port, tier) in ports.into_iter().zip(TIERS) {
            up &= frames_in(port, tier).await.is_some();
        }
        up
    })
    .await
    {
        return ExitCode::FAILURE;
    }
    // The baseline, when no frame has come yet (checked before and after it is read).
    let before = frames_in(main, "main").await;
    let baseline = sample(&processes, ports).await;
    if before != Some(0.0) || frames_in(main, "main").await != Some(0.0) {
        eprintln!("the first epoch came while the baseline was read: run again");
        return ExitCode::FAILURE;
    }
    let want = (args.epochs * (3 * args.streams + 1)) as f64;
    eprintln!(
        "{} streams × {} epochs: waiting for {want} frames at the main and cluster publishers",
        args.streams, args.epochs
    );
    let limit = Duration::from_secs(2 * args.epochs + 60);
    if !until("every frame at both upper tiers", limit, async || {
        frames_in(main, "main").await == Some(want)
            && frames_in(cluster, "cluster").await == Some(want)
    })
    .await
    {
        return ExitCode::FAILURE;
    }
    // The held gauges are set by each tier's sweep, every quarter of the idle time.
    tokio::time::sleep(Duration::from_secs(
        args.idle_s.div_ceil(4).clamp(1, 30) + 1,
    ))
    .await;
    let live = sample(&processes, ports).await;
    let held_streams = |port: u16, tier: &'static str| async move {
        metric(port, &series("streams_held", tier)).await
    };
    let started_idle = Instant::now();
    let limit = Duration::from_secs(args.idle_s * 2 + 60);
    if !until("every stream forgotten", limit, async || {
        held_streams(main, "main").await == Some(0.0)
            && held_streams(cluster, "cluster").await == Some(0.0)
    })
    .await
    {
        return ExitCode::FAILURE;
    }
    // The sweep that forgot them also handed the memory back; let it finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = sample(&processes, ports).await;
    eprintln!(
        "every stream forgotten {:.0} s after the last frame",
        started_idle.elapsed().as_secs_f64()
    );

    let n = args.streams as f64;
    println!(
        "\n{} streams × {} epochs (every 2 s), stream_idle_s {}\n",
        args.streams, args.epochs, args.idle_s
    );
    println!(
        "| tier | RSS baseline | RSS live | **RSS per stream** | held per stream (hub's count) | RSS after idle | after idle − baseline |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, tier) in TIERS.iter().enumerate() {
        let (b, l, a) = (baseline.rss_kib[i], live.rss_kib[i], idle.rss_kib[i]);
        println!(
            "| {tier} | {:.1} MiB | {:.1} MiB | **{:.1} KiB** | {:.1} KiB | {:.1} MiB | {:+.1} MiB |",
            b as f64 / 1024.0,
            l as f64 / 1024.0,
            (l as f64 - b as f64) / n,
            live.held[i] / 1024.0 / n,
            a as f64 / 1024.0,
            (a as f64 - b as f64) / 1024.0,
        );
    }
    drop(processes);
    ExitCode::SUCCESS
}
