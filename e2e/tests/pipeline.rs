//! The whole pipeline, end to end, with exact counts: ≥50,000 emojis over HTTP into a real
//! broker, counted by a 2-process timely cluster, delivered through the tiered broadcaster to
//! WebSocket viewers on subscribers of different clusters. Every (stream, epoch, emoji) count and
//! scaled value must equal the ground truth built from the gateway's own replies, and no
//! (stream, epoch) may arrive twice.

use emostream_e2e::trace::{self, Request};
use emostream_e2e::viewer::Viewer;
use emostream_e2e::{System, Topology};
use emostream_protocol::wire::{Assignment, EpochFrame};
use emostream_testkit::{http, wait_for, wait_until, Rng};
use std::collections::BTreeMap;
use std::time::Duration;

const BATCH_STREAMS: [&str; 2] = ["cricket", "football"];
const BATCH_REQUESTS: usize = 560;
const BATCH_SIZE: usize = 100;
const SEED_REQUESTS: usize = 300;
const CONCURRENCY: usize = 32;
/// The product's own epoch width.
const WINDOW_MS: u64 = 2000;

fn requests() -> Vec<Request> {
    let mut rng = Rng::seeded(0x5eed);
    let mut out = Vec::new();
    for i in 0..BATCH_REQUESTS {
        out.push(Request::batch(
            &mut rng,
            BATCH_STREAMS[i % 2],
            BATCH_SIZE,
            i,
        ));
        if i < SEED_REQUESTS {
            out.push(Request::seed(&mut rng, i));
        }
    }
    out
}

/// The frames a viewer received, by (stream, epoch); panics on a (stream, epoch) received twice.
fn by_epoch(viewer: &Viewer, stream: &str) -> BTreeMap<(String, u64), EpochFrame> {
    let mut out = BTreeMap::new();
    for received in viewer.epoch_frames() {
        let frame: EpochFrame = serde_json::from_str(&received.text)
            .unwrap_or_else(|e| panic!("{e}: {}", received.text));
        assert_eq!(
            frame.stream, stream,
            "{} got another stream's frame",
            viewer.url
        );
        let key = (frame.stream.clone(), frame.epoch);
        assert!(
            out.insert(key, frame).is_none(),
            "{} received ({stream}, an epoch) twice",
            viewer.url
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_thousand_emojis_reach_viewers_with_exact_counts() {
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        // Generous for a 2-core machine running broker, gateway, cluster and 13 broadcaster
        // processes at once: a batch later than this would be folded into a later epoch.
        allowed_lateness_ms: 1500,
        clusters: vec![3, 3, 3],
        ..Topology::default()
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

    let mut truth = trace::send_all(system.gateway(), requests(), CONCURRENCY).await;
    let sent: u64 = truth.values().flat_map(|m| m.values()).sum();
    assert_eq!(sent, (BATCH_REQUESTS * BATCH_SIZE + SEED_REQUESTS) as u64);
    let marker_epoch = trace::markers(system.gateway(), &streams, &mut truth).await;
    for (stream, viewer) in &viewers {
        let want = (stream.clone(), marker_epoch[stream]);
        wait_until(
            &format!("{want:?} at {}", viewer.url),
            Duration::from_secs(60),
            || {
                let done = by_epoch(viewer, stream).contains_key(&want);
                async move { done }
            },
        )
        .await;
    }

    for (stream, viewer) in &viewers {
        let stream_truth: trace::Truth = truth
            .iter()
            .filter(|((s, _), _)| s == stream)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        trace::assert_exact(
            &by_epoch(viewer, stream),
            &stream_truth,
            WINDOW_MS,
            &viewer.url,
        );
    }
    // The trace is heavy enough that the reduction is exercised above 1 swarm emoji.
    assert!(
        truth.values().flat_map(|m| m.values()).any(|n| *n >= 2000),
        "the trace never reached 2000 of one emoji in one epoch"
    );
}
