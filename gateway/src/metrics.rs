//! The gateway's metrics, rendered as Prometheus text on `/metrics`. Every counter is a plain
//! atomic in a fixed table, so the hot path takes no lock. Labels are bounded: the matched
//! route, the status code and the rejection reason, never user input.

use crate::error::REASONS;
use crate::routes::{HEALTHZ, METRICS, OPENAPI, READYZ, SEND_EMOJI, STREAM_EMOJIS};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Every route label: the router's paths, then `unmatched` for the fallback.
pub const ROUTES: [&str; 7] = [
    SEND_EMOJI,
    STREAM_EMOJIS,
    HEALTHZ,
    READYZ,
    METRICS,
    OPENAPI,
    "unmatched",
];
const STATUSES: usize = 600;
/// Upper bounds of the broker-ack latency buckets, in milliseconds.
const ACK_BUCKETS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

pub struct Metrics {
    /// [route][status] → requests.
    requests: Vec<[AtomicU64; STATUSES]>,
    rejections: [AtomicU64; REASONS.len()],
    emojis_accepted: AtomicU64,
    emojis_undelivered: AtomicU64,
    ack_buckets: [AtomicU64; ACK_BUCKETS_MS.len()],
    ack_count: AtomicU64,
    ack_sum_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..ROUTES.len())
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            rejections: Default::default(),
            emojis_accepted: AtomicU64::new(0),
            emojis_undelivered: AtomicU64::new(0),
            ack_buckets: Default::default(),
            ack_count: AtomicU64::new(0),
            ack_sum_us: AtomicU64::new(0),
        }
    }
}

/// Gauges read from their owners when `/metrics` is rendered.
pub struct Gauges {
    /// librdkafka's out-queue: records not yet acknowledged, plus its own protocol requests.
    pub producer_queue_depth: i32,
    /// Events holding a share of the in-flight budget, and the budget itself.
    pub in_flight_events: usize,
    pub in_flight_budget: usize,
    pub open_connections: usize,
    pub broker_reachable: bool,
    pub tracked_users: usize,
    pub tracked_ips: usize,
}

impl Metrics {
    /// `route` is a matched path (or None for the fallback); an unknown path counts as unmatched.
    pub fn request(&self, route: Option<&str>, status: u16, rejection: Option<&str>) {
        let r = route
            .and_then(|r| ROUTES.iter().position(|x| *x == r))
            .unwrap_or(ROUTES.len() - 1);
        self.requests[r][usize::from(status).min(STATUSES - 1)].fetch_add(1, Relaxed);
        if let Some(i) = rejection.and_then(|reason| REASONS.iter().position(|x| *x == reason)) {
            self.rejections[i].fetch_add(1, Relaxed);
        }
    }

    pub fn accepted(&self, emojis: u64) {
        self.emojis_accepted.fetch_add(emojis, Relaxed);
    }

    /// Events of a record the broker did not acknowledge (their requests got 503, or, in
    /// fire-and-forget mode, a 202 they did not deserve).
    pub fn undelivered(&self, emojis: u64) {
        self.emojis_undelivered.fetch_add(emojis, Relaxed);
    }

    /// Time from handing a record to the producer until the broker's acknowledgement.
    pub fn broker_ack(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        for (bucket, le) in self.ack_buckets.iter().zip(ACK_BUCKETS_MS) {
            if ms <= le as f64 {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.ack_count.fetch_add(1, Relaxed);
        self.ack_sum_us
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        fn head(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP emostream_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE emostream_gateway_{name} {kind}");
        }
        head(
            &mut out,
            "requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for (route, statuses) in ROUTES.iter().zip(&self.requests) {
            for (status, n) in statuses.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "emostream_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        head(
            &mut out,
            "rejections_total",
            "counter",
            "Refused requests by reason.",
        );
        for (reason, n) in REASONS.iter().zip(&self.rejections) {
            let _ = writeln!(
                out,
                "emostream_gateway_rejections_total{{reason=\"{reason}\"}} {}",
                n.load(Relaxed)
            );
        }
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "emostream_gateway_{name} {value}");
        };
        one(
            "emojis_accepted_total",
            "counter",
            "Emojis answered with 2xx (acknowledged by the broker in durable mode).",
            self.emojis_accepted.load(Relaxed).to_string(),
        );
        one(
            "emojis_undelivered_total",
            "counter",
            "Emojis in records the broker did not acknowledge.",
            self.emojis_undelivered.load(Relaxed).to_string(),
        );
        one(
            "producer_queue_depth",
            "gauge",
            "The Kafka producer's out-queue: records not yet acknowledged plus protocol requests.",
            g.producer_queue_depth.to_string(),
        );
        one(
            "in_flight_events",
            "gauge",
            "Events between arrival and the broker's acknowledgement.",
            g.in_flight_events.to_string(),
        );
        one(
            "in_flight_budget_events",
            "gauge",
            "The in-flight budget; a request that does not fit gets 503.",
            g.in_flight_budget.to_string(),
        );
        one(
            "open_connections",
            "gauge",
            "Client connections open now.",
            g.open_connections.to_string(),
        );
        one(
            "broker_reachable",
            "gauge",
            "1 when the broker answers, 0 while requests are refused with 503.",
            u8::from(g.broker_reachable).to_string(),
        );
        one(
            "rate_limit_tracked_users",
            "gauge",
            "User ids with a partly drained token bucket.",
            g.tracked_users.to_string(),
        );
        one(
            "rate_limit_tracked_ips",
            "gauge",
            "Client IPs with a partly drained token bucket.",
            g.tracked_ips.to_string(),
        );
        head(
            &mut out,
            "broker_ack_seconds",
            "histogram",
            "From handing a batch record to the producer to the broker's acknowledgement.",
        );
        for (bucket, le) in self.ack_buckets.iter().zip(ACK_BUCKETS_MS) {
            let _ = writeln!(
                out,
                "emostream_gateway_broker_ack_seconds_bucket{{le=\"{}\"}} {}",
                le as f64 / 1000.0,
                bucket.load(Relaxed)
            );
        }
        let count = self.ack_count.load(Relaxed);
        let _ = writeln!(
            out,
            "emostream_gateway_broker_ack_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "emostream_gateway_broker_ack_seconds_sum {}",
            self.ack_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "emostream_gateway_broker_ack_seconds_count {count}");
        out
    }
}
