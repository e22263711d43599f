//! Partition ownership is exact whatever the ratio of partitions to workers: more partitions
//! than workers (each worker reads several), and fewer (some workers read none and follow the
//! clock). The epochs on `emoji-epochs` must equal the truth in both.

use emostream_e2e::trace::{self, Request};
use emostream_e2e::{System, Topology};
use emostream_testkit::Rng;
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
const STREAMS: [&str; 2] = ["north", "south"];

async fn exact_with(topology: Topology, what: &str) {
    let system = System::start(topology).await;
    let mut rng = Rng::seeded(11);
    let requests: Vec<Request> = (0..120)
        .map(|i| Request::batch(&mut rng, STREAMS[i % 2], 100, i))
        .collect();
    let mut truth = trace::send_all(system.gateway(), requests, 16).await;
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    let (_, frames) = system
        .published_through(&markers, Duration::from_secs(60))
        .await;
    trace::assert_exact(&frames, &truth, WINDOW_MS, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_partitions_than_workers() {
    // 7 partitions over 2 workers: one reads 0, 2, 4, 6, the other 1, 3, 5.
    exact_with(
        Topology {
            events_partitions: 7,
            window_ms: WINDOW_MS,
            ..Topology::default()
        },
        "7 partitions, 2 workers",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fewer_partitions_than_workers() {
    // 1 partition over 2 processes × 2 threads: three workers own nothing.
    exact_with(
        Topology {
            events_partitions: 1,
            threads: 2,
            window_ms: WINDOW_MS,
            ..Topology::default()
        },
        "1 partition, 4 workers",
    )
    .await;
}
