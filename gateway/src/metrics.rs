//! The gateway's metrics: one prometheus-client registry, served in the Prometheus text format
//! on `/metrics`. Counters and gauges are atomics, so the hot path takes no lock but the
//! request family's read lock. Labels are bounded: the router's matched path, the status code
//! and the rejection reason, never user input.

use crate::error::REASONS;
use axum::extract::MatchedPath;
use prometheus_client::encoding::LabelValueEncoder;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::{Registry, Unit};
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// Upper bounds of the broker-ack latency buckets, in seconds.
const ACK_BUCKETS_S: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The route label: the router's path pattern (cloning it is a reference count, not a copy), or
/// `unmatched` for the fallback. Only the router's own patterns can appear, so it stays bounded.
/// A pattern named up front (the ingest routes' counters, resolved once) is the same label.
#[derive(Clone, Debug)]
enum Route {
    Matched(Option<MatchedPath>),
    Known(&'static str),
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            Route::Matched(m) => m.as_ref().map_or("unmatched", MatchedPath::as_str),
            Route::Known(path) => path,
        }
    }
}

/// The answers nearly every request gets, whose counters are resolved once: the family's lookup
/// hashes the labels under its lock on every request.
const HOT: [(&str, u16); 2] = [("/send_emoji", 200), ("/v1/streams/{stream}/emojis", 202)];

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl Hash for Route {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// [`HOT`]'s counters, in its order.
    hot: [Counter; HOT.len()],
    /// One per [`REASONS`], created up front so every reason shows from the start (at zero).
    rejections: [Counter; REASONS.len()],
    emojis_accepted: Counter,
    emojis_undelivered: Counter,
    broker_ack: Histogram,
    /// [`GAUGES`], set from [`Gauges::values`] at each scrape.
    gauges: [Gauge; GAUGES.len()],
}

/// The gauges read from their owners at each scrape: name and help, in [`Gauges::values`] order.
const GAUGES: [(&str, &str); 9] = [
    (
        "producer_queue_depth",
        "The Kafka producer's out-queue: records not yet acknowledged plus protocol requests",
    ),
    (
        "in_flight_bytes",
        "Bytes held for requests: bodies (their declared length) until the answer, encoded events until the broker's acknowledgement",
    ),
    (
        "in_flight_budget_bytes",
        "The in-flight budget; a request that does not fit gets 503",
    ),
    (
        "in_flight_clients",
        "Clients (IPv4 addresses, IPv6 /64s) holding a part of the in-flight budget; each holds at most max_in_flight_bytes_per_ip",
    ),
    ("open_connections", "Client connections open now"),
    (
        "broker_reachable",
        "1 when the broker answers, 0 while requests are refused with 503",
    ),
    (
        "rate_limit_tracked_users",
        "User ids with a partly drained token bucket",
    ),
    (
        "rate_limit_tracked_ips",
        "Client IPs with a partly drained token bucket",
    ),
    (
        "live_streams",
        "Streams open now (a tap within stream_idle_s; at most max_live_streams, until the next sweep of a full set)",
    ),
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("emostream_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let hot = HOT.map(|(path, status)| {
            requests.get_or_create_owned(&RequestLabels {
                route: Route::Known(path),
                status,
            })
        });
        let by_reason = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejections",
            "Refused requests by reason",
            by_reason.clone(),
        );
        let rejections =
            REASONS.map(|reason| by_reason.get_or_create_owned(&ReasonLabels { reason }));
        let [emojis_accepted, emojis_undelivered] = [
            (
                "emojis_accepted",
                "Emojis answered with 2xx (acknowledged by the broker in durable mode)",
            ),
            (
                "emojis_undelivered",
                "Emojis in records the broker did not acknowledge",
            ),
        ]
        .map(|(name, help)| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        });
        let gauges = GAUGES.map(|(name, help)| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        });
        let broker_ack = Histogram::new(ACK_BUCKETS_S);
        registry.register_with_unit(
            "broker_ack",
            "From handing a batch record to the producer to the broker's acknowledgement",
            Unit::Seconds,
            broker_ack.clone(),
        );
        Metrics {
            registry,
            requests,
            hot,
            rejections,
            emojis_accepted,
            emojis_undelivered,
            broker_ack,
            gauges,
        }
    }
}

/// Gauges read from their owners when `/metrics` is rendered.
pub struct Gauges {
    /// librdkafka's out-queue: records not yet acknowledged, plus its own protocol requests.
    pub producer_queue_depth: i32,
    /// Bytes of bodies and encoded events holding the in-flight budget, and the budget itself.
    pub in_flight_bytes: usize,
    pub in_flight_budget: usize,
    pub in_flight_clients: usize,
    pub open_connections: usize,
    pub broker_reachable: bool,
    pub tracked_users: usize,
    pub tracked_ips: usize,
    pub live_streams: usize,
}

impl Gauges {
    fn values(&self) -> [i64; GAUGES.len()] {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        [
            i64::from(self.producer_queue_depth),
            n(self.in_flight_bytes),
            n(self.in_flight_budget),
            n(self.in_flight_clients),
            n(self.open_connections),
            i64::from(self.broker_reachable),
            n(self.tracked_users),
            n(self.tracked_ips),
            n(self.live_streams),
        ]
    }
}

impl Metrics {
    /// `route` is the matched path pattern, None for the fallback.
    pub fn request(&self, route: Option<MatchedPath>, status: u16, rejection: Option<&str>) {
        let path = route.as_ref().map(MatchedPath::as_str);
        match HOT
            .iter()
            .position(|&(p, s)| s == status && Some(p) == path)
        {
            Some(i) => {
                self.hot[i].inc();
            }
            None => {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: Route::Matched(route),
                        status,
                    })
                    .inc();
            }
        }
        if let Some(i) = rejection.and_then(|reason| REASONS.iter().position(|x| *x == reason)) {
            self.rejections[i].inc();
        }
    }

    pub fn accepted(&self, emojis: u64) {
        self.emojis_accepted.inc_by(emojis);
    }

    /// Events of a record the broker did not acknowledge (their requests got 503, or, in
    /// fire-and-forget mode, a 202 they did not deserve).
    pub fn undelivered(&self, emojis: u64) {
        self.emojis_undelivered.inc_by(emojis);
    }

    /// Time from handing a record to the producer until the broker's acknowledgement.
    pub fn broker_ack(&self, latency: Duration) {
        self.broker_ack.observe(latency.as_secs_f64());
    }

    pub fn render(&self, g: &Gauges) -> String {
        for (gauge, value) in self.gauges.iter().zip(g.values()) {
            gauge.set(value);
        }
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
