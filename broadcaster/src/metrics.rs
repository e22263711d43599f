//! Each tier's metrics in one prometheus-client registry, served in the Prometheus text format
//! on `/metrics`.
//!
//! The hot path (one increment per frame per connection) must cost no more than an uncontended
//! add: counters and gauges are the crate's atomics, and the handle of each labelled series is
//! taken once, at start, so no increment looks a label set up. Labels are fixed at compile time
//! (`tier`, and `conn` = link, ws or sse), so nothing a viewer sends can become a label.

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet, EncodeMetric};
use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The kind of connection a frame goes out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// A lower tier.
    Link,
    /// A WebSocket viewer.
    Ws,
    /// An SSE viewer.
    Sse,
}

const CONNS: [&str; 3] = ["link", "ws", "sse"];

impl Conn {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    conn: &'static str,
}

/// Upper bounds of the delivery-latency buckets, in seconds: the product's target (200 ms p99)
/// sits in the middle, with room either side to see how far off a tier is.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The delivery histogram. The crate's `Histogram` takes a lock per observation and has no way to
/// add a batch; a fan-out pass observes thousands of deliveries from several lanes at once, so
/// this one keeps atomic buckets that [`Deliveries`] adds to once per pass, and hands them to the
/// crate's encoder as they are.
#[derive(Debug, Clone, Default)]
struct DeliveryHistogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per bucket, not cumulative; the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl TypedMetric for DeliveryHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DeliveryHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &self.0;
        let buckets: [(f64, u64); LATENCY_BUCKETS_S.len() + 1] = std::array::from_fn(|i| {
            let bound = LATENCY_BUCKETS_S.get(i).copied().unwrap_or(f64::INFINITY);
            (bound, cells.buckets[i].load(Ordering::Relaxed))
        });
        let sum = cells.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let count = cells.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub struct Metrics {
    registry: Registry,
    open: [Gauge; 3],
    frames_sent: [Counter; 3],
    bytes_sent: [Counter; 3],
    writes: [Counter; 3],
    frames_in: Counter,
    last_frame_in: Gauge<f64, AtomicU64>,
    conflated: Counter,
    lag_closes: Counter,
    silent_closes: Counter,
    upstream_lost_closes: Counter,
    token_expiry_closes: Counter,
    refused: Counter,
    registrations_limited: Counter,
    resume_hits: Counter,
    resume_misses: Counter,
    unauthorized: Counter,
    delivery: DeliveryHistogram,
    streams_held: Gauge,
    held_bytes: Gauge,
    streams_forgotten: Counter,
}

/// Deliveries counted locally, then added to [`Metrics`] at once: a fan-out pass writes thousands
/// of frames, and shared counters bumped for each would bounce their cache lines between the
/// threads writing.
#[derive(Debug, Default)]
pub struct Deliveries {
    frames: [u64; 3],
    bytes: [u64; 3],
    writes: [u64; 3],
    latency_buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    latency_count: u64,
    latency_sum_us: u64,
    conflated: u64,
}

impl Deliveries {
    /// A frame fully written to a peer, `latency` after this tier got it.
    pub fn sent(&mut self, conn: Conn, bytes: usize, latency: Duration) {
        self.frames[conn.index()] += 1;
        self.bytes[conn.index()] += bytes as u64;
        let s = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency_buckets[bucket] += 1;
        self.latency_count += 1;
        self.latency_sum_us += u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    }

    /// Bytes written that carry no frame (a ping).
    pub fn overhead(&mut self, conn: Conn, bytes: usize) {
        self.bytes[conn.index()] += bytes as u64;
    }

    /// One write (a `sendmsg`, whatever it carried) the peer's socket took something of.
    pub fn wrote(&mut self, conn: Conn) {
        self.writes[conn.index()] += 1;
    }

    /// Frames a slow viewer skipped.
    pub fn conflated(&mut self, frames: u64) {
        self.conflated += frames;
    }
}

/// One open connection, counted for as long as it is held.
pub struct Open<'a> {
    metrics: &'a Metrics,
    conn: Conn,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.metrics.open[self.conn.index()].dec();
    }
}

