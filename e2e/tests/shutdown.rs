//! Every long-running part stops cleanly on SIGTERM under load: the gateway answers what it
//! accepted and flushes, the dataflow publishes what has closed and writes its progress, the
//! broadcaster closes its sockets — and each exits 0 by itself. What was acknowledged, before
//! or during the stop, is all published: a restarted cluster picks up from the progress record
//! exactly.

use emostream_e2e::trace::{self, Request, Truth};
use emostream_e2e::{System, Topology};
use emostream_protocol::wire::Accepted;
use emostream_testkit::{http, wait_until, Rng};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the load saw: taps acknowledged (the truth), and requests the gateway never took.
#[derive(Default)]
struct Load {
    truth: Truth,
    acknowledged: usize,
    not_taken: usize,
}

/// Closed-loop senders posting 50-tap batches until `stop`. A request the gateway took is
/// answered 202 even while it stops (it drains before exiting); one it never read fails to
/// connect or finds the connection closed, and cannot have landed. Anything else fails the test.
async fn load(
    gateway: String,
    log: Arc<Mutex<Load>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) {
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..4 {
        let (gateway, log, stop, answered) = (
            gateway.clone(),
            Arc::clone(&log),
            Arc::clone(&stop),
            Arc::clone(&answered),
        );
        senders.spawn(async move {
            let mut rng = Rng::seeded(100 + sender);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let request = Request::batch(&mut rng, "calm", 50, sender as usize * 1_000_000 + i);
                i += 1;
                match http::post_json(&gateway, &request.path, &request.body).await {
                    Ok(r) => {
                        assert_eq!(r.status, 202, "{}", r.body);
                        let accepted: Accepted = r.json();
                        let mut log = log.lock().unwrap();
                        let counts = log
                            .truth
                            .entry((request.stream.to_string(), accepted.epoch))
                            .or_default();
                        for e in &request.emojis {
                            *counts.entry(e.to_string()).or_default() += 1;
                        }
                        log.acknowledged += 1;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        log.lock().unwrap().not_taken += 1;
                        // The gateway is gone: nothing more to take until the restart.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("sender task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_stops_every_process_cleanly_and_a_restart_is_exact() {
    let mut system = System::start(Topology {
        clusters: vec![2],
        ..Topology::default()
    })
    .await;
    let log = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(load(
        system.gateway().to_string(),
        Arc::clone(&log),
        Arc::clone(&stop),
        Arc::clone(&answered),
    ));
    // Load flows, epochs close and are published before the stop.
    wait_until("100 requests acknowledged", Duration::from_secs(60), || {
        let n = answered.load(Ordering::Relaxed);
        async move { n >= 100 }
    })
    .await;

    let (stopped, mut system) = tokio::task::spawn_blocking(move || {
        let stopped = system.stop();
        (stopped, system)
    })
    .await
    .expect("stop task");
    stop.store(true, Ordering::Relaxed);
    sender.await.expect("load task");
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

    // Everything acknowledged, before or during the stop, is published exactly once the
    // cluster is back: the epochs the stop left open are counted from the progress record.
    system.restart().await;
    let mut truth = {
        let log = log.lock().unwrap();
        eprintln!(
            "{} requests acknowledged, {} not taken while the gateway was stopping",
            log.acknowledged, log.not_taken
        );
        log.truth.clone()
    };
    let markers = trace::markers(system.gateway(), &["calm"], &mut truth).await;
    let (_, frames) = system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    trace::assert_exact(
        &frames,
        &truth,
        system.config.epochs.window_ms,
        "across a SIGTERM under load and a restart",
    );
}
