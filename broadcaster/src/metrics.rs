//! Each tier's counters, served as Prometheus text on `/metrics`.
//!
//! Plain atomics rather than a metrics registry: the hot path (one increment per frame per
//! connection) must cost no more than an uncontended add, and labels are fixed at compile time
//! (`tier`, and `conn` = link, ws or sse), so nothing a viewer sends can become a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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

const CONNS: [(Conn, &str); 3] = [(Conn::Link, "link"), (Conn::Ws, "ws"), (Conn::Sse, "sse")];

impl Conn {
    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the delivery-latency buckets, in seconds: the product's target (200 ms p99)
/// sits in the middle, with room either side to see how far off a tier is.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    tier: &'static str,
    open: [AtomicI64; 3],
    frames_sent: [AtomicU64; 3],
    bytes_sent: [AtomicU64; 3],
    frames_in: AtomicU64,
    conflated: AtomicU64,
    lag_closes: AtomicU64,
    silent_closes: AtomicU64,
    resume_hits: AtomicU64,
    resume_misses: AtomicU64,
    unauthorized: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

/// Deliveries counted locally, then added to [`Metrics`] at once: a fan-out pass writes thousands
/// of frames, and shared counters bumped for each would bounce their cache lines between the
/// threads writing.
#[derive(Debug, Default)]
pub struct Deliveries {
    frames: [u64; 3],
    bytes: [u64; 3],
    latency_buckets: [u64; LATENCY_BUCKETS_S.len()],
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
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|b| s <= *b) {
            self.latency_buckets[i] += 1;
        }
        self.latency_count += 1;
        self.latency_sum_us += u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    }

    /// Bytes written that carry no frame (a ping).
    pub fn overhead(&mut self, conn: Conn, bytes: usize) {
        self.bytes[conn.index()] += bytes as u64;
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
        self.metrics.open[self.conn.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn new(tier: &'static str) -> Self {
        Self {
            tier,
            open: Default::default(),
            frames_sent: Default::default(),
            bytes_sent: Default::default(),
            frames_in: AtomicU64::new(0),
            conflated: AtomicU64::new(0),
            lag_closes: AtomicU64::new(0),
            silent_closes: AtomicU64::new(0),
            resume_hits: AtomicU64::new(0),
            resume_misses: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
        }
    }

    pub fn open(&self, conn: Conn) -> Open<'_> {
        self.open[conn.index()].fetch_add(1, Ordering::Relaxed);
        Open {
            metrics: self,
            conn,
        }
    }

    /// Connections of one kind open now.
    pub fn open_now(&self, conn: Conn) -> u64 {
        self.open[conn.index()]
            .load(Ordering::Relaxed)
            .max(0)
            .unsigned_abs()
    }

    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame fully written to a peer, `latency` after this tier got it.
    pub fn sent(&self, conn: Conn, bytes: usize, latency: Duration) {
        let mut one = Deliveries::default();
        one.sent(conn, bytes, latency);
        self.add(&one);
    }

    /// Adds what a fan-out pass counted locally.
    pub fn add(&self, d: &Deliveries) {
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        for i in 0..CONNS.len() {
            add(&self.frames_sent[i], d.frames[i]);
            add(&self.bytes_sent[i], d.bytes[i]);
        }
        for (counter, n) in self.latency_buckets.iter().zip(d.latency_buckets) {
            add(counter, n);
        }
        add(&self.latency_count, d.latency_count);
        add(&self.latency_sum_us, d.latency_sum_us);
        add(&self.conflated, d.conflated);
    }

    /// Bytes written that carry no frame (lag notices, pings): traffic, but not deliveries.
    pub fn overhead(&self, conn: Conn, bytes: usize) {
        self.bytes_sent[conn.index()].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn lag_close(&self) {
        self.lag_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn silent_close(&self) {
        self.silent_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resumed(&self, in_full: bool) {
        let counter = if in_full {
            &self.resume_hits
        } else {
            &self.resume_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let tier = self.tier;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let name = "emostream_broadcaster_connections";
        let _ = writeln!(
            out,
            "# HELP {name} Connections open now, by kind (link = a lower tier).\n# TYPE {name} gauge"
        );
        for (conn, label) in CONNS {
            let _ = writeln!(
                out,
                "{name}{{tier=\"{tier}\",conn=\"{label}\"}} {}",
                self.open_now(conn)
            );
        }
        let per_conn = |out: &mut String, name: &str, help: &str, values: &[AtomicU64; 3]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (conn, label) in CONNS {
                let _ = writeln!(
                    out,
                    "{name}{{tier=\"{tier}\",conn=\"{label}\"}} {}",
                    load(&values[conn.index()])
                );
            }
        };
        per_conn(
            &mut out,
            "emostream_broadcaster_frames_sent_total",
            "Epoch frames fully written to a peer.",
            &self.frames_sent,
        );
        per_conn(
            &mut out,
            "emostream_broadcaster_bytes_sent_total",
            "Payload bytes written to peers (frames, lag notices, SSE pings).",
            &self.bytes_sent,
        );
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "emostream_broadcaster_frames_in_total",
                "New epoch frames this tier took in (after dedupe).",
                &self.frames_in,
            ),
            (
                "emostream_broadcaster_conflated_total",
                "Frames a slow viewer skipped because a newer one replaced them in its outbox.",
                &self.conflated,
            ),
            (
                "emostream_broadcaster_lag_closes_total",
                "Viewers closed for falling further behind than the lag byte budget.",
                &self.lag_closes,
            ),
            (
                "emostream_broadcaster_silent_closes_total",
                "Connections closed because the peer stopped taking data or answering pings.",
                &self.silent_closes,
            ),
            (
                "emostream_broadcaster_resume_hits_total",
                "Resumes (since / Last-Event-ID) the ring could serve in full.",
                &self.resume_hits,
            ),
            (
                "emostream_broadcaster_resume_misses_total",
                "Resumes from before the oldest epoch the ring still holds.",
                &self.resume_misses,
            ),
            (
                "emostream_broadcaster_unauthorized_total",
                "Viewers or links refused with 401.",
                &self.unauthorized,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{tier=\"{tier}\"}} {}",
                load(value)
            );
        }
        let name = "emostream_broadcaster_delivery_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From a frame reaching this tier to its write to a peer completing.\n\
             # TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_S.iter().zip(&self.latency_buckets) {
            cumulative += load(bucket);
            let _ = writeln!(
                out,
                "{name}_bucket{{tier=\"{tier}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = load(&self.latency_count);
        let _ = writeln!(out, "{name}_bucket{{tier=\"{tier}\",le=\"+Inf\"}} {count}");
        let sum = load(&self.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{tier=\"{tier}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{tier=\"{tier}\"}} {count}");
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
        let mut batch = Deliveries::default();
        batch.conflated(3);
        batch.sent(Conn::Sse, 20, Duration::from_millis(2));
        m.add(&batch);
        let text = m.render();
        for line in [
            r#"emostream_broadcaster_connections{tier="subscriber",conn="ws"} 1"#,
            r#"emostream_broadcaster_frames_sent_total{tier="subscriber",conn="ws"} 2"#,
            r#"emostream_broadcaster_bytes_sent_total{tier="subscriber",conn="ws"} 150"#,
            r#"emostream_broadcaster_bytes_sent_total{tier="subscriber",conn="link"} 7"#,
            r#"emostream_broadcaster_frames_sent_total{tier="subscriber",conn="sse"} 1"#,
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
        assert_eq!(m.open_now(Conn::Ws), 0);
    }
}
