//! `emostream-swarm`: N WebSocket viewers spread over the subscribers, measuring each epoch's
//! `end_ms` → receipt (with the main publisher's `--synthetic-ms`, that is emit → receipt), with a
//! progress line every second and a summary table at the end.
//!
//! ```text
//! emostream-swarm --subscribers ws://127.0.0.1:9011,ws://127.0.0.1:9012 --viewers 10000 --seconds 20
//! emostream-swarm --main 127.0.0.1:9000 --viewers 100            # placed by POST /v1/viewers
//! emostream-swarm merge a.json b.json                            # one table for several swarms
//! ```
//! A process may hold only so many sockets (here 20,000 open files), so a large swarm is several
//! processes, each with `--out FILE`, merged afterwards.

use emostream_protocol::wire::Admission;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    latency_ms: Vec<AtomicU64>,
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
    /// Count per 1 ms latency bucket.
    latency_ms: Vec<u64>,
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
        if self.latency_ms.len() < other.latency_ms.len() {
            self.latency_ms.resize(other.latency_ms.len(), 0);
        }
        for (a, b) in self.latency_ms.iter_mut().zip(other.latency_ms) {
            *a += b;
        }
    }

    fn percentile(&self, p: f64) -> Option<u64> {
        let total: u64 = self.latency_ms.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.latency_ms.iter().enumerate().find_map(|(ms, n)| {
            seen += n;
            (seen >= rank).then_some(ms as u64)
        })
    }

    fn table(&self) -> String {
        let ms = |p| self.percentile(p).map_or("-".into(), |v| format!("{v} ms"));
        let rows = [
            ("viewers asked", self.viewers.to_string()),
            ("connected", self.connected.to_string()),
            ("failed to connect", self.failed.to_string()),
            ("dropped while measuring", self.dropped.to_string()),
            ("frames received", self.frames.to_string()),
            ("missing epochs", self.missing.to_string()),
            ("lag notices", self.lagged.to_string()),
            ("p50 end → receipt", ms(0.50)),
            ("p99 end → receipt", ms(0.99)),
            ("max end → receipt", ms(1.0)),
        ];
        let mut out = String::from("| what | value |\n|---|---|\n");
        for (what, value) in rows {
            out.push_str(&format!("| {what} | {value} |\n"));
        }
        out.push_str(&format!(
            "SWARM connected={} failed={} frames={} missing={} lagged={} p50_ms={} p99_ms={}\n",
            self.connected,
            self.failed,
            self.frames,
            self.missing,
            self.lagged,
            self.percentile(0.5).map_or(-1, |v| v as i64),
            self.percentile(0.99).map_or(-1, |v| v as i64),
        ));
        out
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    epoch: Option<u64>,
    end_ms: Option<u64>,
}

