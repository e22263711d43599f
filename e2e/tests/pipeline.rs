//! The whole pipeline, end to end, with exact counts: ≥50,000 emojis over HTTP into a real
//! broker, counted by a 2-process timely cluster, delivered through the tiered broadcaster to
//! WebSocket viewers on subscribers of different clusters. Every (stream, epoch, emoji) count and
//! scaled value must equal the ground truth built from the gateway's own replies, and no
//! (stream, epoch) may arrive twice.

use emostream_e2e::http;
use emostream_e2e::viewer::Viewer;
use emostream_e2e::{wait_for, wait_until, System, Topology};
use emostream_protocol::epoch::scaled;
use emostream_protocol::wire::{Accepted, Assignment, EpochFrame};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Multi-codepoint emojis included: a skin tone, VS16, a ZWJ family, a flag.
const EMOJIS: [&str; 8] = ["🔥", "👍🏽", "❤️", "👨‍👩‍👧", "😂", "😮", "🇮🇳", "🎉"];
/// Skewed popularity, in the order of EMOJIS.
const WEIGHTS: [u64; 8] = [40, 20, 12, 8, 8, 6, 4, 2];
const BATCH_STREAMS: [&str; 2] = ["cricket", "football"];
const BATCH_REQUESTS: usize = 560;
const BATCH_SIZE: usize = 100;
const SEED_REQUESTS: usize = 300;
const CONCURRENCY: usize = 32;
/// The product's own epoch width.
const WINDOW_MS: u64 = 2000;

/// (stream, epoch) → emoji → count.
type Truth = BTreeMap<(String, u64), BTreeMap<String, u64>>;

/// A small deterministic generator, so a failing trace can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn emoji(&mut self) -> &'static str {
        let total: u64 = WEIGHTS.iter().sum();
        let mut pick = self.next() % total;
        for (emoji, weight) in EMOJIS.iter().zip(WEIGHTS) {
            if pick < weight {
                return emoji;
            }
            pick -= weight;
        }
        unreachable!("pick < total")
    }
}

enum Request {
    Batch {
        stream: &'static str,
        body: String,
        emojis: Vec<&'static str>,
    },
    Seed {
        body: String,
        emoji: &'static str,
    },
}

fn trace() -> Vec<Request> {
    let mut rng = Lcg(0x5eed);
    let mut requests = Vec::new();
    for i in 0..BATCH_REQUESTS {
        let stream = BATCH_STREAMS[i % 2];
        let emojis: Vec<&str> = (0..BATCH_SIZE).map(|_| rng.emoji()).collect();
        let items: Vec<String> = emojis
            .iter()
            .enumerate()
            .map(|(j, e)| {
                format!(
                    r#"{{"user_id":"user-{}","emoji":"{e}","timestamp":{}}}"#,
                    (i * 7 + j) % 997,
                    1_730_000_000_000u64 + j as u64
                )
            })
            .collect();
        requests.push(Request::Batch {
            stream,
            body: format!("[{}]", items.join(",")),
            emojis,
        });
        if i < SEED_REQUESTS {
            let emoji = rng.emoji();
            let body = format!(
                r#"{{"user_id":"seed-{i}","emoji_type":"{emoji}","timestamp":"2024-11-05T10:00:00.000Z"}}"#
            );
            requests.push(Request::Seed { body, emoji });
        }
    }
    requests
}

async fn send_all(gateway: String, requests: Vec<Request>) -> Truth {
    let truth = Arc::new(Mutex::new(Truth::new()));
    let queue = Arc::new(Mutex::new(requests));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (gateway, truth, queue) = (gateway.clone(), Arc::clone(&truth), Arc::clone(&queue));
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(request) = queue.lock().unwrap().pop() else {
                    return;
                };
                let (stream, path, body, emojis) = match request {
                    Request::Batch {
                        stream,
                        body,
                        emojis,
                    } => (stream, format!("/v1/streams/{stream}/emojis"), body, emojis),
                    Request::Seed { body, emoji } => {
                        ("main", "/send_emoji".to_string(), body, vec![emoji])
                    }
                };
                let response = http::post_json(&gateway, &path, &body)
                    .await
                    .expect("the gateway answers");
                assert_eq!(response.status, 202, "{path}: {}", response.body);
                let accepted: Accepted = response.json();
                assert_eq!(accepted.accepted, emojis.len() as u64);
                let mut truth = truth.lock().unwrap();
                let counts = truth
                    .entry((stream.to_string(), accepted.epoch))
                    .or_default();
                for e in emojis {
                    *counts.entry(e.to_string()).or_default() += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender task");
    }
    Arc::try_unwrap(truth)
        .expect("senders are done")
        .into_inner()
        .unwrap()
}

