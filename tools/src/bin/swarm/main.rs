//! `emostream-swarm`: N WebSocket viewers spread over the subscribers, measuring every frame's
//! `end_ms` → receipt (with the main publisher's `--synthetic-ms`, that is emit → receipt): the
//! epoch frames and the trend frames (`trending`, `sentiment`, `popular`) alike, as a viewer needs
//! all of them. A progress line every second and a summary table at the end.
//!
//! Receipt is measured twice. **Read**: when the `read` that returned the frame's last bytes
//! returned, the moment an ordinary client has the frame; the swarm runs at normal priority, as
//! such a client does, so on one machine this includes its wait for a core. **Stamp**: when the
//! frame's last packet reached the viewer's socket (the kernel's receive stamp, `SO_TIMESTAMPNS`);
//! on loopback the receiving stack runs inside the server's `send`, so this is the server-side
//! fan-out time — when the server had handed the frame over — not a receipt.
//!
//! ```text
//! emostream-swarm --subscribers ws://127.0.0.1:9011,ws://127.0.0.1:9012 --viewers 10000 --seconds 20
//! emostream-swarm --main 127.0.0.1:9000 --viewers 100            # placed by POST /v1/viewers
//! emostream-swarm merge a.json b.json                            # one table for several swarms
//! ```
//! A process may hold only so many sockets (here 20,000 open files), so a large swarm is several
//! processes, each with `--out FILE`, merged afterwards.

use emostream_protocol::wire::Admission;
use emostream_testkit::{bucket_percentile, now_ms};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod client;
use client::{Client, Event};

/// Latency buckets of 1 ms up to 10 s; the last bucket holds everything slower.
const BUCKETS: usize = 10_001;

#[derive(Default)]
struct Tally {
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    frames: AtomicU64,
    missing: AtomicU64,
    lagged: AtomicU64,
    measuring: AtomicBool,
    /// End → read by the viewer, per 1 ms bucket.
    read_ms: Vec<AtomicU64>,
    /// End → the kernel's stamp on the viewer's socket, per 1 ms bucket.
    stamp_ms: Vec<AtomicU64>,
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
    lagged: u64,
    /// Count per 1 ms bucket of end → read by the viewer.
    read_ms: Vec<u64>,
    /// Count per 1 ms bucket of end → the kernel's stamp on the viewer's socket.
    stamp_ms: Vec<u64>,
}

impl Report {
    fn add(&mut self, other: Report) {
        self.viewers += other.viewers;
        self.connected += other.connected;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.frames += other.frames;
        self.missing += other.missing;
        self.lagged += other.lagged;
        add_buckets(&mut self.read_ms, other.read_ms);
        add_buckets(&mut self.stamp_ms, other.stamp_ms);
    }

    /// End → read by the viewer: the headline.
    fn percentile(&self, p: f64) -> Option<u64> {
        bucket_percentile(&self.read_ms, p)
    }

    fn stamp_percentile(&self, p: f64) -> Option<u64> {
        bucket_percentile(&self.stamp_ms, p)
    }

