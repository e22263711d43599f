//! Exact epochs that survive crashes, on a timely cluster across hosts: four worker processes on
//! two addresses (127.0.0.1 and 127.0.0.2, each with its own `run_workers.sh -p …` supervisor, as
//! two hosts would run them), under steady load, with a random worker process killed with
//! SIGKILL five times. Once the load has ended, `emoji-epochs` must hold exactly the truth: no
//! epoch missing, no count doubled, and any epoch published twice published identically.

use emostream_e2e::trace;
use emostream_e2e::{System, Topology};
use emostream_testkit::{topic, wait_for, wait_until, Rng};
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
const KILLS: usize = 5;
const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Records on the progress topic: it grows by one per published epoch, so growth after a
/// restart proves the restarted cluster is publishing again.
async fn progress_records(system: &System) -> i64 {
    let (brokers, progress) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.progress_topic.clone(),
    );
    tokio::task::spawn_blocking(move || topic::watermarks(&brokers, &progress)[&0].1)
        .await
        .expect("watermark task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_workers_never_loses_or_doubles_an_epoch() {
    let system = System::start(Topology {
        worker_processes: 4,
        worker_hosts: vec!["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"],
        window_ms: WINDOW_MS,
        allowed_lateness_ms: 1000,
        ..Topology::default()
    })
    .await;

    let gateway = system.gateway().to_string();
    let load = tokio::spawn(async move {
        // 40 taps every 20 ms: 2,000 emojis/s over three streams, for 40 s.
        trace::steady(
            &gateway,
            &STREAMS,
            40,
            Duration::from_millis(20),
            Duration::from_secs(40),
            7,
        )
        .await
    });

    let mut rng = Rng::seeded(42);
    let mut killed = Vec::new();
    for kill in 0..KILLS {
        // The (re)started cluster is whole and has published since the last kill.
        let pids = wait_for(
            &format!("four fresh worker processes before kill {kill}"),
            Duration::from_secs(60),
            || {
                let pids = system.dataflow_pids();
                let fresh = pids.len() == 4 && pids.iter().all(|p| !killed.contains(p));
                async move { fresh.then_some(pids) }
            },
        )
        .await;
        let before = progress_records(&system).await;
        wait_for(
            &format!("progress after restart {kill}"),
            Duration::from_secs(60),
            || {
                let system = &system;
                async move { (progress_records(system).await > before).then_some(()) }
            },
        )
        .await;
        let victim = pids[(rng.next_u64() % pids.len() as u64) as usize];
        // SAFETY: kill(2) on a pid of our own test's dataflow process.
        assert_eq!(
            unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
            0,
            "kill -9 {victim}"
        );
        eprintln!("kill {}: SIGKILL to worker process {victim}", kill + 1);
        killed.extend(pids);
    }

    let mut truth = load.await.expect("the load task");
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    let published = system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    let (records, frames) = published;
    eprintln!(
        "{} epochs published exactly, {} records on emoji-epochs ({} identical re-publications), {} emojis",
        frames.len(),
        records,
        records - frames.len(),
        truth.values().flat_map(|m| m.values()).sum::<u64>()
    );
    trace::assert_exact(&frames, &truth, WINDOW_MS, "emoji-epochs after five kills");
    wait_until(
        "the supervisors to keep four processes",
        Duration::from_secs(30),
        || {
            let n = system.dataflow_pids().len();
            async move { n == 4 }
        },
    )
    .await;
}
