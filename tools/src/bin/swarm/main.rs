//! `emostream-swarm`: N viewers (WebSocket, or SSE with `--sse`) spread over the subscribers,
//! measuring how long after an epoch's `end_ms` (with the main publisher's `--synthetic-ms`, the
//! moment it emitted the epoch) each viewer had it. A progress line every second and a summary
//! table at the end.
//!
//! An epoch reaches a viewer as four messages: the epoch frame, then the `trending`, `sentiment`
//! and `popular` frames. Two moments per viewer and epoch are timed:
//! - **the epoch frame**: when the viewer had the epoch frame itself;
//! - **the whole epoch** (the headline): when the viewer had the last of the four, whichever came
//!   last — the moment the viewer can show everything about the epoch.
//!
//! and each of them twice. **Read**: when the `read` that returned the message's last bytes
//! returned, the moment an ordinary client has the message; the swarm runs at normal priority, as
//! such a client does, so on one machine this includes its wait for a core. **Stamp**: when the
//! message's last packet reached the viewer's socket (the kernel's receive stamp,
//! `SO_TIMESTAMPNS`); on loopback the receiving stack runs inside the server's `send`, so this is
//! the server-side fan-out time — when the server had handed the message over — not a receipt.
//!
//! ```text
//! emostream-swarm --subscribers ws://127.0.0.1:9011,ws://127.0.0.1:9012 --viewers 10000 --seconds 20
//! emostream-swarm --subscribers ws://127.0.0.1:9011 --sse --viewers 1000  # GET …/sse instead
//! emostream-swarm --main 127.0.0.1:9000 --viewers 100            # placed by POST /v1/viewers
//! emostream-swarm merge a.json b.json                            # one table for several swarms
//! ```
//! A process may hold only so many sockets (its hard limit on open files; the swarm raises its
//! soft limit to it), so a large swarm is several processes, each with `--out FILE`, merged
//! afterwards.

use emostream_protocol::wire::Admission;
use emostream_testkit::{bucket_percentile, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod client;
use client::{Client, Event};
#[path = "../../limits.rs"]
mod limits;

/// Latency buckets of 1 ms up to 10 s; the last bucket holds everything slower.
const BUCKETS: usize = 10_001;

#[derive(Default)]
struct Tally {
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    frames: AtomicU64,
    missing: AtomicU64,
    /// Messages of an epoch a viewer already had a message of that kind for (a resend).
    repeated: AtomicU64,
    lagged: AtomicU64,
    /// Epochs a viewer had all four messages of.
    epochs: AtomicU64,
    measuring: AtomicBool,
    /// Per 1 ms bucket: end → the epoch frame read by the viewer, and its kernel stamp.
    epoch_read_ms: Vec<AtomicU64>,
    epoch_stamp_ms: Vec<AtomicU64>,
    /// Per 1 ms bucket: end → the epoch's last message read by the viewer, and its kernel stamp.
    whole_read_ms: Vec<AtomicU64>,
    whole_stamp_ms: Vec<AtomicU64>,
    /// With `--epoch-reads`: every epoch frame each viewer read, by epoch.
    epoch_reads: Option<std::sync::Mutex<EpochReads>>,
}

/// `--epoch-reads`: per stream and epoch, when each viewer read its epoch frame and the count it
/// saw, so that the end-to-end benchmarks can join them with the taps sent into that epoch (tap →
/// screen) and check the count against the taps the gateway acknowledged.
#[derive(Debug, Default, Serialize, Deserialize)]
struct EpochReads {
    streams: BTreeMap<String, BTreeMap<u64, EpochRead>>,
}

/// One epoch's frame as the viewers of one swarm read it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct EpochRead {
    end_ms: u64,
    /// Unix ms at which a viewer's `read` returned the frame's last bytes, one per viewer-read.
    read_ms: Vec<u64>,
    /// The frame's `total` and `late` as each viewer read them: (total, late) → viewer-reads.
    counts: Vec<(u64, u64, u64)>,
}

/// What one swarm reports, and what `merge` adds up.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    viewers: u64,
    connected: u64,
    failed: u64,
    dropped: u64,
    frames: u64,
    missing: u64,
    #[serde(default)]
    repeated: u64,
    lagged: u64,
    epochs: u64,
    /// Counts per 1 ms bucket of end → the epoch frame read by the viewer, and its kernel stamp.
    epoch_read_ms: Vec<u64>,
    epoch_stamp_ms: Vec<u64>,
    /// Counts per 1 ms bucket of end → the epoch's last message read, and its kernel stamp.
    whole_read_ms: Vec<u64>,
    whole_stamp_ms: Vec<u64>,
}