/// `POST /v1/viewers` at the main publisher: the subscriber URL to watch.
async fn register(main: &str, user: usize) -> Option<String> {
    let body = format!(r#"{{"user_id":"swarm-{user}"}}"#);
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
        "{}/v1/streams/{{stream}}/ws{token}",
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
    let mut last: Option<u64> = None;
    let mut received = 0;
    loop {
        let text = match client.next(|| received = now_ms()).await {
            Ok(Event::Text(text)) => text,
            Ok(Event::Closed) | Err(_) => break,
        };
        let Ok(head) = serde_json::from_slice::<Head>(text) else {
            continue;
        };
        match head.kind {
            "lagged" => {
                tally.lagged.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Trend frames are state about an epoch, not the epoch sequence gaps are counted in.
            "epoch" => {}
            _ => continue,
        }
        let (Some(epoch), Some(end_ms)) = (head.epoch, head.end_ms) else {
            continue;
        };
        if !tally.measuring.load(Ordering::Relaxed) {
            last = Some(epoch);
            continue;
        }
        if let Some(last) = last {
            tally
                .missing
                .fetch_add(epoch.saturating_sub(last + 1), Ordering::Relaxed);
        }
        last = Some(epoch);
        tally.frames.fetch_add(1, Ordering::Relaxed);
        let ms = received.saturating_sub(end_ms).min(BUCKETS as u64 - 1) as usize;
        tally.latency_ms[ms].fetch_add(1, Ordering::Relaxed);
    }
    if tally.measuring.load(Ordering::Relaxed) {
        tally.dropped.fetch_add(1, Ordering::Relaxed);
    }
    tally.connected.fetch_sub(1, Ordering::Relaxed);
}

const USAGE: &str = "\
Usage: emostream-swarm (--subscribers ws://H:P[,ws://H:P…] | --main HOST:PORT) --viewers N
                      [--stream main] [--seconds 20] [--connect-per-s 2000] [--offset 0] [--out FILE]
       emostream-swarm merge FILE…";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("merge") {
        let mut total = Report::default();
        for path in &args[1..] {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            total.add(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}")));
        }
        print!("{}", total.table());
        return std::process::ExitCode::SUCCESS;
    }
    let mut opts = getopts::Options::new();
    opts.optopt(
        "",
        "subscribers",
        "subscriber URLs, comma-separated",
        "URLS",
    );
    opts.optopt(
        "",
        "main",
        "register each viewer at this main publisher",
        "HOST:PORT",
    );
    opts.reqopt("", "viewers", "how many viewers", "N");
    opts.optopt("", "stream", "the stream to watch", "STREAM");
    opts.optopt(
        "",
        "seconds",
        "how long to measure once all are connected",
        "S",
    );
    opts.optopt("", "connect-per-s", "new connections per second", "R");
    opts.optopt(
        "",
        "offset",
        "first subscriber for viewer 0 (spreads several swarms)",
        "I",
    );
    opts.optopt(
        "",
        "out",
        "write the report here as JSON (for merge)",
        "FILE",
    );
    let parsed = opts.parse(&args).map_err(|e| e.to_string()).and_then(|m| {
        let num = |name: &str, default: u64| -> Result<u64, String> {
            m.opt_str(name).map_or(Ok(default), |v| {
                v.parse().map_err(|_| format!("--{name} takes a number"))
            })
        };
        let targets = match (m.opt_str("subscribers"), m.opt_str("main")) {
            (Some(s), None) => Target::Subscribers(s.split(',').map(String::from).collect()),
            (None, Some(main)) => Target::Main(main),
            _ => return Err("give exactly one of --subscribers and --main".into()),
        };
        Ok(Swarm {
            targets,
            viewers: num("viewers", 0)?,
            stream: m.opt_str("stream").unwrap_or_else(|| "main".into()),
            seconds: num("seconds", 20)?,
            connect_per_s: num("connect-per-s", 2000)?.max(1),
            offset: num("offset", 0)? as usize,
            out: m.opt_str("out"),
        })
    });
    let swarm = match parsed {
        Ok(swarm) => swarm,
        Err(e) => {
            eprintln!("emostream-swarm: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    // One thread: the swarm shares the machine with what it measures, and a second worker would
    // only add cross-thread wake-ups to every frame.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts at process start");
    let report = runtime.block_on(swarm.run());
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

enum Target {
    Subscribers(Vec<String>),
    Main(String),
}

struct Swarm {
    targets: Target,
    viewers: u64,
    stream: String,
    seconds: u64,
    connect_per_s: u64,
    offset: usize,
    out: Option<String>,
}

impl Swarm {
    async fn run(&self) -> Report {
        let tally = Arc::new(Tally {
            latency_ms: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            ..Tally::default()
        });
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
                        "[{:>4}s] connected {}/{} failed {} frames {} missing {} p50 {} p99 {}",
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
            let url = match &self.targets {
                Target::Subscribers(subs) => Some(format!(
                    "{}/v1/streams/{}/ws",
                    subs[(self.offset + i) % subs.len()],
                    self.stream
                )),
                Target::Main(main) => register(main, i)
                    .await
                    .map(|u| u.replace("{stream}", &self.stream)),
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
        snapshot(&tally, self.viewers)
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
        latency_ms: tally.latency_ms.iter().map(load).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_merged_buckets() {
        let mut a = Report {
            latency_ms: vec![0, 98, 0, 0],
            viewers: 1,
            ..Report::default()
        };
        let b = Report {
            latency_ms: vec![0, 0, 0, 2],
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
}