    fn table(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        let num = |v: Option<u64>| v.map_or(-1, |v| v as i64);
        let rows = [
            ("viewers asked", self.viewers.to_string()),
            ("connected", self.connected.to_string()),
            ("failed to connect", self.failed.to_string()),
            ("dropped while measuring", self.dropped.to_string()),
            ("frames received", self.frames.to_string()),
            ("missing frames", self.missing.to_string()),
            ("lag notices", self.lagged.to_string()),
            ("p50 end → read by the viewer", ms(self.percentile(0.50))),
            ("p99 end → read by the viewer", ms(self.percentile(0.99))),
            ("max end → read by the viewer", ms(self.percentile(1.0))),
            (
                "p50 end → kernel stamp (server-side fan-out)",
                ms(self.stamp_percentile(0.50)),
            ),
            (
                "p99 end → kernel stamp (server-side fan-out)",
                ms(self.stamp_percentile(0.99)),
            ),
        ];
        let mut out = String::from("| what | value |\n|---|---|\n");
        for (what, value) in rows {
            out.push_str(&format!("| {what} | {value} |\n"));
        }
        out.push_str(&format!(
            "SWARM connected={} failed={} dropped={} frames={} missing={} lagged={} \
             p50_read_ms={} p99_read_ms={} p50_stamp_ms={} p99_stamp_ms={}\n",
            self.connected,
            self.failed,
            self.dropped,
            self.frames,
            self.missing,
            self.lagged,
            num(self.percentile(0.5)),
            num(self.percentile(0.99)),
            num(self.stamp_percentile(0.5)),
            num(self.stamp_percentile(0.99)),
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

/// The newest epoch one viewer has of each kind of frame: epoch, trending, sentiment, popular.
type Sequences = [Option<u64>; 4];

impl Tally {
    fn new() -> Self {
        Tally {
            read_ms: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            stamp_ms: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            ..Tally::default()
        }
    }

    /// One text message a viewer read at `read_ms`, its last packet stamped `arrived_ms`.
    fn record(&self, last: &mut Sequences, text: &[u8], read_ms: u64, arrived_ms: u64) {
        let Ok(head) = serde_json::from_slice::<Head>(text) else {
            return;
        };
        // Each kind has its own epoch sequence: the synthetic source sends every kind every
        // epoch, so a gap in any of them is a frame this viewer never got.
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
        let last = &mut last[kind];
        if !self.measuring.load(Ordering::Relaxed) {
            *last = Some(epoch);
            return;
        }
        if let Some(last) = *last {
            self.missing
                .fetch_add(epoch.saturating_sub(last + 1), Ordering::Relaxed);
        }
        *last = Some(epoch);
        self.frames.fetch_add(1, Ordering::Relaxed);
        let bucket = |at: u64| at.saturating_sub(end_ms).min(BUCKETS as u64 - 1) as usize;
        self.read_ms[bucket(read_ms)].fetch_add(1, Ordering::Relaxed);
        self.stamp_ms[bucket(arrived_ms)].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    epoch: Option<u64>,
    end_ms: Option<u64>,
}

/// `POST /v1/viewers` at the main publisher: the URL to watch `stream` at (a viewer token is
/// good for the stream it was issued for only).
async fn register(main: &str, user: usize, stream: &str) -> Option<String> {
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
    Some(format!(
        "{}/v1/streams/{stream}/ws{token}",
        admission.assignment.subscriber
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
    let mut last = Sequences::default();
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
        tally.record(&mut last, text, read, arrived);
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
    /// The stream to watch.
    #[arg(long, default_value = "main")]
    stream: String,
    /// How long to measure once all are connected.
    #[arg(long, value_name = "S", default_value_t = 20)]
    seconds: u64,
    /// New connections per second.
    #[arg(long, value_name = "R", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    connect_per_s: u64,
    /// First subscriber for viewer 0 (spreads several swarms).
    #[arg(long, value_name = "I", default_value_t = 0)]
    offset: usize,
    /// Write the report here as JSON (for merge).
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

impl Swarm {
    async fn run(&self) -> Result<Report, std::io::Error> {
        // Held to the end: while it lives, every viewer's frames carry their arrival stamps.
        let _stamping = client::kernel_stamping(Duration::from_secs(10)).await?;
        let tally = Arc::new(Tally::new());
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
            let url = match &self.main {
                Some(main) => register(main, i, &self.stream).await,
                None => {
                    let subs = &self.subscribers;
                    Some(format!(
                        "{}/v1/streams/{}/ws",
                        subs[(self.offset + i) % subs.len()],
                        self.stream
                    ))
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
        lagged: load(&tally.lagged),
        read_ms: tally.read_ms.iter().map(load).collect(),
        stamp_ms: tally.stamp_ms.iter().map(load).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_merged_buckets() {
        let mut a = Report {
            read_ms: vec![0, 98, 0, 0],
            viewers: 1,
            ..Report::default()
        };
        let b = Report {
            read_ms: vec![0, 0, 0, 2],
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
    fn every_kind_of_frame_is_timed_and_its_gaps_counted() {
        use emostream_protocol::synthetic::frames;
        let tally = Tally::new();
        let mut last = Sequences::default();
        // Epoch 10 (end_ms 22000) before measuring: it only starts the sequences.
        for text in frames(&["main"], 10, 2000) {
            tally.record(&mut last, text.as_bytes(), 22_500, 22_400);
        }
        tally.measuring.store(true, Ordering::Relaxed);
        // Epoch 11 whole, read 30 ms after its end and stamped 20 ms after it.
        for text in frames(&["main"], 11, 2000) {
            tally.record(&mut last, text.as_bytes(), 24_030, 24_020);
        }
        // Epoch 12 lost its epoch frame; epoch 13 lost nothing but comes 200 ms late.
        for text in &frames(&["main"], 12, 2000)[1..] {
            tally.record(&mut last, text.as_bytes(), 26_005, 26_001);
        }
        tally.record(
            &mut last,
            br#"{"type":"lagged","missed":1}"#,
            27_000,
            27_000,
        );
        for text in frames(&["main"], 13, 2000) {
            tally.record(&mut last, text.as_bytes(), 28_200, 28_100);
        }
        let report = snapshot(&tally, 1);
        assert_eq!((report.frames, report.missing, report.lagged), (11, 1, 1));
        let counts = |buckets: &[u64]| -> Vec<(usize, u64)> {
            (buckets.iter().enumerate())
                .filter(|(_, n)| **n > 0)
                .map(|(ms, n)| (ms, *n))
                .collect()
        };
        assert_eq!(counts(&report.read_ms), vec![(5, 3), (30, 4), (200, 4)]);
        assert_eq!(counts(&report.stamp_ms), vec![(1, 3), (20, 4), (100, 4)]);
    }
}