impl Report {
    fn add(&mut self, other: Report) {
        self.viewers += other.viewers;
        self.connected += other.connected;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.frames += other.frames;
        self.missing += other.missing;
        self.repeated += other.repeated;
        self.lagged += other.lagged;
        self.epochs += other.epochs;
        add_buckets(&mut self.epoch_read_ms, other.epoch_read_ms);
        add_buckets(&mut self.epoch_stamp_ms, other.epoch_stamp_ms);
        add_buckets(&mut self.whole_read_ms, other.whole_read_ms);
        add_buckets(&mut self.whole_stamp_ms, other.whole_stamp_ms);
    }

    /// End → the epoch's last message read by the viewer: the headline.
    fn percentile(&self, p: f64) -> Option<u64> {
        bucket_percentile(&self.whole_read_ms, p)
    }

    fn table(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        let num = |v: Option<u64>| v.map_or(-1, |v| v as i64);
        let p = |buckets: &[u64], p: f64| bucket_percentile(buckets, p);
        let (epoch_read, epoch_stamp) = (&self.epoch_read_ms, &self.epoch_stamp_ms);
        let (whole_read, whole_stamp) = (&self.whole_read_ms, &self.whole_stamp_ms);
        let rows = [
            ("viewers asked", self.viewers.to_string()),
            ("connected", self.connected.to_string()),
            ("failed to connect", self.failed.to_string()),
            ("dropped while measuring", self.dropped.to_string()),
            ("messages received", self.frames.to_string()),
            (
                "whole epochs received (all four messages)",
                self.epochs.to_string(),
            ),
            ("missing messages", self.missing.to_string()),
            ("repeated messages", self.repeated.to_string()),
            ("lag notices", self.lagged.to_string()),
            ("p50 end → whole epoch read", ms(p(whole_read, 0.5))),
            ("p99 end → whole epoch read", ms(p(whole_read, 0.99))),
            ("max end → whole epoch read", ms(p(whole_read, 1.0))),
            ("p99 end → whole epoch stamped", ms(p(whole_stamp, 0.99))),
            ("p50 end → epoch frame read", ms(p(epoch_read, 0.5))),
            ("p99 end → epoch frame read", ms(p(epoch_read, 0.99))),
            ("p99 end → epoch frame stamped", ms(p(epoch_stamp, 0.99))),
        ];
        let mut out = String::from("| what | value |\n|---|---|\n");
        for (what, value) in rows {
            out.push_str(&format!("| {what} | {value} |\n"));
        }
        out.push_str(&format!(
            "SWARM connected={} failed={} dropped={} frames={} epochs={} missing={} repeated={} lagged={} \
             p50_read_ms={} p99_read_ms={} p99_stamp_ms={} \
             p50_epoch_read_ms={} p99_epoch_read_ms={} p99_epoch_stamp_ms={}\n",
            self.connected,
            self.failed,
            self.dropped,
            self.frames,
            self.epochs,
            self.missing,
            self.repeated,
            self.lagged,
            num(p(whole_read, 0.5)),
            num(p(whole_read, 0.99)),
            num(p(whole_stamp, 0.99)),
            num(p(epoch_read, 0.5)),
            num(p(epoch_read, 0.99)),
            num(p(epoch_stamp, 0.99)),
        ));
        out
    }
}

fn add_buckets(into: &mut Vec<u64>, from: Vec<u64>) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// What one viewer has seen: the newest epoch of each kind of message (epoch, trending,
/// sentiment, popular), and the epoch it is collecting the four messages of.
#[derive(Default)]
struct Watch {
    last: [Option<u64>; 4],
    open: Option<Collecting>,
}

/// An epoch whose messages are arriving at one viewer.
struct Collecting {
    epoch: u64,
    /// The kinds seen, a bit each.
    kinds: u8,
    /// The latest read and stamp among them (Unix ms).
    read_ms: u64,
    stamp_ms: u64,
}

/// All four kinds of message of an epoch.
const WHOLE: u8 = 0b1111;

