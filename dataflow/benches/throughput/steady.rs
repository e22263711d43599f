//! Latency under a steady load: taps produced as the gateway would, at a fixed offered rate,
//! into a fresh topic set with its own cluster; from each epoch's end to its frame consumed.

use crate::load::{producer, send, wait_acked, write_taps};
use crate::report::group;
use crate::system::{FrameReader, Workers};
use crate::{check_interrupted, Bench};
use emostream_protocol::epoch::{epoch_bounds, epoch_of};
use emostream_protocol::wire::EpochFrame;
use emostream_testkit::{now_ms, percentile, Rng};
use rdkafka::producer::BaseRecord;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Epoch end → frame consumed, p99, at 50,000 taps/s (issue 22).
const TARGET_P99_MS: i64 = 350;

impl Bench {
    /// Steady load into a fresh topic set; latency from each epoch's end to its frame.
    pub(crate) fn steady(&self) {
        let a = &self.args;
        let window = self.base.epochs.window_ms;
        let lateness = self.base.epochs.allowed_lateness_ms;
        let flush_ms = self.base.gateway.flush_ms.max(1);
        let events_topic = "bench-steady-events";
        let config = self.config("steady", events_topic, "steady", a.steady_processes);
        let frames = FrameReader::new(&self.broker.address(), "bench-epochs-steady");
        let (producer, deliveries) = producer(&self.broker.address());
        let log = self.dir.join("workers-steady.log");
        let mut workers = Workers::start(a.steady_processes, &config, &log);
        // The cluster connects before the load starts, so startup is not measured.
        workers.wait_connected(a.steady_processes, Duration::from_secs(60));

        let mut rng = Rng::seeded(0x2545_f491_4f6c_dd1d);
        let load_start = now_ms();
        let load_end = load_start + a.steady_secs * 1000;
        let per_ms = a.steady_rate as f64 / 1000.0;
        let (mut produced, mut records) = (0u64, 0u64);
        let mut from = load_start;
        let mut owed = 0.0f64;
        let mut buf = Vec::new();
        let mut consumed: Vec<(EpochFrame, u64)> = Vec::new();
        let mut next_tick = load_start + flush_ms;
        // The gateway's packer: every flush_ms, and at each epoch's end, one record per
        // (partition, stream, epoch) of the taps received since the last flush.
        while from < load_end {
            check_interrupted();
            let epoch_end = epoch_bounds(epoch_of(now_ms(), window), window).1;
            let wake = next_tick.min(epoch_end);
            // Consume frames while waiting for the next flush.
            while let Some(left) = wake.checked_sub(now_ms()).filter(|left| *left > 0) {
                consumed.extend(frames.poll(Duration::from_millis(left.min(5))));
                if let Some(status) = workers.exited() {
                    panic!("run_workers.sh exited ({status}); see {}", log.display());
                }
            }
            if wake == next_tick {
                next_tick += flush_ms;
            }
            let to = now_ms().min(load_end);
            // Split [from, to) at epoch boundaries: a batch never spans two epochs.
            let mut at = from;
            while at < to {
                let boundary = epoch_bounds(epoch_of(at, window), window).1.min(to);
                owed += (boundary - at) as f64 * per_ms;
                let n = owed as u64;
                owed -= n as f64;
                let cells = a.streams * u64::from(a.partitions);
                for cell in 0..cells {
                    let share = n / cells + u64::from(cell < n % cells);
                    if share == 0 {
                        continue;
                    }
                    let stream = &self.streams[(cell % a.streams) as usize];
                    let partition = (cell / a.streams) as i32;
                    buf.clear();
                    write_taps(&mut buf, &mut rng, stream, share, at, boundary - at);
                    let record = BaseRecord::to(events_topic)
                        .partition(partition)
                        .key(stream.as_bytes())
                        .payload(&buf[..])
                        // The newest receive time in the record, as the gateway stamps it.
                        .timestamp(
                            (at + share.saturating_sub(1) * (boundary - at) / share.max(1)) as i64,
                        );
                    send(&producer, record);
                    records += 1;
                    produced += share;
                }
                at = boundary;
            }
            from = to;
        }
        wait_acked(&producer, &deliveries, records);

        // Wait for every epoch the load touched (the last closes by the wall clock).
        let last_epoch = epoch_of(load_end - 1, window);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_interrupted();
            consumed.extend(frames.poll(Duration::from_millis(5)));
            let total: u64 = consumed.iter().map(|(f, _)| f.total).sum();
            let done = consumed.iter().any(|(f, _)| f.epoch >= last_epoch) && total >= produced;
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "steady load: {total} of {produced} taps published after 60 s; see {}",
                log.display()
            );
        }
        drop(workers);
        let total: u64 = consumed.iter().map(|(f, _)| f.total).sum();
        assert_eq!(
            total, produced,
            "steady load: frames' totals vs taps produced"
        );

        // Epochs that began after a warm-up of two epochs and ended while the load ran.
        let warmup = load_start + 2 * window;
        let mut latencies: Vec<i64> = consumed
            .iter()
            .filter(|(f, _)| f.start_ms >= warmup && f.end_ms <= load_end)
            .map(|(f, at)| *at as i64 - f.end_ms as i64)
            .collect();
        latencies.sort_unstable();
        let epochs: HashSet<u64> = consumed.iter().map(|(f, _)| f.epoch).collect();
        println!(
            "\nsteady load: {} taps/s for {} s into {} partitions ({} records of ~{} taps, one per \
             (partition, stream) every {} ms), {} processes; {} taps in {} epochs, totals exact",
            group(a.steady_rate),
            a.steady_secs,
            a.partitions,
            group(records),
            produced / records.max(1),
            flush_ms,
            a.steady_processes,
            group(produced),
            epochs.len()
        );
        if latencies.is_empty() {
            println!("  no epoch inside the measured window: use a longer --steady-secs");
            return;
        }
        let p = |q| percentile(&latencies, q).expect("latencies is not empty");
        let p99 = p(0.99);
        println!(
            "  epoch end -> frame consumed ({} frames): p50 {} ms  p99 {} ms  max {} ms  \
             | target p99 <= {TARGET_P99_MS} ms: {}",
            latencies.len(),
            p(0.50),
            p99,
            latencies[latencies.len() - 1],
            if p99 <= TARGET_P99_MS {
                "met"
            } else {
                "NOT met"
            }
        );
        println!(
            "  (includes the consume hop: broker fetch + this bench's consumer; the design floor \
             is allowed lateness + the end probe's round trip (it asks as the epoch may close), \
             {} ms and more)",
            lateness
        );
    }
}
