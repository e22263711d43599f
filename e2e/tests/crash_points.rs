//! Deterministic crashes at named points of the exactly-once protocol (`EMOSTREAM_CRASH_AT`,
//! dataflow/src/crash.rs): under a steady load on two worker processes, the first process to
//! reach the point aborts there, once (a marker file); `run_workers.sh` restarts the cluster.
//! A list of points crashes at each in turn: in the replay after a first crash, or at one point
//! twice in a row. Once the load has ended, `emoji-epochs` must hold exactly the truth, any epoch
//! published twice byte for byte the same.

use emostream_e2e::trace;
use emostream_e2e::{System, Topology};
use emostream_testkit::{wait_until, Scratch};
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
/// Three streams over two workers: one worker sums at least two, so some epoch has several
/// frames on one worker (for `between-frames`).
const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];

async fn exact_after_crashes_at(points: &[&str]) {
    let point = points.join(",");
    let scratch = Scratch::new("e2e-crash-marker");
    let marker = scratch.join("crashed");
    // The marker of the last crash (crash.rs numbers them).
    let last = scratch.join(format!("crashed.{}", points.len() - 1));
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        worker_env: vec![
            ("EMOSTREAM_CRASH_AT", point.to_string()),
            ("EMOSTREAM_CRASH_MARKER", marker.display().to_string()),
        ],
        ..Topology::default()
    })
    .await;
    let gateway = system.gateway().to_string();
    let load = tokio::spawn(async move {
        // 30 taps every 20 ms over three streams (1,500 taps/s), for 12 s.
        trace::steady(
            &gateway,
            &STREAMS,
            30,
            Duration::from_millis(20),
            Duration::from_secs(12),
            3,
        )
        .await
    });
    // Every point is reached within the first epochs published after a start (a few seconds).
    wait_until(
        &format!("the crashes at {point}"),
        Duration::from_secs(90),
        || {
            let crashed = last.exists();
            async move { crashed }
        },
    )
    .await;
    let mut truth = load.await.expect("the load task");
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    let (records, frames) = system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    eprintln!(
        "{point}: {} epochs exact, {records} records ({} identical re-publications)",
        frames.len(),
        records - frames.len()
    );
    trace::assert_exact(&frames, &truth, WINDOW_MS, &point);
    let log = system.log("workers");
    for at in points {
        assert_eq!(
            log.matches(&format!("crash point {at} reached")).count(),
            points.iter().filter(|p| *p == at).count(),
            "the crashes at {point}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_before_a_progress_write() {
    exact_after_crashes_at(&["before-progress-write"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_after_a_progress_write() {
    exact_after_crashes_at(&["after-progress-write"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_between_two_frames_of_an_epoch() {
    exact_after_crashes_at(&["between-frames"]).await;
}

/// The first crash leaves an epoch partly published; the second comes while the restarted
/// cluster replays it (a record below a hold offset read), and the next run still re-publishes
/// it byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_during_a_replay() {
    exact_after_crashes_at(&["between-frames", "during-replay"]).await;
}

/// The restarted cluster crashes at the same point as the first, before any record of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_twice_in_a_row() {
    exact_after_crashes_at(&["before-progress-write", "before-progress-write"]).await;
}
