//! Two clusters on one set of topics: while one timely cluster runs under load, a second
//! `run_workers.sh` is started on the same configuration (its own timely and metrics ports, as
//! if on other hosts). The progress chain lets exactly one of them carry on: the other's
//! supervisor exits 3 ("fenced") and does not restart it, the survivor keeps recording progress,
//! and once the load has ended `emoji-epochs` holds exactly the truth, any epoch published by both
//! byte for byte the same.

use emostream_e2e::trace;
use emostream_e2e::{System, Topology};
use emostream_testkit::{free_port, topic, wait_for, workers, Process, Scratch};
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];

async fn progress_records(brokers: &str, progress: &str) -> i64 {
    let (brokers, progress) = (brokers.to_string(), progress.to_string());
    tokio::task::spawn_blocking(move || topic::watermarks(&brokers, &progress)[&0].1)
        .await
        .expect("watermark task")
}

/// `text` with its `[dataflow]` processes and metrics on fresh ports.
fn other_ports(text: &str) -> String {
    text.lines()
        .map(|line| {
            let ports = |key: &str| {
                format!(
                    "{key} = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
                    free_port(),
                    free_port()
                )
            };
            if line.starts_with("processes = ") {
                ports("processes")
            } else if line.starts_with("metrics = ") {
                ports("metrics")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_cluster_on_the_same_topics_is_fenced() {
    let mut system = System::start(Topology {
        window_ms: WINDOW_MS,
        ..Topology::default()
    })
    .await;
    let (brokers, progress) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.progress_topic.clone(),
    );
    let gateway = system.gateway().to_string();
    let load = tokio::spawn(async move {
        // 30 taps every 20 ms over three streams (1,500 taps/s), for 30 s.
        trace::steady(
            &gateway,
            &STREAMS,
            30,
            Duration::from_millis(20),
            Duration::from_secs(30),
            5,
        )
        .await
    });
    wait_for(
        "the first cluster to record progress",
        Duration::from_secs(60),
        || {
            let (brokers, progress) = (&brokers, &progress);
            async move { (progress_records(brokers, progress).await >= 5).then_some(()) }
        },
    )
    .await;

    let second = Scratch::new("e2e-second-cluster");
    let config = second.join("cluster.toml");
    let text = std::fs::read_to_string(system.config_path()).expect("the system's config");
    std::fs::write(&config, other_ports(&text)).expect("the second cluster's config");
    let mut other = Process::spawn(
        "second workers",
        &mut workers::command(2, &config),
        &second.join("workers.log"),
    );
    eprintln!("second cluster started");

    // Its first progress record races the first cluster's next one: either may lose, and the
    // loser stops at its first record (the first epoch after a start, a few seconds).
    let (fenced, log) = wait_for(
        "one of the two supervisors to exit fenced",
        Duration::from_secs(60),
        || {
            let first = system.exited("workers");
            let second_exit = other.try_exit();
            let found = match (first, second_exit) {
                (Some(status), None) => Some(("first", status, system.log("workers"))),
                (None, Some(status)) => Some((
                    "second",
                    status,
                    std::fs::read_to_string(second.join("workers.log")).unwrap_or_default(),
                )),
                (None, None) => None,
                (Some(a), Some(b)) => panic!("both clusters stopped: {a}, {b}"),
            };
            async move {
                found.map(|(which, status, log)| {
                    assert_eq!(
                        status.code(),
                        Some(3),
                        "the {which} cluster's supervisor:\n{log}"
                    );
                    (which, log)
                })
            }
        },
    )
    .await;
    eprintln!("the {fenced} cluster was fenced");
    assert!(
        log.contains("another cluster is publishing into")
            && log.contains("fenced: another cluster is publishing into these topics"),
        "the {fenced} cluster's log:\n{log}"
    );

    // The survivor keeps recording progress, and the fenced one stays down.
    let before = progress_records(&brokers, &progress).await;
    wait_for(
        "the surviving cluster to record progress",
        Duration::from_secs(60),
        || {
            let (brokers, progress) = (&brokers, &progress);
            async move { (progress_records(brokers, progress).await >= before + 3).then_some(()) }
        },
    )
    .await;
    let survivor_running = match fenced {
        "first" => other.try_exit().is_none(),
        _ => system.exited("workers").is_none(),
    };
    assert!(survivor_running, "the surviving supervisor still runs");

    let mut truth = load.await.expect("the load task");
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    let (records, frames) = system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    eprintln!(
        "{} epochs exact, {records} records ({} identical re-publications)",
        frames.len(),
        records - frames.len()
    );
    trace::assert_exact(&frames, &truth, WINDOW_MS, "emoji-epochs with two clusters");
    other.stop(Duration::from_secs(15));
}
