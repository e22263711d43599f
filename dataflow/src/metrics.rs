//! Per-process metrics, served as Prometheus text by a plain blocking listener on its own
//! thread: the worker threads only bump atomics and never wait for a scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (ms) of the epoch end → publication histogram.
const LATENCY_BUCKETS_MS: [u64; 10] = [100, 250, 500, 750, 1000, 1500, 2000, 5000, 10_000, 60_000];

#[derive(Default)]
pub struct Metrics {
    records: AtomicU64,
    events: AtomicU64,
    late: AtomicU64,
    replay_skipped: AtomicU64,
    unreadable: AtomicU64,
    epochs_published: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
    /// partition → (watermark lag ms, floor epoch). A std Mutex: updated once per activation.
    partitions: Mutex<BTreeMap<i32, (u64, u64)>>,
}

impl Metrics {
    pub fn read(&self, records: u64, events: u64, late: u64, skipped: u64, unreadable: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.late.fetch_add(late, Ordering::Relaxed);
        self.replay_skipped.fetch_add(skipped, Ordering::Relaxed);
        self.unreadable.fetch_add(unreadable, Ordering::Relaxed);
    }

    pub fn partition(&self, partition: i32, watermark_lag_ms: u64, floor: u64) {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition, (watermark_lag_ms, floor));
    }

    /// One (stream, epoch) frame acknowledged, `latency_ms` after its epoch ended.
    pub fn published(&self, frames: u64, latency_ms: u64) {
        self.epochs_published.fetch_add(frames, Ordering::Relaxed);
        for (bound, bucket) in LATENCY_BUCKETS_MS.iter().zip(&self.latency_buckets) {
            if latency_ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(latency_ms, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "emostream_dataflow_records_total",
            "Kafka records read from emoji-events.",
            &self.records,
        );
        counter(
            &mut out,
            "emostream_dataflow_events_total",
            "Taps counted into epochs.",
            &self.events,
        );
        counter(
            &mut out,
            "emostream_dataflow_late_events_total",
            "Taps behind their partition's floor, folded into it.",
            &self.late,
        );
        counter(
            &mut out,
            "emostream_dataflow_replay_skipped_total",
            "Replayed taps already in published epochs.",
            &self.replay_skipped,
        );
        counter(
            &mut out,
            "emostream_dataflow_unreadable_events_total",
            "Event lines that are not an event (a foreign producer's), skipped.",
            &self.unreadable,
        );
        counter(
            &mut out,
            "emostream_dataflow_epochs_published_total",
            "(stream, epoch) frames acknowledged on emoji-epochs.",
            &self.epochs_published,
        );
        out.push_str("# HELP emostream_dataflow_watermark_lag_ms Wall clock minus the partition's watermark.\n");
        out.push_str("# TYPE emostream_dataflow_watermark_lag_ms gauge\n");
        out.push_str("# HELP emostream_dataflow_floor_epoch The earliest epoch the partition still assigns taps to.\n");
        out.push_str("# TYPE emostream_dataflow_floor_epoch gauge\n");
        for (p, (lag, floor)) in self
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "emostream_dataflow_watermark_lag_ms{{partition=\"{p}\"}} {lag}"
            );
            let _ = writeln!(
                out,
                "emostream_dataflow_floor_epoch{{partition=\"{p}\"}} {floor}"
            );
        }
        out.push_str("# HELP emostream_dataflow_publish_latency_ms Epoch end to its frames' acknowledgement.\n");
        out.push_str("# TYPE emostream_dataflow_publish_latency_ms histogram\n");
        for (bound, bucket) in LATENCY_BUCKETS_MS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "emostream_dataflow_publish_latency_ms_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "emostream_dataflow_publish_latency_ms_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "emostream_dataflow_publish_latency_ms_sum {}",
            self.latency_sum_ms.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "emostream_dataflow_publish_latency_ms_count {count}");
        out
    }
}

/// Serves `GET /metrics` (any path, in fact) on `addr` from a thread of its own.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    tracing::info!(%addr, "metrics listening");
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // A scraper that stalls must not stall the next one.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let body = metrics.render();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_the_histogram() {
        let m = Metrics::default();
        m.read(3, 120, 2, 5, 1);
        m.partition(1, 640, 42);
        m.published(2, 300);
        m.published(1, 5_000);
        let text = m.render();
        for line in [
            "emostream_dataflow_records_total 3",
            "emostream_dataflow_events_total 120",
            "emostream_dataflow_late_events_total 2",
            "emostream_dataflow_replay_skipped_total 5",
            "emostream_dataflow_unreadable_events_total 1",
            "emostream_dataflow_epochs_published_total 3",
            "emostream_dataflow_watermark_lag_ms{partition=\"1\"} 640",
            "emostream_dataflow_floor_epoch{partition=\"1\"} 42",
            "emostream_dataflow_publish_latency_ms_bucket{le=\"250\"} 0",
            "emostream_dataflow_publish_latency_ms_bucket{le=\"500\"} 1",
            "emostream_dataflow_publish_latency_ms_bucket{le=\"5000\"} 2",
            "emostream_dataflow_publish_latency_ms_bucket{le=\"+Inf\"} 2",
            "emostream_dataflow_publish_latency_ms_sum 5300",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
