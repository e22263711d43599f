//! `emostream-bench-platform` (run by `scripts/bench_platform.sh`): many live streams at once
//! through the whole local system, as a platform carries them.
//!
//! 1. The system as `scripts/up.sh` runs it, on free ports of its own (the e2e tests'
//!    [`System`]): the broker, the gateway behind a trusted proxy address, the timely cluster
//!    through `scripts/run_workers.sh`, the main publisher and `cluster.toml`'s 3 clusters × 3
//!    subscribers; `stream_idle_s` shortened to `--idle-s` at the gateway and every broadcaster
//!    tier so that the memory given back after the idle time is measured in minutes, not hours.
//! 2. `--streams` viewers, each watching a stream of its own (`p-0` … `p-(N-1)`), and `--crowd`
//!    viewers of one more stream (`crowd`), every one placed by `POST /v1/viewers`
//!    (`emostream-swarm --main`), connected before the first tap.
//! 3. Taps on every one of those streams every epoch: one request of `--batch` taps per stream
//!    per epoch, open loop, each stream's requests from a client address of its own named in
//!    `X-Forwarded-For` (as a load balancer in front of the gateway does).
//! 4. Each tier's resident memory before the viewers come, at the end of the taps, and once every
//!    tier has forgotten every stream after the viewers left and `--idle-s` passed.
//!
//! Then the exact check, viewer by viewer: every viewer read, for each epoch its stream's taps
//! were acknowledged into, exactly one epoch frame with the count the gateway acknowledged, and
//! no frame of an epoch nothing was acknowledged into; no viewer was told it lagged, none was
//! dropped and none read a message twice. Exits 1 when the check fails.

use clap::Parser;
use emostream_e2e::bench::{self, descriptor_hard_limit, tail, SWARM_RESERVE};
use emostream_e2e::{taps, System, Topology};
use emostream_protocol::Config;
use emostream_testkit::{binary, http, procfs, repo_root, Scratch};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "emostream-bench-platform",
    about = "Many live streams at once through the whole local system: exact frames per viewer, \
             end → read, each tier's memory live and after the idle time"
)]
struct Args {
    /// Streams with one viewer each (`p-0` …), every one tapped every epoch.
    #[arg(long, default_value_t = 10_000)]
    streams: u64,
    /// Viewers of one more stream (`crowd`), tapped every epoch too.
    #[arg(long, default_value_t = 10_000)]
    crowd: u64,
    /// Seconds of taps.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Taps per request (one request per stream per epoch).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=100))]
    batch: u64,
    /// `stream_idle_s` at the gateway and every broadcaster tier for this run.
    #[arg(long, default_value_t = 30)]
    idle_s: u64,
    /// Dataflow processes (`run_workers.sh -n`).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Where the report (platform.md) and its key figures (platform.txt) are written.
    #[arg(long, default_value = ".run/bench")]
    results: PathBuf,
}

/// Connections from the "load balancer" to the gateway: at 5,000 requests/s answered within
/// ~150 ms about 750 are busy at once.
const CONNECTIONS: usize = 2000;

/// The main publisher's per-client `/register` limit for this run (rate and burst): every swarm
/// registers its viewers from 127.0.0.1, so the run needs the one address to pass them all.
const REGISTRATIONS: u32 = 1_000_000;

