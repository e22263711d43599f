//! Every long-running part stops cleanly on SIGTERM under load: the gateway answers what it
//! accepted and flushes, the dataflow publishes what has closed and writes its progress, the
//! broadcaster closes its sockets — and each exits 0 by itself. What was acknowledged before the
//! stop is all published: a restarted cluster picks up from the progress record exactly.

use emostream_e2e::trace::{self, Request};
use emostream_e2e::{System, Topology};
use emostream_testkit::Rng;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_every_process_cleanly() {
    let mut system = System::start(Topology {
        clusters: vec![2],
        ..Topology::default()
    })
    .await;
    let mut rng = Rng::seeded(5);
    let requests: Vec<Request> = (0..60)
        .map(|i| Request::batch(&mut rng, "calm", 50, i))
        .collect();
    let mut truth = trace::send_all(system.gateway(), requests, 8).await;
    let markers = trace::markers(system.gateway(), &["calm"], &mut truth).await;
    let (_, frames) = system
        .published_through(&markers, Duration::from_secs(60))
        .await;
    trace::assert_exact(
        &frames,
        &truth,
        system.config.epochs.window_ms,
        "before the stop",
    );

    let stopped = tokio::task::spawn_blocking(move || {
        let stopped = system.stop();
        (stopped, system)
    })
    .await
    .expect("stop task");
    let (stopped, system) = stopped;
    for (name, status) in &stopped {
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} ended with {status:?} after SIGTERM"
        );
    }
    assert_eq!(
        stopped.len(),
        1 + 1 + 1 + 1 + 2,
        "gateway, workers, main, cluster, two subscribers"
    );
    let workers = system.log("workers");
    assert_eq!(
        workers.matches("worker stopped").count(),
        2,
        "both worker processes stopped on their own:\n{workers}"
    );
    assert!(
        !workers.contains("panicked"),
        "a worker panicked while stopping:\n{workers}"
    );
}
