//! New stream ids as fast as a client can open them, for 30 s, through the whole system (issue
//! 21): the gateway keeps its set of live streams within `max_live_streams`, every broadcaster
//! tier keeps what it holds within `max_held_bytes` at every sample, and the viewer of a stream
//! that was live before the flood gets every epoch of it with the count the gateway acknowledged.
//!
//! The flood comes through the gateway's trusted proxy with a new client address and user per
//! request (a botnet behind the platform's load balancer), so neither the per-address rate of new
//! streams nor a per-user limit binds, and the live-stream bound is what holds the line.

use emostream_e2e::taps::forwarded_address;
use emostream_e2e::viewer::Viewer;
use emostream_e2e::{System, Topology};
use emostream_protocol::wire::{Accepted, EpochFrame};
use emostream_testkit::{http, wait_until};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WINDOW_MS: u64 = 1000;
const FLOOD_FOR: Duration = Duration::from_secs(30);
/// Connections the flooding client keeps busy at once.
const FLOODERS: usize = 16;
const MAX_LIVE_STREAMS: u64 = 1500;
const MAX_HELD_BYTES: u64 = 2 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_stream_ids_stays_within_every_tiers_bound_and_a_live_stream_keeps_every_epoch(
) {
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        allowed_lateness_ms: 500,
        settings: vec![
            (
                "gateway",
                format!("trusted_proxies = [\"127.0.0.1\"]\nmax_live_streams = {MAX_LIVE_STREAMS}"),
            ),
            (
                "broadcaster",
                // An idle time of 8 s sweeps (and reports what each tier holds) every 2 s.
                format!("max_held_bytes = {MAX_HELD_BYTES}\nring_epochs = 8\nstream_idle_s = 8"),
            ),
        ],
        ..Topology::default()
    })
    .await;
    let gateway = system.gateway().to_string();
    let steady_tap = r#"[{"user_id":"fan","emoji":"🔥"},{"user_id":"fan","emoji":"👏"}]"#;
    let truth = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
    // The stream is live before the flood: its first tap opens it.
    let first = http::post_json(&gateway, "/v1/streams/steady/emojis", steady_tap)
        .await
        .expect("the gateway answers");
    assert_eq!(first.status, 202, "{}", first.body);
    let a: Accepted = first.json();
    truth.lock().unwrap().insert(a.epoch, a.accepted);
    let viewer = Viewer::connect(&format!("ws://{}", system.subscribers()[0]), "steady").await;

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let next_stream = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let (stop, answers, next_stream, gateway) = (
            Arc::clone(&stop),
            Arc::clone(&answers),
            Arc::clone(&next_stream),
            gateway.clone(),
        );
        flooders.push(tokio::spawn(async move {
            let mut conn: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                let n = next_stream.fetch_add(1, Ordering::Relaxed);
                // A user and an address of its own per request: only the stream bound binds.
                let body = format!(r#"{{"user_id":"flood-{n}","emoji":"😂"}}"#);
                let request = format!(
                    "POST /v1/streams/flood-{n}/emojis HTTP/1.1\r\nHost: gw\r\n\
                     Content-Type: application/json\r\nX-Forwarded-For: {}\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    forwarded_address(n as usize + 1),
                    body.len()
                );
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => TcpStream::connect(&gateway).await.expect("connect"),
                };
                c.write_all(request.as_bytes()).await.expect("a request");
                let (status, body, close) = answer(&mut c).await;
                // Every answer is a 202, or a JSON refusal that names the stream as the reason.
                let kind = match status {
                    202 => "202".to_string(),
                    429 | 503 => {
                        let reason: serde_json::Value =
                            serde_json::from_str(&body).expect("a JSON refusal");
                        assert_eq!(reason["field"], "stream", "{status} {body}");
                        format!("{status} {}", reason["error"].as_str().unwrap_or(""))
                    }
                    other => panic!("the flood got {other}: {body}"),
                };
                *answers.lock().unwrap().entry(kind).or_default() += 1;
                conn = (!close).then_some(c);
            }
        }));
    }

    // Meanwhile: the steady stream tapped four times an epoch, and every tier's bound sampled.
    let tiers: Vec<(String, String)> = {
        let b = &system.config.broadcaster;
        let mut t = vec![("main".to_string(), b.main.clone())];
        for c in &b.clusters {
            t.push((format!("cluster {}", c.name), c.listen.clone()));
            for s in &c.subscribers {
                t.push((format!("subscriber {s}"), s.clone()));
            }
        }
        t
    };
    let mut most_live = 0;
    let mut most_held: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(WINDOW_MS / 4));
    while started.elapsed() < FLOOD_FOR {
        pace.tick().await;
        let r = http::post_json(&gateway, "/v1/streams/steady/emojis", steady_tap)
            .await
            .expect("the gateway answers");
        assert_eq!(
            r.status, 202,
            "a live stream's tap during the flood: {}",
            r.body
        );
        let a: Accepted = r.json();
        *truth.lock().unwrap().entry(a.epoch).or_default() += a.accepted;
        if let Some(live) = gauge(&gateway, "emostream_gateway_live_streams").await {
            most_live = most_live.max(live);
        }
        for (name, addr) in &tiers {
            if let Some(held) = gauge(addr, "emostream_broadcaster_held_bytes").await {
                let most = most_held.entry(name.clone()).or_default();
                *most = (*most).max(held);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.expect("a flooder");
    }
    let answers = answers.lock().unwrap().clone();
    eprintln!("the flood's answers: {answers:?}; most live streams at the gateway {most_live}; most held per tier {most_held:?}");

    let opened = answers.get("202").copied().unwrap_or(0);
    assert!(
        opened >= MAX_LIVE_STREAMS - 1,
        "the flood filled the live set ({opened} streams opened)"
    );
    assert!(
        answers.keys().any(|k| k.starts_with("503")),
        "the flood was refused once the set was full: {answers:?}"
    );
    assert!(
        most_live <= MAX_LIVE_STREAMS,
        "the gateway held {most_live} live streams (bound {MAX_LIVE_STREAMS})"
    );
    assert_eq!(
        most_held.len(),
        tiers.len(),
        "every tier reported what it holds"
    );
    for (tier, held) in &most_held {
        assert!(
            *held <= MAX_HELD_BYTES,
            "{tier} held {held} bytes (bound {MAX_HELD_BYTES})"
        );
    }

    // Every epoch of the steady stream reached its viewer, once, with the acknowledged count.
    let truth = truth.lock().unwrap().clone();
    let last = *truth.keys().last().expect("epochs");
    wait_until(
        &format!("steady's epoch {last} at its viewer"),
        Duration::from_secs(30),
        || {
            let done = (viewer.epoch_frames().iter()).any(|f| {
                serde_json::from_str::<EpochFrame>(&f.text).is_ok_and(|e| e.epoch == last)
            });
            async move { done }
        },
    )
    .await;
    let mut seen = BTreeMap::new();
    for received in viewer.epoch_frames() {
        let frame: EpochFrame = serde_json::from_str(&received.text).expect("an epoch frame");
        assert_eq!(frame.stream, "steady");
        assert!(
            seen.insert(frame.epoch, frame.total).is_none(),
            "epoch {} twice",
            frame.epoch
        );
    }
    assert_eq!(seen, truth);
    assert!(
        !(viewer.frames().iter()).any(|f| f.text.contains(r#""type":"lagged""#)),
        "the steady viewer was told it lagged"
    );
}

/// A gauge's value on `addr`'s `/metrics`, whatever its labels.
async fn gauge(addr: &str, name: &str) -> Option<u64> {
    let body = http::get(addr, "/metrics").await.ok()?.body;
    body.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series.split('{').next()? == name).then(|| value.parse::<f64>().ok().map(|v| v as u64))?
    })
}

/// One HTTP/1.1 answer with a `Content-Length` body: its status, its body, and whether the
/// server closes the connection after it.
async fn answer(conn: &mut TcpStream) -> (u16, String, bool) {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
            let length: usize = (head.lines())
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("a length"));
            if raw.len() >= at + 4 + length {
                let status = head[9..12].parse().expect("a status");
                let close = head.contains("\r\nconnection: close");
                let body = String::from_utf8_lossy(&raw[at + 4..at + 4 + length]).into();
                return (status, body, close);
            }
        }
        let n = conn.read(&mut chunk).await.expect("an answer");
        assert!(n > 0, "the gateway closed the connection without an answer");
        raw.extend_from_slice(&chunk[..n]);
    }
}