impl Metrics {
    pub fn new(tier: &'static str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "emostream_broadcaster",
            [("tier".into(), tier.into())].into_iter(),
        );
        let per_conn = |family: &Family<ConnLabels, Counter>| {
            CONNS.map(|conn| family.get_or_create_owned(&ConnLabels { conn }))
        };
        let connections = Family::<ConnLabels, Gauge>::default();
        registry.register(
            "connections",
            "Connections open now, by kind (link = a lower tier)",
            connections.clone(),
        );
        let open = CONNS.map(|conn| connections.get_or_create_owned(&ConnLabels { conn }));
        let frames_sent = Family::default();
        registry.register(
            "frames_sent",
            "Epoch frames fully written to a peer",
            frames_sent.clone(),
        );
        let bytes_sent = Family::default();
        registry.register(
            "bytes_sent",
            "Payload bytes written to peers (frames, lag notices, SSE pings)",
            bytes_sent.clone(),
        );
        let writes = Family::default();
        registry.register(
            "writes",
            "Writes to viewers' sockets that took something: one per viewer per epoch when an \
             epoch's frames go together",
            writes.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let frames_in = counter(
            "frames_in",
            "New epoch frames this tier took in (after dedupe)",
        );
        let conflated = counter(
            "conflated",
            "Frames a slow viewer skipped because a newer one replaced them in its outbox",
        );
        let lag_closes = counter(
            "lag_closes",
            "Viewers closed for falling further behind than the lag byte budget",
        );
        let silent_closes = counter(
            "silent_closes",
            "Connections closed because the peer stopped taking data or answering pings",
        );
        let upstream_lost_closes = counter(
            "upstream_lost_closes",
            "Viewers closed (1012) because the subscriber had lost its upstream for too long",
        );
        let token_expiry_closes = counter(
            "token_expiry_closes",
            "Viewers closed (1008) because their token expired while they watched",
        );
        let refused = counter(
            "viewers_refused",
            "Viewers answered 503 before the upgrade: the subscriber was full, carried its most \
             streams, or had lost its upstream",
        );
        let registrations_limited = counter(
            "registrations_limited",
            "Registrations (/register, /v1/viewers) answered 429: their client was over \
             ip_registrations_per_s / ip_burst_registrations",
        );
        let resume_hits = counter(
            "resume_hits",
            "Resumes (since / Last-Event-ID) the ring could serve in full",
        );
        let resume_misses = counter(
            "resume_misses",
            "Resumes from before the oldest epoch the ring still holds",
        );
        let unauthorized = counter("unauthorized", "Viewers or links refused with 401");
        let streams_forgotten = counter(
            "streams_forgotten",
            "Streams nobody here watched that this tier forgot after stream_idle_s without a frame",
        );
        let last_frame_in = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_frame_in",
            "Unix time this tier last took in a new frame: time() minus it is how long epochs have \
             not come (the dataflow, Kafka or the tier above stalled), 0 before the first",
            Unit::Seconds,
            last_frame_in.clone(),
        );
        let streams_held = Gauge::default();
        registry.register(
            "streams_held",
            "Streams this tier holds a ring or trend frames of",
            streams_held.clone(),
        );
        let held_bytes = Gauge::default();
        registry.register_with_unit(
            "held",
            "What this tier's held frames cost, their bookkeeping included (bounded by \
             max_held_bytes)",
            Unit::Bytes,
            held_bytes.clone(),
        );
        let delivery = DeliveryHistogram::default();
        registry.register_with_unit(
            "delivery",
            "From a frame reaching this tier to its write to a peer completing",
            Unit::Seconds,
            delivery.clone(),
        );
        Self {
            registry,
            open,
            frames_sent: per_conn(&frames_sent),
            bytes_sent: per_conn(&bytes_sent),
            writes: per_conn(&writes),
            frames_in,
            last_frame_in,
            conflated,
            lag_closes,
            silent_closes,
            upstream_lost_closes,
            token_expiry_closes,
            refused,
            registrations_limited,
            resume_hits,
            resume_misses,
            unauthorized,
            delivery,
            streams_held,
            held_bytes,
            streams_forgotten,
        }
    }

    /// What the hub holds now, and how many idle streams it just forgot.
    pub fn held(&self, streams: usize, bytes: usize, forgotten: usize) {
        self.streams_held.set(streams as i64);
        self.held_bytes.set(bytes as i64);
        self.streams_forgotten.inc_by(forgotten as u64);
    }

    pub fn open(&self, conn: Conn) -> Open<'_> {
        self.open[conn.index()].inc();
        Open {
            metrics: self,
            conn,
        }
    }

    pub fn frame_in(&self) {
        self.frames_in.inc();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        self.last_frame_in
            .set(now.map_or(0.0, |since| since.as_secs_f64()));
    }

    /// A frame fully written to a peer, `latency` after this tier got it.
    pub fn sent(&self, conn: Conn, bytes: usize, latency: Duration) {
        let mut one = Deliveries::default();
        one.sent(conn, bytes, latency);
        self.add(&one);
    }

    /// Adds what a fan-out pass counted locally.
    pub fn add(&self, d: &Deliveries) {
        let add = |counter: &Counter, n: u64| {
            if n > 0 {
                counter.inc_by(n);
            }
        };
        for i in 0..CONNS.len() {
            add(&self.frames_sent[i], d.frames[i]);
            add(&self.bytes_sent[i], d.bytes[i]);
            add(&self.writes[i], d.writes[i]);
        }
        add(&self.conflated, d.conflated);
        let cells = &self.delivery.0;
        let add = |cell: &AtomicU64, n: u64| {
            if n > 0 {
                cell.fetch_add(n, Ordering::Relaxed);
            }
        };
        for (cell, n) in cells.buckets.iter().zip(d.latency_buckets) {
            add(cell, n);
        }
        add(&cells.count, d.latency_count);
        add(&cells.sum_us, d.latency_sum_us);
    }

    pub fn lag_close(&self) {
        self.lag_closes.inc();
    }

    pub fn silent_close(&self) {
        self.silent_closes.inc();
    }

    pub fn upstream_lost_close(&self) {
        self.upstream_lost_closes.inc();
    }

    pub fn token_expiry_close(&self) {
        self.token_expiry_closes.inc();
    }

    pub fn refused(&self) {
        self.refused.inc();
    }

    pub fn registration_limited(&self) {
        self.registrations_limited.inc();
    }

    pub fn resumed(&self, in_full: bool) {
        if in_full {
            self.resume_hits.inc();
        } else {
            self.resume_misses.inc();
        }
    }

    pub fn unauthorized(&self) {
        self.unauthorized.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_cumulative_histogram() {
        let m = Metrics::new("subscriber");
        let held = m.open(Conn::Ws);
        m.sent(Conn::Ws, 100, Duration::from_millis(3));
        m.sent(Conn::Ws, 50, Duration::from_millis(150));
        m.sent(Conn::Link, 7, Duration::from_secs(60));
        m.resumed(true);
        m.resumed(false);
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(m
            .render()
            .contains("emostream_broadcaster_last_frame_in_seconds{tier=\"subscriber\"} 0.0"));
        m.frame_in();
        let last_frame_in = m.last_frame_in.get();
        assert!(
            (before..before + 60.0).contains(&last_frame_in),
            "{last_frame_in} vs {before}"
        );
        let mut batch = Deliveries::default();
        batch.conflated(3);
        batch.sent(Conn::Sse, 20, Duration::from_millis(2));
        batch.wrote(Conn::Sse);
        m.add(&batch);
        let text = m.render();
        for line in [
            r#"emostream_broadcaster_connections{tier="subscriber",conn="ws"} 1"#,
            r#"emostream_broadcaster_frames_sent_total{tier="subscriber",conn="ws"} 2"#,
            r#"emostream_broadcaster_bytes_sent_total{tier="subscriber",conn="ws"} 150"#,
            r#"emostream_broadcaster_bytes_sent_total{tier="subscriber",conn="link"} 7"#,
            r#"emostream_broadcaster_frames_sent_total{tier="subscriber",conn="sse"} 1"#,
            r#"emostream_broadcaster_writes_total{tier="subscriber",conn="sse"} 1"#,
            r#"emostream_broadcaster_conflated_total{tier="subscriber"} 3"#,
            r#"emostream_broadcaster_resume_hits_total{tier="subscriber"} 1"#,
            r#"emostream_broadcaster_resume_misses_total{tier="subscriber"} 1"#,
            r#"emostream_broadcaster_delivery_seconds_bucket{tier="subscriber",le="0.001"} 0"#,
            r#"emostream_broadcaster_delivery_seconds_bucket{tier="subscriber",le="0.005"} 2"#,
            r#"emostream_broadcaster_delivery_seconds_bucket{tier="subscriber",le="0.2"} 3"#,
            r#"emostream_broadcaster_delivery_seconds_bucket{tier="subscriber",le="10"} 3"#,
            r#"emostream_broadcaster_delivery_seconds_bucket{tier="subscriber",le="+Inf"} 4"#,
            r#"emostream_broadcaster_delivery_seconds_count{tier="subscriber"} 4"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        drop(held);
        let text = m.render();
        let line = r#"emostream_broadcaster_connections{tier="subscriber",conn="ws"} 0"#;
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}
