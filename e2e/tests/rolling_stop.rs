//! A rolling stop under load across two hosts: dataflow processes 0 and 1 on network hosts `w0`
//! and `w1` (namespaces), each under its own `run_workers.sh -p i`, the broker on `kafka`, a
//! steady load produced straight to `emoji-events` throughout. SIGTERM reaches `w0`'s supervisor
//! first; once its source has stopped and the load has gone on for two more seconds' worth of
//! records, `w1`'s. Both must exit 0 by themselves (a stopped source holds its floor until every
//! source has stopped, so nothing is published without its taps). Then both start again, and
//! after the load `emoji-epochs` holds exactly the truth: no count doubled, no epoch changed.

use emostream_e2e::hosts::HostCluster;
use emostream_e2e::trace;
use emostream_testkit::wait_for;
use std::time::{Duration, Instant};

const WINDOW_MS: u64 = 1000;
/// Records the load produces per second (one per 20 ms).
const RECORDS_PER_S: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_stop_under_load_then_a_restart_is_exact() {
    let mut cluster = HostCluster::start("e2e-rolling-stop", 2, WINDOW_MS);
    let load = cluster.load(Duration::from_secs(40), 23);
    wait_for(
        "the cluster to record progress",
        Duration::from_secs(60),
        || {
            let recorded = cluster.progress_records();
            async move { (recorded >= 5).then_some(()) }
        },
    )
    .await;

    cluster.supervisor(0).signal(libc::SIGTERM);
    eprintln!("SIGTERM to host w0");
    wait_for("w0's source to stop", Duration::from_secs(10), || {
        let stopped = cluster.log(0).contains("source stopping");
        async move { stopped.then_some(()) }
    })
    .await;
    // Two more seconds of load reach the broker while w1 reads on alone. (w0's supervisor waits
    // 10 s for its process before it kills it: the second stop must come well before.)
    let mark = load.records() + 2 * RECORDS_PER_S;
    wait_for("two more seconds of load", Duration::from_secs(8), || {
        let done = load.records() >= mark;
        async move { done.then_some(()) }
    })
    .await;
    let staggered = Instant::now();
    cluster.supervisor(1).signal(libc::SIGTERM);
    eprintln!("SIGTERM to host w1");
    for i in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = cluster.supervisor(i).wait_until(deadline);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "w{i}'s supervisor:\n{}",
            cluster.log(i)
        );
        // Logged only at the end of a graceful stop: a process killed at the supervisor's
        // deadline never gets there.
        assert!(
            cluster.log(i).contains("worker stopped"),
            "w{i}'s process stopped by itself:\n{}",
            cluster.log(i)
        );
    }
    eprintln!(
        "both hosts stopped {:?} after the second SIGTERM",
        staggered.elapsed()
    );

    let recorded = cluster.progress_records();
    cluster.start_supervisor(0);
    cluster.start_supervisor(1);
    wait_for(
        "the restarted cluster to record progress",
        Duration::from_secs(90),
        || {
            let now = cluster.progress_records();
            async move { (now > recorded).then_some(()) }
        },
    )
    .await;
    let truth = load.truth().await;
    let (records, frames) = cluster.published(&truth).await;
    eprintln!(
        "{} epochs exact, {records} records ({} identical re-publications)",
        frames.len(),
        records - frames.len()
    );
    trace::assert_exact(
        &frames,
        &truth,
        WINDOW_MS,
        "emoji-epochs after a rolling stop",
    );
    for i in 0..2 {
        cluster.supervisor(i).stop(Duration::from_secs(15));
    }
}
