//! A host cut off: the broker on network host `kafka`, the two dataflow processes on hosts `w0`
//! and `w1` (network namespaces on a bridge), each under its own `run_workers.sh -p i`. Under a
//! steady load produced straight to `emoji-events`, `w1`'s link is set down: nothing it sends
//! arrives and nothing reaches it, and no socket is closed. Process 0 on `w0` must notice and be
//! restarted by its supervisor within the bound of `dataflow/src/links.rs` (15 s of
//! unacknowledged data, or 10 s of unanswered keepalives, plus the supervisor's second), not
//! after TCP's ~15 minutes. Once `w1` is back the cluster forms again, and after the load
//! `emoji-epochs` holds exactly the truth.

use emostream_e2e::hosts::HostCluster;
use emostream_e2e::trace;
use emostream_testkit::wait_for;
use std::time::{Duration, Instant};

const WINDOW_MS: u64 = 1000;
/// links.rs: the user timeout (15 s) is the longer of the two ways a dead link is noticed; the
/// supervisor restarts 1 s after an exit; 14 s of margin for a loaded 2-core machine (an abort,
/// a process start).
const RESTART_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_host_restarts_the_cluster_within_the_bound_and_epochs_stay_exact() {
    let mut cluster = HostCluster::start("e2e-host-cut", 2, WINDOW_MS);
    let load = cluster.load(Duration::from_secs(45), 17);
    wait_for(
        "the cluster to record progress",
        Duration::from_secs(60),
        || {
            let recorded = cluster.progress_records();
            async move { (recorded >= 5).then_some(()) }
        },
    )
    .await;
    let before = cluster.dataflow_pid(0).expect("process 0 runs");

    cluster.workers[1].set_link(false);
    let cut = Instant::now();
    eprintln!("host w1 cut off");
    let restarted = wait_for(
        "process 0 on host w0 to be restarted",
        RESTART_BOUND,
        || {
            let now = cluster.dataflow_pid(0);
            async move { now.filter(|pid| *pid != before).map(|_| cut.elapsed()) }
        },
    )
    .await;
    eprintln!("process 0 restarted {restarted:?} after the cut (bound {RESTART_BOUND:?})");
    cluster.workers[1].set_link(true);

    let recorded = cluster.progress_records();
    wait_for(
        "the cluster to record progress again",
        Duration::from_secs(90),
        || {
            let now = cluster.progress_records();
            async move { (now > recorded).then_some(()) }
        },
    )
    .await;
    let truth = load.truth().await;
    let (_, frames) = cluster.published(&truth).await;
    eprintln!(
        "{} epochs exact, {} taps",
        frames.len(),
        truth.values().flat_map(|m| m.values()).sum::<u64>()
    );
    trace::assert_exact(&frames, &truth, WINDOW_MS, "emoji-epochs after a host cut");
    for i in 0..2 {
        cluster.supervisor(i).stop(Duration::from_secs(15));
    }
}