fn main() -> ExitCode {
    bench::until_signalled(run(Args::parse()))
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// One group of swarm processes: the viewers of one kind.
struct Group {
    name: &'static str,
    /// Swarm indexes (their files are swarm-{i}.*).
    swarms: Vec<usize>,
}

async fn run(args: Args) -> ExitCode {
    let repo = Config::load(&repo_root().join("cluster.toml"))
        .unwrap_or_else(|e| panic!("cluster.toml: {e}"));
    let window_ms = repo.epochs.window_ms;
    let clusters: Vec<usize> = (repo.broadcaster.clusters.iter())
        .map(|c| c.subscribers.len())
        .collect();
    step(&format!(
        "the system on ports of its own: broker, gateway (trusting 127.0.0.1 as its load balancer), {} dataflow processes, main publisher, {} clusters with {:?} subscribers; {window_ms} ms epochs; stream_idle_s {} at every tier",
        args.workers,
        clusters.len(),
        clusters,
        args.idle_s
    ));
    let system = System::start(Topology {
        worker_processes: args.workers,
        window_ms,
        allowed_lateness_ms: repo.epochs.allowed_lateness_ms,
        events_partitions: repo.kafka.events_partitions,
        clusters,
        settings: vec![
            (
                "gateway",
                format!(
                    "trusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = {}\nstream_idle_s = {}",
                    CONNECTIONS + 100,
                    args.idle_s
                ),
            ),
            // Every viewer registers from 127.0.0.1 ([`REGISTRATIONS`]).
            (
                "broadcaster",
                format!(
                    "stream_idle_s = {}\nip_registrations_per_s = {REGISTRATIONS}\nip_burst_registrations = {REGISTRATIONS}",
                    args.idle_s
                ),
            ),
        ],
        ..Topology::default()
    })
    .await;
    system.topology_complete(Duration::from_secs(60)).await;
    let work = Scratch::new("bench-platform");
    let baseline = system.resident_kib();
    let baseline_anon = system.anonymous_kib();

    // Viewers: the one-per-stream ones and the crowd, in swarms under the descriptor limit.
    let per_swarm = descriptor_hard_limit().saturating_sub(SWARM_RESERVE).max(1);
    let split = |viewers: u64| viewers.div_ceil(per_swarm).max(2).min(viewers.max(1));
    let main = system.config.broadcaster.main.clone();
    let swarm_seconds = args.seconds + 3 * window_ms.div_ceil(1000) + 5;
    let mut children = Vec::new();
    let mut groups = Vec::new();
    for (name, viewers) in [
        ("one viewer per stream", args.streams),
        ("crowd", args.crowd),
    ] {
        if viewers == 0 {
            continue;
        }
        let swarms = split(viewers);
        let mut group = Group {
            name,
            swarms: Vec::new(),
        };
        let mut first = 0;
        for s in 0..swarms {
            let share = viewers / swarms + u64::from(s < viewers % swarms);
            let i = children.len();
            let mut command = tokio::process::Command::new(binary("emostream-swarm"));
            command
                .args(["--main", &main])
                .args(["--viewers", &share.to_string()])
                .args(["--seconds", &swarm_seconds.to_string()])
                .args(["--connect-per-s", "1000"])
                .arg("--out")
                .arg(work.join(format!("swarm-{i}.json")))
                .arg("--epoch-reads")
                .arg(work.join(format!("reads-{i}.json")))
                .stdout(log_file(&work, &format!("swarm-{i}.out")))
                .stderr(log_file(&work, &format!("swarm-{i}.err")))
                .kill_on_drop(true);
            if name == "crowd" {
                command.args(["--stream", "crowd"]);
            } else {
                command
                    .args(["--stream", "p"])
                    .args(["--stream-count", &args.streams.to_string()])
                    .args(["--offset", &first.to_string()]);
            }
            first += share;
            children.push(command.spawn().expect("emostream-swarm starts"));
            group.swarms.push(i);
        }
        groups.push(group);
    }
    step(&format!(
        "{} viewers on streams of their own and {} of stream crowd, placed by POST /v1/viewers at {main}, in {} swarm processes",
        args.streams,
        args.crowd,
        children.len()
    ));
    let connect_limit = Duration::from_secs(60 + (args.streams + args.crowd) / 500);
    let Some(lines) = bench::swarms_connected(&mut children, work.path(), connect_limit).await
    else {
        return ExitCode::FAILURE;
    };
    for (s, line) in lines.iter().enumerate() {
        eprintln!("    swarm {s}: {line}");
        // "ALL CONNECTED n of m after …": a viewer that could not register or connect fails
        // the run now, not after it.
        let mut words = line.split_whitespace().skip(2);
        let (n, m) = (words.next(), words.nth(1));
        if n != m {
            eprintln!(
                "swarm {s} did not connect every viewer:\n{}",
                tail(&work.join(format!("swarm-{s}.err")))
            );
            return ExitCode::FAILURE;
        }
    }
    let connected_kib = system.resident_kib();

    let mut streams: Vec<String> = (0..args.streams).map(|i| format!("p-{i}")).collect();
    if args.crowd > 0 {
        streams.push("crowd".into());
    }
    let requests_per_s = streams.len() as f64 * 1000.0 / window_ms as f64;
    step(&format!(
        "taps: {} streams × one request of {} taps per {window_ms} ms epoch ({requests_per_s:.0} requests/s), each stream from its own X-Forwarded-For address, for {} s",
        streams.len(),
        args.batch,
        args.seconds
    ));
    let plan = taps::Plan {
        gateway: system.gateway().to_string(),
        streams: streams.clone(),
        rate: requests_per_s * args.batch as f64,
        batch: args.batch as usize,
        duration: Duration::from_secs(args.seconds),
        connections: CONNECTIONS,
        forwarded: true,
    };
    let mut pids = system.pids();
    pids.extend(
        (children.iter().enumerate()).filter_map(|(i, c)| Some((format!("swarm-{i}"), c.id()?))),
    );
    pids.push(("tap driver (this tool)".into(), std::process::id()));
    for name in ["nisshi", "postgres"] {
        pids.extend(
            procfs::pids_with(&[name])
                .into_iter()
                .map(|pid| (name.to_string(), pid)),
        );
    }
    let cpu_before = cpu_of(&pids);
    let sent_from = Instant::now();
    let outcome = taps::drive(plan, &taps::Pool::default()).await;
    let sent_for = sent_from.elapsed();
    let cpu = cpu_use(&cpu_before, &cpu_of(&pids), sent_for);
    let live_kib = system.resident_kib();
    let live_anon = system.anonymous_kib();
    eprintln!(
        "    {} requests in {:.1} s, {} acknowledged, refused {:?}, {} without an answer, {} skipped; waiting for the swarms",
        outcome.requests,
        sent_for.as_secs_f64(),
        outcome.acked.len(),
        outcome.refused,
        outcome.transport_errors,
        outcome.skipped
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

    // The viewers are gone: every broadcaster tier should forget every stream after the idle
    // time. (The gateway's live set is bounded by max_live_streams and swept when a new stream
    // needs its place, so its count stays until then: reported, not awaited.)
    step(&format!(
        "viewers gone: waiting for every broadcaster tier to forget every stream (stream_idle_s {} s, then the next sweep)",
        args.idle_s
    ));
    let idle_from = Instant::now();
    let idle_limit = Duration::from_secs(args.idle_s * 2 + 60);
    let forgot = loop {
        let held = held_streams(&system).await;
        if (held.iter())
            .filter(|(tier, _)| tier != "gateway")
            .all(|(_, n)| *n == Some(0))
        {
            break true;
        }
        if idle_from.elapsed() > idle_limit {
            eprintln!("    still held after {idle_limit:?}: {held:?}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let idle_kib = system.resident_kib();
    let idle_anon = system.anonymous_kib();
    let gateway_live = held_streams(&system).await[0].1;
    eprintln!(
        "    {} after {:.0} s",
        if forgot {
            "every tier forgot every stream"
        } else {
            "NOT every stream forgotten"
        },
        idle_from.elapsed().as_secs_f64()
    );

    // Viewer by viewer.
    let mut acked: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for tap in &outcome.acked {
        *acked.entry((tap.stream, tap.epoch)).or_default() += tap.taps;
    }
    let viewers_of = |stream: usize| {
        if streams[stream] == "crowd" {
            args.crowd
        } else {
            1
        }
    };
    let mut mismatches = Vec::new();
    let mut report = String::new();
    let mut all_reads = Reads::default();
    for group in &groups {
        let mut merged = Vec::new();
        for &s in &group.swarms {
            merged.push(work.join(format!("swarm-{s}.json")));
            let reads: Reads = serde_json::from_str(&read(&work, &format!("reads-{s}.json")))
                .expect("a swarm's epoch reads");
            all_reads.add(reads);
        }
        let table = std::process::Command::new(binary("emostream-swarm"))
            .arg("merge")
            .args(&merged)
            .output()
            .expect("emostream-swarm merge");
        report.push_str(&format!(
            "\n### Viewers: {}\n\n{}",
            group.name,
            String::from_utf8_lossy(&table.stdout)
        ));
        let line = String::from_utf8_lossy(&table.stdout)
            .lines()
            .find(|l| l.starts_with("SWARM"))
            .map(str::to_owned)
            .unwrap_or_default();
        for (field, want) in [
            ("failed", 0),
            ("dropped", 0),
            ("lagged", 0),
            ("repeated", 0),
        ] {
            let got = field_of(&line, field);
            if got != Some(want) {
                mismatches.push(format!("{}: {field} = {got:?}", group.name));
            }
        }
    }
    // Per stream: every frame a viewer read, read by each of the stream's viewers alike; each
    // epoch's count the taps acknowledged into it, except where taps came later than the
    // lateness bound and were counted in a later epoch, flagged `late` (the contract's rule):
    // then the stream's frames must still add up to every tap acknowledged for it.
    let (mut exact_epochs, mut late_taps, mut late_streams) = (0u64, 0u64, 0u64);
    for (i, name) in streams.iter().enumerate() {
        let want = viewers_of(i);
        let mine: BTreeMap<u64, u64> = (acked.range((i as u32, 0)..=(i as u32, u64::MAX)))
            .map(|(&(_, epoch), &taps)| (epoch, taps))
            .collect();
        let empty = BTreeMap::new();
        let reads = all_reads.streams.get(name).unwrap_or(&empty);
        let (mut read_total, mut stream_late) = (0, 0);
        for (epoch, read) in reads {
            let n: u64 = read.counts.iter().map(|c| c.2).sum();
            let [(total, late, _)] = read.counts[..] else {
                mismatches.push(format!(
                    "stream {name} epoch {epoch}: its {want} viewers read (total, late, viewers) {:?}",
                    read.counts
                ));
                continue;
            };
            if n != want {
                mismatches.push(format!(
                    "stream {name} epoch {epoch}: {n} reads of its frame, {want} viewers"
                ));
            }
            read_total += total;
            stream_late += late;
            if mine.get(epoch) == Some(&total) && late == 0 {
                exact_epochs += 1;
            }
        }
        // A tap moves only to a later epoch: through every epoch, the frames so far count at
        // most the taps acknowledged so far; where nothing came late, exactly them.
        let epochs: std::collections::BTreeSet<u64> =
            mine.keys().chain(reads.keys()).copied().collect();
        let (mut acked_so_far, mut read_so_far) = (0, 0);
        for epoch in epochs {
            let taps = mine.get(&epoch).copied().unwrap_or(0);
            let total = reads
                .get(&epoch)
                .map_or(0, |r| r.counts.first().map_or(0, |c| c.0));
            acked_so_far += taps;
            read_so_far += total;
            if read_so_far > acked_so_far || (stream_late_total(reads) == 0 && total != taps) {
                mismatches.push(format!(
                    "stream {name} epoch {epoch}: {taps} taps acknowledged into it ({acked_so_far} so far), its viewers read {total} ({read_so_far} so far)"
                ));
            }
        }
        let acked_total: u64 = mine.values().sum();
        if read_total != acked_total {
            mismatches.push(format!(
                "stream {name}: {acked_total} taps acknowledged, its frames add up to {read_total}"
            ));
        }
        late_taps += stream_late;
        late_streams += u64::from(stream_late > 0);
    }
    for name in all_reads.streams.keys() {
        if !streams.contains(name) {
            mismatches.push(format!("stream {name}: read by a viewer, never tapped"));
        }
    }
    // Taps every epoch: how many epochs each stream's acknowledged taps went into.
    let mut epochs_per_stream = vec![0u64; streams.len()];
    for &(stream, _) in acked.keys() {
        epochs_per_stream[stream as usize] += 1;
    }
    let fewest = epochs_per_stream.iter().min().copied().unwrap_or(0);
    let most = epochs_per_stream.iter().max().copied().unwrap_or(0);

    let mut out = String::new();
    out.push_str(&format!(
        "# scripts/bench_platform.sh: {} streams with a viewer each + 1 stream with {} viewers, {} s of taps, {} cores\n\n",
        args.streams,
        args.crowd,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let acked_taps: u64 = outcome.acked.iter().map(|t| t.taps).sum();
    out.push_str(&format!(
        "taps: {} requests in {:.1} s ({:.0}/s offered), {} acknowledged ({acked_taps} taps) into {} (stream, epoch) pairs; refused {:?}; no answer {}; skipped (all {CONNECTIONS} connections busy) {}; each stream's taps went into {fewest} to {most} epochs\n",
        outcome.requests,
        sent_for.as_secs_f64(),
        outcome.requests as f64 / sent_for.as_secs_f64(),
        outcome.acked.len(),
        acked.len(),
        outcome.refused,
        outcome.transport_errors,
        outcome.skipped,
    ));
    out.push_str(&format!(
        "frames: {exact_epochs} (stream, epoch) pairs exactly as acknowledged; {late_taps} taps of {late_streams} streams came past the lateness bound and were counted in a later epoch, flagged late\n"
    ));
    out.push_str(&report);
    out.push_str(&cpu);
    out.push_str(&format!("\nthe gateway's live-stream set after the idle time: {gateway_live:?} (swept when a new stream needs a place)\n"));
    out.push_str("\n### Resident memory (MiB)\n\n| process | before viewers | viewers connected | end of taps (streams live) | after the idle time |\n|---|---|---|---|---|\n");
    let mib = |set: &[(String, u64)], name: &str| {
        set.iter()
            .find(|(n, _)| n == name)
            .map_or("-".into(), |(_, k)| format!("{:.1}", *k as f64 / 1024.0))
    };
    for (name, _) in &baseline {
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            mib(&baseline, name),
            mib(&connected_kib, name),
            mib(&live_kib, name),
            mib(&idle_kib, name)
        ));
    }
    out.push_str("\nOf which anonymous (`RssAnon`: heap, stacks, the allocators' arenas; the rest is the binaries' and libraries' pages mapped from disk, which grow as code first runs):\n\n| process | before viewers | end of taps (streams live) | after the idle time |\n|---|---|---|---|\n");
    for (name, _) in &baseline_anon {
        out.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            mib(&baseline_anon, name),
            mib(&live_anon, name),
            mib(&idle_anon, name)
        ));
    }
    let exact = mismatches.is_empty()
        && forgot
        && outcome.transport_errors == 0
        && !acked.is_empty()
        && outcome.refused.is_empty();
    if exact {
        out.push_str(&format!(
            "\nEXACT: every viewer's frames add up to the {acked_taps} taps the gateway acknowledged for its stream; {exact_epochs} (stream, epoch) pairs exactly as acknowledged, {late_taps} taps of {late_streams} streams past the lateness bound counted in a later epoch, flagged late; no lag notice, no drop, no repeat; every broadcaster tier forgot every stream after the idle time\n"
        ));
    } else {
        out.push_str("\nMISMATCH:\n");
        for m in mismatches.iter().take(40) {
            out.push_str(&format!("  {m}\n"));
        }
        if mismatches.len() > 40 {
            out.push_str(&format!("  … {} in all\n", mismatches.len()));
        }
        if !forgot {
            out.push_str(
                "  not every broadcaster tier forgot every stream within the idle limit\n",
            );
        }
        if outcome.transport_errors > 0 || !outcome.refused.is_empty() {
            out.push_str(&format!(
                "  taps refused {:?}, without an answer {} ({:?})\n",
                outcome.refused, outcome.transport_errors, outcome.errors
            ));
        }
    }
    print!("{out}");
    let written = std::fs::create_dir_all(&args.results)
        .and_then(|()| std::fs::write(args.results.join("platform.md"), &out));
    match written {
        Ok(()) => eprintln!("report: {}", args.results.join("platform.md").display()),
        Err(e) => eprintln!("could not write to {}: {e}", args.results.display()),
    }
    if exact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The late taps the frames of one stream carry.
fn stream_late_total(reads: &BTreeMap<u64, Read>) -> u64 {
    (reads.values())
        .filter_map(|r| r.counts.first())
        .map(|c| c.1)
        .sum()
}

/// Each process's CPU seconds so far, by name.
fn cpu_of(pids: &[(String, u32)]) -> Vec<(String, f64)> {
    (pids.iter())
        .map(|(name, pid)| (name.clone(), procfs::cpu_secs(*pid)))
        .collect()
}

/// Where the machine's cores went while the taps were sent: CPU seconds per part (processes of
/// one kind added up), as a share of cores × wall time; what is left is idle or other processes.
fn cpu_use(before: &[(String, f64)], after: &[(String, f64)], wall: Duration) -> String {
    let kind = |name: &str| -> &'static str {
        match name {
            n if n.starts_with("gateway") => "gateway",
            n if n.starts_with("dataflow") => "dataflow processes",
            "main" => "main publisher",
            n if n.starts_with("swarm") => "viewer swarms (the clients)",
            n if n.starts_with("tap driver") => "tap driver (the clients)",
            "nisshi" => "broker (Nisshi)",
            "postgres" => "broker's PostgreSQL",
            n if n.contains("-s") => "subscribers",
            _ => "cluster publishers",
        }
    };
    let mut by_kind: BTreeMap<&'static str, f64> = BTreeMap::new();
    for ((name, b), (_, a)) in before.iter().zip(after) {
        *by_kind.entry(kind(name)).or_default() += (a - b).max(0.0);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let capacity = cores * wall.as_secs_f64();
    let mut rows: Vec<_> = by_kind.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut out = format!(
        "\n### Where the {cores} cores went while the taps were sent ({:.1} s, {capacity:.1} CPU-s)\n\n| part | CPU-s | share of the machine |\n|---|---|---|\n",
        wall.as_secs_f64()
    );
    let mut used = 0.0;
    for (kind, secs) in rows {
        used += secs;
        out.push_str(&format!(
            "| {kind} | {secs:.1} | {:.0} % |\n",
            100.0 * secs / capacity
        ));
    }
    out.push_str(&format!(
        "| idle or other processes | {:.1} | {:.0} % |\n",
        (capacity - used).max(0.0),
        100.0 * (capacity - used).max(0.0) / capacity
    ));
    out
}

/// How many streams each broadcaster tier holds and how many the gateway has open, from their
/// `/metrics`.
async fn held_streams(system: &System) -> Vec<(String, Option<u64>)> {
    let b = &system.config.broadcaster;
    let mut tiers = vec![
        (
            "gateway".to_string(),
            system.gateway().to_string(),
            "_live_streams",
        ),
        ("main".to_string(), b.main.clone(), "_streams_held"),
    ];
    for c in &b.clusters {
        tiers.push((c.name.clone(), c.listen.clone(), "_streams_held"));
        for (i, s) in c.subscribers.iter().enumerate() {
            tiers.push((format!("{}-s{i}", c.name), s.clone(), "_streams_held"));
        }
    }
    let mut out = Vec::new();
    for (name, addr, suffix) in tiers {
        let value = http::get(&addr, "/metrics").await.ok().and_then(|r| {
            r.body.lines().find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                (!line.starts_with('#') && metric.ends_with(suffix))
                    .then(|| value.parse::<f64>().ok().map(|v| v as u64))?
            })
        });
        out.push((name, value));
    }
    out
}

/// The swarms' `--epoch-reads` files, merged: per stream, per epoch, the (total, late) counts
/// viewers read with how many read each.
#[derive(Debug, Default, Deserialize)]
struct Reads {
    streams: BTreeMap<String, BTreeMap<u64, Read>>,
}

#[derive(Debug, Default, Deserialize)]
struct Read {
    counts: Vec<(u64, u64, u64)>,
}

impl Reads {
    fn add(&mut self, other: Reads) {
        for (stream, epochs) in other.streams {
            let mine = self.streams.entry(stream).or_default();
            for (epoch, read) in epochs {
                let into = &mut mine.entry(epoch).or_default().counts;
                for (total, late, n) in read.counts {
                    match into.iter_mut().find(|c| (c.0, c.1) == (total, late)) {
                        Some(c) => c.2 += n,
                        None => into.push((total, late, n)),
                    }
                }
            }
        }
    }
}

fn field_of(line: &str, field: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('=')?.parse().ok())
}

fn log_file(work: &Scratch, name: &str) -> std::fs::File {
    std::fs::File::create(work.join(name)).expect("a log file")
}

fn read(work: &Scratch, name: &str) -> String {
    std::fs::read_to_string(work.join(name)).unwrap_or_default()
}