impl Tally {
    fn new() -> Self {
        let buckets = || (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        Tally {
            epoch_read_ms: buckets(),
            epoch_stamp_ms: buckets(),
            whole_read_ms: buckets(),
            whole_stamp_ms: buckets(),
            ..Tally::default()
        }
    }

    /// One text message a viewer read at `read_ms`, its last packet stamped `arrived_ms`.
    fn record(&self, watch: &mut Watch, text: &[u8], read_ms: u64, arrived_ms: u64) {
        let Ok(head) = serde_json::from_slice::<Head>(text) else {
            return;
        };
        // Each kind has its own epoch sequence: the synthetic source sends every kind every
        // epoch, so a gap in any of them is a message this viewer never got.
        let kind = match head.kind {
            "epoch" => 0,
            "trending" => 1,
            "sentiment" => 2,
            "popular" => 3,
            "lagged" => {
                self.lagged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => return,
        };
        let (Some(epoch), Some(end_ms)) = (head.epoch, head.end_ms) else {
            return;
        };
        if let (0, Some(reads)) = (kind, &self.epoch_reads) {
            // Whether measuring or not: the epochs the taps went into decide which count.
            let mut reads = reads.lock().expect("the swarm's one thread");
            let stream = head.stream.unwrap_or_default();
            let epochs = match reads.streams.get_mut(stream) {
                Some(epochs) => epochs,
                None => reads.streams.entry(stream.to_owned()).or_default(),
            };
            let entry = epochs.entry(epoch).or_default();
            entry.end_ms = end_ms;
            entry.read_ms.push(read_ms);
            let (total, late) = (head.total.unwrap_or(0), head.late.unwrap_or(0));
            match entry
                .counts
                .iter_mut()
                .find(|c| (c.0, c.1) == (total, late))
            {
                Some(c) => c.2 += 1,
                None => entry.counts.push((total, late, 1)),
            }
        }
        let measuring = self.measuring.load(Ordering::Relaxed);
        let last = &mut watch.last[kind];
        if measuring {
            if let Some(last) = *last {
                self.missing
                    .fetch_add(epoch.saturating_sub(last + 1), Ordering::Relaxed);
                if epoch <= last {
                    self.repeated.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        *last = Some(epoch);
        // The epoch is whole at its fourth kind, whatever their order (trend frames come from
        // another topic than epoch frames). A newer epoch abandons an unfinished one: its
        // missing message is counted above when the next of its kind comes.
        let whole = match &mut watch.open {
            // A message of an epoch older than the one collected: counted, but that epoch was
            // abandoned.
            Some(open) if open.epoch > epoch => None,
            open => {
                let open = match open {
                    Some(open) if open.epoch == epoch => open,
                    open => open.insert(Collecting {
                        epoch,
                        kinds: 0,
                        read_ms,
                        stamp_ms: arrived_ms,
                    }),
                };
                let was_whole = open.kinds == WHOLE;
                open.kinds |= 1 << kind;
                open.read_ms = open.read_ms.max(read_ms);
                open.stamp_ms = open.stamp_ms.max(arrived_ms);
                (open.kinds == WHOLE && !was_whole).then_some((open.read_ms, open.stamp_ms))
            }
        };
        if !measuring {
            return;
        }
        self.frames.fetch_add(1, Ordering::Relaxed);
        let bucket = |at: u64| at.saturating_sub(end_ms).min(BUCKETS as u64 - 1) as usize;
        if kind == 0 {
            self.epoch_read_ms[bucket(read_ms)].fetch_add(1, Ordering::Relaxed);
            self.epoch_stamp_ms[bucket(arrived_ms)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some((read_ms, stamp_ms)) = whole {
            self.epochs.fetch_add(1, Ordering::Relaxed);
            self.whole_read_ms[bucket(read_ms)].fetch_add(1, Ordering::Relaxed);
            self.whole_stamp_ms[bucket(stamp_ms)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    stream: Option<&'a str>,
    epoch: Option<u64>,
    end_ms: Option<u64>,
    /// An epoch frame's raw count and late taps (for `--epoch-reads`).
    total: Option<u64>,
    late: Option<u64>,
}

/// Where a viewer of `stream` on the subscriber at `base` (`ws://host:port`) connects: its
/// WebSocket endpoint, or with `sse` its event stream (plain HTTP, the same host and port).
fn viewer_url(base: &str, stream: &str, sse: bool, query: &str) -> String {
    if sse {
        let host = base.strip_prefix("ws://").unwrap_or(base);
        format!("http://{host}/v1/streams/{stream}/sse{query}")
    } else {
        format!("{base}/v1/streams/{stream}/ws{query}")
    }
}

/// `POST /v1/viewers` at the main publisher: the URL to watch `stream` at (a viewer token is
/// good for the stream it was issued for only).
async fn register(main: &str, user: usize, stream: &str, sse: bool) -> Option<String> {
    let body = format!(r#"{{"user_id":"swarm-{user}","stream":"{stream}"}}"#);
    let mut conn = tokio::net::TcpStream::connect(main).await.ok()?;
    let request = format!(
        "POST /v1/viewers HTTP/1.1\r\nHost: {main}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    let admission: Admission = serde_json::from_str(body).ok()?;
    let token = admission
        .token
        .map(|t| format!("?token={t}"))
        .unwrap_or_default();
    Some(viewer_url(
        &admission.assignment.subscriber,
        stream,
        sse,
        &token,
    ))
}

async fn viewer(url: String, seed: u64, tally: Arc<Tally>) {
    let mut client = None;
    for attempt in 0..5 {
        match Client::connect(&url, seed).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
        }
    }
    let Some(mut client) = client else {
        tally.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    let mut watch = Watch::default();
    let (mut arrived, mut read) = (0, 0);
    loop {
        let text = match client
            .next(|stamp| {
                read = now_ms();
                arrived = stamp.unwrap_or(read);
            })
            .await
        {
            Ok(Event::Text(text)) => text,
            Ok(Event::Closed) | Err(_) => break,
        };
        tally.record(&mut watch, text, read, arrived);
    }
    if tally.measuring.load(Ordering::Relaxed) {
        tally.dropped.fetch_add(1, Ordering::Relaxed);
    }
    tally.connected.fetch_sub(1, Ordering::Relaxed);
}

/// N WebSocket viewers spread over the subscribers, measuring each epoch's end_ms → receipt.
#[derive(Debug, clap::Parser)]
#[command(
    name = "emostream-swarm",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    merge: Option<Merge>,
    /// Absent only with `merge`: without it clap requires --viewers and a target.
    #[command(flatten)]
    swarm: Option<Swarm>,
}

#[derive(Debug, clap::Subcommand)]
enum Merge {
    /// One table from the --out reports of several swarms.
    Merge {
        #[arg(required = true, value_name = "FILE")]
        reports: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let Cli { merge, swarm } = clap::Parser::parse();
    if let Some(Merge::Merge { reports }) = merge {
        let mut total = Report::default();
        for path in &reports {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            total.add(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}")));
        }
        print!("{}", total.table());
        return std::process::ExitCode::SUCCESS;
    }
    let swarm = swarm.expect("clap requires the swarm's options when there is no merge");
    let descriptors = limits::raise_descriptor_limit();
    if swarm.viewers + 100 > descriptors {
        eprintln!(
            "emostream-swarm: {} viewers need more descriptors than the limit of {descriptors}; \
             split them over several swarms (--out, then merge)",
            swarm.viewers
        );
        return std::process::ExitCode::FAILURE;
    }
    // One thread: the swarm shares the machine with what it measures, and a second worker would
    // only add cross-thread wake-ups to every frame.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts at process start");
    let report = match runtime.block_on(swarm.run()) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("emostream-swarm: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(out) = &swarm.out {
        std::fs::write(
            out,
            serde_json::to_string(&report).expect("a report serializes"),
        )
        .unwrap_or_else(|e| panic!("{out}: {e}"));
    }
    // Tens of thousands of sockets close with the process, far faster than one by one.
    std::process::exit(0);
}

/// What one swarm does; `--subscribers` or `--main` says where its viewers connect.
#[derive(Debug, clap::Args)]
struct Swarm {
    /// Subscriber URLs (ws://host:port), comma-separated; viewer i watches the (offset + i)-th.
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        required_unless_present = "main",
        conflicts_with = "main"
    )]
    subscribers: Vec<String>,
    /// Register each viewer at this main publisher (POST /v1/viewers) and go where it says.
    #[arg(long, value_name = "HOST:PORT")]
    main: Option<String>,
    /// How many viewers.
    #[arg(long, value_name = "N")]
    viewers: u64,
    /// Watch over SSE (`GET /v1/streams/STREAM/sse`) instead of WebSocket.
    #[arg(long)]
    sse: bool,
    /// The stream to watch.
    #[arg(long, default_value = "main")]
    stream: String,
    /// Watch this many streams instead, STREAM-0 to STREAM-(N-1): viewer i watches the
    /// ((offset + i) mod N)-th, as the main publisher's `--synthetic-streams` names them.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    stream_count: u64,
    /// How long to measure once all are connected.
    #[arg(long, value_name = "S", default_value_t = 20)]
    seconds: u64,
    /// New connections per second.
    #[arg(long, value_name = "R", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    connect_per_s: u64,
    /// First subscriber for viewer 0, and with --stream-count its first stream (spreads several
    /// swarms).
    #[arg(long, value_name = "I", default_value_t = 0)]
    offset: usize,
    /// Write the report here as JSON (for merge).
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
    /// Write every epoch frame read, per stream and epoch (each viewer's read time and the count
    /// it saw), here as JSON at the end (for the end-to-end benchmarks).
    #[arg(long, value_name = "FILE")]
    epoch_reads: Option<String>,
}

impl Swarm {
    /// The stream viewer `i` watches.
    fn stream_of(&self, i: u64) -> String {
        match self.stream_count {
            1 => self.stream.clone(),
            n => format!("{}-{}", self.stream, (self.offset as u64 + i) % n),
        }
    }

    async fn run(&self) -> Result<Report, std::io::Error> {
        // Held to the end: while it lives, every viewer's frames carry their arrival stamps.
        let _stamping = client::kernel_stamping(Duration::from_secs(10)).await?;
        let mut tally = Tally::new();
        if self.epoch_reads.is_some() {
            tally.epoch_reads = Some(Default::default());
        }
        let tally = Arc::new(tally);
        let started = Instant::now();
        let progress = {
            let tally = Arc::clone(&tally);
            let viewers = self.viewers;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let report = snapshot(&tally, viewers);
                    eprintln!(
                        "[{:>4}s] connected {}/{} failed {} frames {} missing {} read p50 {} p99 {}",
                        started.elapsed().as_secs(),
                        report.connected,
                        viewers,
                        report.failed,
                        report.frames,
                        report.missing,
                        report
                            .percentile(0.5)
                            .map_or("-".into(), |v| format!("{v}ms")),
                        report
                            .percentile(0.99)
                            .map_or("-".into(), |v| format!("{v}ms")),
                    );
                }
            })
        };
        let gap = Duration::from_secs(1) / u32::try_from(self.connect_per_s).unwrap_or(u32::MAX);
        let mut pace = tokio::time::interval(gap);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..self.viewers as usize {
            pace.tick().await;
            let stream = self.stream_of(i as u64);
            let url = match &self.main {
                Some(main) => register(main, i, &stream, self.sse).await,
                None => {
                    let subs = &self.subscribers;
                    let sub = &subs[(self.offset + i) % subs.len()];
                    Some(viewer_url(sub, &stream, self.sse, ""))
                }
            };
            match url {
                Some(url) => {
                    tokio::spawn(viewer(url, i as u64, Arc::clone(&tally)));
                }
                None => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Every attempt has ended one way or the other, then measure.
        let settle = Instant::now() + Duration::from_secs(30);
        while tally.connected.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed)
            < self.viewers
            && Instant::now() < settle
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "ALL CONNECTED {} of {} after {:.1}s",
            tally.connected.load(Ordering::Relaxed),
            self.viewers,
            started.elapsed().as_secs_f64()
        );
        tally.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(self.seconds)).await;
        tally.measuring.store(false, Ordering::Relaxed);
        progress.abort();
        if let (Some(path), Some(reads)) = (&self.epoch_reads, &tally.epoch_reads) {
            let reads = reads.lock().expect("the swarm's one thread");
            let json = serde_json::to_string(&*reads).expect("epoch reads serialize");
            std::fs::write(path, json)
                .map_err(|e| std::io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
        }
        Ok(snapshot(&tally, self.viewers))
    }
}

fn snapshot(tally: &Tally, viewers: u64) -> Report {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Report {
        viewers,
        connected: load(&tally.connected),
        failed: load(&tally.failed),
        dropped: load(&tally.dropped),
        frames: load(&tally.frames),
        missing: load(&tally.missing),
        repeated: load(&tally.repeated),
        lagged: load(&tally.lagged),
        epochs: load(&tally.epochs),
        epoch_read_ms: tally.epoch_read_ms.iter().map(load).collect(),
        epoch_stamp_ms: tally.epoch_stamp_ms.iter().map(load).collect(),
        whole_read_ms: tally.whole_read_ms.iter().map(load).collect(),
        whole_stamp_ms: tally.whole_stamp_ms.iter().map(load).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_merged_buckets() {
        let mut a = Report {
            whole_read_ms: vec![0, 98, 0, 0],
            viewers: 1,
            ..Report::default()
        };
        let b = Report {
            whole_read_ms: vec![0, 0, 0, 2],
            viewers: 2,
            ..Report::default()
        };
        a.add(b);
        assert_eq!(a.viewers, 3);
        assert_eq!(a.percentile(0.5), Some(1));
        assert_eq!(a.percentile(0.98), Some(1));
        assert_eq!(a.percentile(0.99), Some(3));
        assert_eq!(Report::default().percentile(0.5), None);
    }

    #[test]
    fn every_kind_is_timed_and_its_gaps_counted_and_an_epoch_is_whole_at_its_last_message() {
        use emostream_protocol::synthetic::frames;
        let tally = Tally::new();
        let mut watch = Watch::default();
        // Epoch 10 (end_ms 22000) before measuring: it only starts the sequences.
        for text in frames(&["main"], 10, 2000) {
            tally.record(&mut watch, text.as_bytes(), 22_500, 22_400);
        }
        tally.measuring.store(true, Ordering::Relaxed);
        // Epoch 11 whole: the epoch frame read 30 ms after its end (stamped at 20), the last
        // message read at 45 (stamped at 40).
        let epoch_11 = frames(&["main"], 11, 2000);
        for (i, text) in epoch_11.iter().enumerate() {
            let (read, stamp) = if i == 3 {
                (24_045, 24_040)
            } else {
                (24_030, 24_020)
            };
            tally.record(&mut watch, text.as_bytes(), read, stamp);
        }
        // Epoch 12 lost its epoch frame, so it is never whole; epoch 13 lost nothing but comes
        // 200 ms late, its trend frames first.
        for text in &frames(&["main"], 12, 2000)[1..] {
            tally.record(&mut watch, text.as_bytes(), 26_005, 26_001);
        }
        tally.record(
            &mut watch,
            br#"{"type":"lagged","missed":1}"#,
            27_000,
            27_000,
        );
        let mut epoch_13 = frames(&["main"], 13, 2000);
        epoch_13.rotate_left(1);
        for text in epoch_13 {
            tally.record(&mut watch, text.as_bytes(), 28_200, 28_100);
        }
        let report = snapshot(&tally, 1);
        assert_eq!(
            (report.frames, report.epochs, report.missing, report.lagged),
            (11, 2, 1, 1)
        );
        let counts = |buckets: &[u64]| -> Vec<(usize, u64)> {
            (buckets.iter().enumerate())
                .filter(|(_, n)| **n > 0)
                .map(|(ms, n)| (ms, *n))
                .collect()
        };
        assert_eq!(counts(&report.epoch_read_ms), vec![(30, 1), (200, 1)]);
        assert_eq!(counts(&report.epoch_stamp_ms), vec![(20, 1), (100, 1)]);
        assert_eq!(counts(&report.whole_read_ms), vec![(45, 1), (200, 1)]);
        assert_eq!(counts(&report.whole_stamp_ms), vec![(40, 1), (100, 1)]);
    }

    #[test]
    fn epoch_reads_keep_each_viewers_read_and_count_of_every_epoch_frame() {
        use emostream_protocol::synthetic::frames;
        let mut tally = Tally::new();
        tally.epoch_reads = Some(Default::default());
        // Two viewers read epoch 10's frames, one of them epoch 11's too; only epoch frames
        // (the first of each epoch's four messages) are kept, measuring or not.
        for (read, epoch) in [(22_100, 10), (22_300, 10), (24_050, 11)] {
            let mut watch = Watch::default();
            for text in frames(&["main"], epoch, 2000) {
                tally.record(&mut watch, text.as_bytes(), read, read);
            }
        }
        let reads = tally.epoch_reads.unwrap().into_inner().unwrap();
        let e10 = &reads.streams["main"][&10];
        assert_eq!(
            (e10.end_ms, &e10.read_ms[..]),
            (22_000, &[22_100, 22_300][..])
        );
        assert_eq!(e10.counts.len(), 1);
        assert_eq!(e10.counts[0].2, 2);
        assert_eq!(reads.streams["main"][&11].read_ms, [24_050]);
    }

    #[test]
    fn sse_viewers_go_to_the_same_host_and_port() {
        assert_eq!(
            viewer_url("ws://127.0.0.1:9011", "main", true, "?token=t"),
            "http://127.0.0.1:9011/v1/streams/main/sse?token=t"
        );
        assert_eq!(
            viewer_url("ws://127.0.0.1:9011", "main", false, ""),
            "ws://127.0.0.1:9011/v1/streams/main/ws"
        );
    }
}