/// The frames a viewer received, by epoch; panics on a (stream, epoch) received twice.
fn by_epoch(viewer: &Viewer, stream: &str) -> BTreeMap<u64, EpochFrame> {
    let mut out = BTreeMap::new();
    for received in viewer.frames() {
        let frame: EpochFrame = serde_json::from_str(&received.text)
            .unwrap_or_else(|e| panic!("{e}: {}", received.text));
        assert_eq!(
            frame.stream, stream,
            "{} got another stream's frame",
            viewer.url
        );
        let epoch = frame.epoch;
        assert!(
            out.insert(epoch, frame).is_none(),
            "{} received ({stream}, {epoch}) twice",
            viewer.url
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_thousand_emojis_reach_viewers_with_exact_counts() {
    let system = System::start(Topology {
        worker_processes: 2,
        events_partitions: 4,
        window_ms: WINDOW_MS,
        // Generous for a 2-core machine running broker, gateway, cluster and 13 broadcaster
        // processes at once: a batch later than this would be folded into a later epoch.
        allowed_lateness_ms: 1500,
        clusters: vec![3, 3, 3],
    })
    .await;
    let subscribers = system.subscribers();
    let streams = ["cricket", "football", "main"];

    // Viewers on a subscriber of cluster c0 and one of cluster c1, for every stream, plus one
    // that asks the main publisher where to go.
    let mut viewers: Vec<(String, Viewer)> = Vec::new();
    for stream in streams {
        viewers.push((
            stream.into(),
            Viewer::connect(&format!("ws://{}", subscribers[0]), stream).await,
        ));
        viewers.push((
            stream.into(),
            Viewer::connect(&format!("ws://{}", subscribers[4]), stream).await,
        ));
    }
    let main = system.config.broadcaster.main.clone();
    let assignment: Assignment = wait_for(
        "the main publisher to know a live subscriber",
        Duration::from_secs(30),
        || {
            let main = main.clone();
            async move {
                let r = http::post_json(
                    &main,
                    "/register",
                    r#"{"user_id":"viewer-1","group_id":"g"}"#,
                )
                .await
                .ok()?;
                (r.status == 200).then(|| r.json())
            }
        },
    )
    .await;
    assert!(
        subscribers
            .iter()
            .any(|s| assignment.subscriber == format!("ws://{s}")),
        "{assignment:?}"
    );
    viewers.push((
        "cricket".into(),
        Viewer::connect(&assignment.subscriber, "cricket").await,
    ));

    let mut truth = send_all(system.gateway().to_string(), trace()).await;
    let sent: u64 = truth.values().flat_map(|m| m.values()).sum();
    assert_eq!(sent, (BATCH_REQUESTS * BATCH_SIZE + SEED_REQUESTS) as u64);

    // One marker per stream, after everything else: once its epoch reaches a viewer, every
    // earlier epoch of that stream has too (each stream's epochs close and travel in order).
    let mut marker_epoch = HashMap::new();
    for stream in streams {
        let r = http::post_json(
            system.gateway(),
            &format!("/v1/streams/{stream}/emojis"),
            r#"{"user_id":"marker","emoji":"🏁"}"#,
        )
        .await
        .expect("the gateway answers");
        assert_eq!(r.status, 202, "{}", r.body);
        let accepted: Accepted = r.json();
        *truth
            .entry((stream.to_string(), accepted.epoch))
            .or_default()
            .entry("🏁".into())
            .or_default() += 1;
        marker_epoch.insert(stream, accepted.epoch);
    }
    for (stream, viewer) in &viewers {
        let want = marker_epoch[stream.as_str()];
        wait_until(
            &format!("{stream} epoch {want} at {}", viewer.url),
            Duration::from_secs(60),
            || {
                let done = by_epoch(viewer, stream).contains_key(&want);
                async move { done }
            },
        )
        .await;
    }

    for (stream, viewer) in &viewers {
        let got = by_epoch(viewer, stream);
        let want: BTreeMap<u64, &BTreeMap<String, u64>> = truth
            .iter()
            .filter(|((s, _), _)| s == stream)
            .map(|((_, e), counts)| (*e, counts))
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{stream} epochs at {}",
            viewer.url
        );
        for (epoch, frame) in &got {
            let counts = want[epoch];
            let got_counts: BTreeMap<String, (u64, u64)> = frame
                .emojis
                .iter()
                .map(|e| (e.emoji.clone(), (e.count, e.scaled)))
                .collect();
            let want_counts: BTreeMap<String, (u64, u64)> = counts
                .iter()
                .map(|(e, n)| (e.clone(), (*n, scaled(*n, 1000).expect("n >= 1"))))
                .collect();
            assert_eq!(
                got_counts, want_counts,
                "({stream}, {epoch}) at {}",
                viewer.url
            );
            assert_eq!(
                frame.total,
                counts.values().sum::<u64>(),
                "({stream}, {epoch}) total"
            );
            assert_eq!(frame.late, 0, "({stream}, {epoch}) late");
            assert_eq!(
                (frame.start_ms, frame.end_ms),
                (epoch * WINDOW_MS, (epoch + 1) * WINDOW_MS)
            );
        }
    }
    // The trace is heavy enough that the reduction is exercised above 1 swarm emoji.
    assert!(
        truth.values().flat_map(|m| m.values()).any(|n| *n >= 2000),
        "the trace never reached 2000 of one emoji in one epoch"
    );
}
