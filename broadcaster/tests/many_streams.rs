//! Many streams on one subscriber, as real processes: the main publisher's synthetic source emits
//! every stream's epoch, trend and popular frames every 2 s, and `emostream-swarm` watches them
//! with thousands of WebSocket viewers. At an epoch's close every stream's frames reach the
//! subscriber at once, more of them than a fan-out lane writes before the next arrive; that must
//! never reach a viewer as a `lagged` notice or a close.

mod common;

use common::{broadcaster, config, http, DEADLINE};
use emostream_testkit::{binary, free_port, wait_for, Scratch};
use std::process::Stdio;
use std::time::Duration;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_streams_of_twenty_viewers_on_one_subscriber_are_never_told_they_lagged() {
    const STREAMS: u64 = 500;
    const VIEWERS: u64 = 20 * STREAMS;
    const MEASURE_S: u64 = 12;
    let scratch = Scratch::new("many-streams");
    let (main, cluster, sub) = (free_port(), free_port(), free_port());
    // Staleness and budget far beyond what this machine's 2 cores need to write every viewer's
    // epoch, debug build and swarm included: a `lagged` here can only be the fan-out's own.
    let config = config(
        &scratch,
        &format!(
            "[broadcaster]\nmain = \"127.0.0.1:{main}\"\nviewer_max_staleness_ms = 60000\n\
             viewer_lag_budget_bytes = 4194304\n\
             [[broadcaster.clusters]]\nname = \"c0\"\nlisten = \"127.0.0.1:{cluster}\"\n\
             subscribers = [\"127.0.0.1:{sub}\"]\n"
        ),
    );
    let streams: Vec<String> = (0..STREAMS).map(|i| format!("s-{i}")).collect();
    let _main = broadcaster(
        &scratch,
        &config,
        "main",
        &[
            "main",
            "--synthetic-ms",
            "2000",
            "--synthetic-streams",
            &streams.join(","),
        ],
    );
    let _cluster = broadcaster(&scratch, &config, "c0", &["cluster", "--name", "c0"]);
    let _sub = broadcaster(
        &scratch,
        &config,
        "c0-s0",
        &["subscriber", "--name", "c0-s0"],
    );
    wait_for("the subscriber to be placed", DEADLINE, || async {
        let (_, body) = http(format!("127.0.0.1:{main}"), "GET", "/v1/topology", "").await?;
        body.contains("c0-s0").then_some(())
    })
    .await;

    let report = scratch.join("swarm.json");
    let swarm = tokio::process::Command::new(binary("emostream-swarm"))
        .args(["--subscribers", &format!("ws://127.0.0.1:{sub}")])
        .args(["--viewers", &VIEWERS.to_string()])
        .args(["--stream", "s", "--stream-count", &STREAMS.to_string()])
        .args(["--seconds", &MEASURE_S.to_string()])
        .args(["--connect-per-s", "2500"])
        .arg("--out")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.join("swarm.err")).unwrap())
        .kill_on_drop(true)
        .status();
    // Connecting (4 s), settling, measuring, and the report.
    let status = timeout(Duration::from_secs(120), swarm)
        .await
        .expect("the swarm ends in time")
        .unwrap();
    assert!(
        status.success(),
        "the swarm failed: see {:?}",
        scratch.path()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let count = |field: &str| report[field].as_u64().unwrap();
    assert_eq!(count("connected"), VIEWERS, "{report}");
    assert_eq!(count("failed"), 0, "{report}");
    assert_eq!(count("dropped"), 0, "no viewer closed: {report}");
    assert_eq!(count("lagged"), 0, "no viewer told it lagged: {report}");
    assert_eq!(count("missing"), 0, "no message missing: {report}");
    // Epochs kept coming to everyone while measured: at least 4 whole epochs each in 12 s.
    assert!(count("epochs") >= 4 * VIEWERS, "{report}");
}
