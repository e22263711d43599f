//! `run_workers.sh -n 4` on each of two network hosts and no `-p`: four dataflow processes, two
//! on `w0` and two on `w1` by cluster.toml's addresses, and each host's supervisor starts the two
//! whose addresses are its own (as `docs/dataflow.md` runs a cluster across hosts). Under a
//! steady load produced straight to `emoji-events`, process 3 on `w1` is killed (SIGKILL): the
//! supervisors restart the cluster, `w1`'s says which process exited and how, and after the load
//! `emoji-epochs` holds exactly the truth.

use emostream_e2e::hosts::HostCluster;
use emostream_e2e::trace;
use emostream_testkit::wait_for;
use std::time::Duration;

const WINDOW_MS: u64 = 1000;

/// The processes a host's supervisor started, from its log, in order.
fn started(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("run_workers: process ") && l.contains(" started (pid "))
        .map(|l| l.split(" (pid ").next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_host_starts_its_own_two_processes_of_four_and_restarts_them() {
    let mut cluster = HostCluster::start_on("e2e-hosts-by-address", 2, 2, WINDOW_MS);
    let load = cluster.load(Duration::from_secs(30), 23);
    wait_for(
        "the cluster to record progress",
        Duration::from_secs(60),
        || {
            let recorded = cluster.progress_records();
            async move { (recorded >= 5).then_some(()) }
        },
    )
    .await;
    for (host, mine) in [(0, [0, 1]), (1, [2, 3])] {
        assert_eq!(
            started(&cluster.log(host)),
            mine.map(|i| format!("run_workers: process {i} of 4 started")),
            "w{host}'s supervisor:\n{}",
            cluster.log(host)
        );
    }

    let victim = cluster.dataflow_pid(3).expect("process 3 runs");
    // SAFETY: kill(2) on a pid of this test's own dataflow process.
    assert_eq!(
        unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
        0
    );
    eprintln!("SIGKILL to process 3 (pid {victim}) on w1");
    wait_for(
        "process 3 to be restarted on w1",
        Duration::from_secs(60),
        || {
            let now = cluster.dataflow_pid(3);
            async move { now.filter(|pid| *pid != victim).map(|_| ()) }
        },
    )
    .await;
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
    trace::assert_exact(
        &frames,
        &truth,
        WINDOW_MS,
        "emoji-epochs after a kill on w1",
    );
    let w1 = cluster.log(1);
    assert!(
        w1.contains("run_workers: process 3 exited (signal: 9 (SIGKILL)) after ")
            && w1.contains("restarting the whole cluster in 1 s (restart 1)"),
        "w1's supervisor:\n{w1}"
    );
    // Every start on w1 is of its two processes, and there was one more at least (the peers'
    // aborts may cost a second restart; how many is not this test's point).
    let starts = started(&w1);
    let pair = [2, 3].map(|i| format!("run_workers: process {i} of 4 started"));
    assert!(
        starts.len() >= 4 && starts.chunks(2).all(|c| c == pair),
        "w1's supervisor:\n{w1}"
    );
    for i in 0..2 {
        cluster.supervisor(i).stop(Duration::from_secs(15));
    }
}
