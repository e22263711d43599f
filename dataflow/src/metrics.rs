//! Per-process metrics in one prometheus-client registry, served in the Prometheus text format
//! by a plain blocking listener on its own thread: the worker threads only bump atomics (and,
//! once per published epoch, the histogram's short lock) and never wait for a scrape to finish.

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::{Registry, Unit};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the epoch end → publication histogram.
const LATENCY_BUCKETS_S: [f64; 10] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 60.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: i32,
}

pub struct Metrics {
    registry: Registry,
    records: Counter,
    events: Counter,
    late: Counter,
    replay_skipped: Counter,
    unreadable: Counter,
    repeated: Counter,
    ahead_of_clock: Counter,
    epochs_published: Counter,
    frames_bounded: Counter,
    trend_updates_held: Gauge,
    publish_latency: Histogram,
    watermark_lag: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    floor_epoch: Family<PartitionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("emostream_dataflow");
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let records = counter("records", "Kafka records read from emoji-events");
        let events = counter("events", "Taps counted into epochs");
        let late = counter(
            "late_events",
            "Taps behind their partition's floor, folded into it",
        );
        let replay_skipped = counter(
            "replay_skipped",
            "Replayed taps already in published epochs",
        );
        let unreadable = counter(
            "unreadable_events",
            "Event lines that are not an event (a foreign producer's), skipped",
        );
        let repeated = counter(
            "repeated_events",
            "Taps of a request already counted (the same Idempotency-Key), dropped",
        );
        let ahead_of_clock = counter(
            "records_ahead_of_clock",
            "Records stamped over a second after this host's clock when read (a gateway's clock ahead); they move no floor past this clock",
        );
        let epochs_published = counter(
            "epochs_published",
            "(stream, epoch) frames acknowledged on emoji-epochs",
        );
        let frames_bounded = counter(
            "frames_bounded",
            "(stream, epoch) frames built with more distinct emojis than max_frame_emojis, the rest summed in other",
        );
        let trend_updates_held = Gauge::default();
        registry.register(
            "trend_updates_held",
            "Updates held by the trends stage's arrangements in this process; back to 0 once every stream's window has emptied",
            trend_updates_held.clone(),
        );
        let watermark_lag = Family::default();
        registry.register_with_unit(
            "watermark_lag",
            "Wall clock minus the partition's watermark",
            Unit::Seconds,
            watermark_lag.clone(),
        );
        let floor_epoch = Family::default();
        registry.register(
            "floor_epoch",
            "The earliest epoch the partition still assigns taps to",
            floor_epoch.clone(),
        );
        let publish_latency = Histogram::new(LATENCY_BUCKETS_S);
        registry.register_with_unit(
            "publish_latency",
            "Epoch end to its frames' acknowledgement",
            Unit::Seconds,
            publish_latency.clone(),
        );
        Metrics {
            registry,
            records,
            events,
            late,
            replay_skipped,
            unreadable,
            repeated,
            ahead_of_clock,
            epochs_published,
            frames_bounded,
            trend_updates_held,
            publish_latency,
            watermark_lag,
            floor_epoch,
        }
    }
}

impl Metrics {
    pub fn read(&self, records: u64, events: u64, late: u64, skipped: u64, unreadable: u64) {
        self.records.inc_by(records);
        self.events.inc_by(events);
        self.late.inc_by(late);
        self.replay_skipped.inc_by(skipped);
        self.unreadable.inc_by(unreadable);
    }

    /// Taps dropped as copies of a request already counted.
    pub fn repeated(&self, taps: u64) {
        self.repeated.inc_by(taps);
    }

    /// Records stamped ahead of this host's clock.
    pub fn ahead_of_clock(&self, records: u64) {
        self.ahead_of_clock.inc_by(records);
    }

    pub fn partition(&self, partition: i32, watermark_lag_ms: u64, floor: u64) {
        let labels = PartitionLabels { partition };
        self.watermark_lag
            .get_or_create(&labels)
            .set(watermark_lag_ms as f64 / 1000.0);
        self.floor_epoch
            .get_or_create(&labels)
            .set(i64::try_from(floor).unwrap_or(i64::MAX));
    }

    /// One epoch's `frames` (one per stream) acknowledged, `latency_ms` after the epoch ended.
    pub fn published(&self, frames: u64, latency_ms: u64) {
        self.epochs_published.inc_by(frames);
        self.publish_latency.observe(latency_ms as f64 / 1000.0);
    }

    /// A frame was built with emojis summed in its `other`: a stream tapped with more variety
    /// than a frame lists, or a client spraying distinct emojis.
    pub fn bounded(&self) {
        self.frames_bounded.inc();
    }

    /// The trends stage's arrangements took in or let go of `change` updates.
    pub fn trend_updates(&self, change: i64) {
        self.trend_updates_held.inc_by(change);
    }

    /// Updates the trends stage's arrangements hold now.
    pub fn trend_updates_held(&self) -> i64 {
        self.trend_updates_held.get()
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
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
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                prometheus_text::CONTENT_TYPE,
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
        m.bounded();
        m.trend_updates(7);
        m.trend_updates(-3);
        let text = m.render();
        for line in [
            "emostream_dataflow_records_total 3",
            "emostream_dataflow_events_total 120",
            "emostream_dataflow_late_events_total 2",
            "emostream_dataflow_replay_skipped_total 5",
            "emostream_dataflow_unreadable_events_total 1",
            "emostream_dataflow_epochs_published_total 3",
            "emostream_dataflow_frames_bounded_total 1",
            "emostream_dataflow_trend_updates_held 4",
            "emostream_dataflow_watermark_lag_seconds{partition=\"1\"} 0.64",
            "emostream_dataflow_floor_epoch{partition=\"1\"} 42",
            "emostream_dataflow_publish_latency_seconds_bucket{le=\"0.25\"} 0",
            "emostream_dataflow_publish_latency_seconds_bucket{le=\"0.5\"} 1",
            "emostream_dataflow_publish_latency_seconds_bucket{le=\"5\"} 2",
            "emostream_dataflow_publish_latency_seconds_bucket{le=\"+Inf\"} 2",
            "emostream_dataflow_publish_latency_seconds_sum 5.3",
            "emostream_dataflow_publish_latency_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
