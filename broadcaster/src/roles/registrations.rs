//! The main publisher's per-client limit on `/register` and `/v1/viewers`: a token bucket per
//! client, one token per request. Each assignment counts against its subscriber's room until
//! the subscriber's next report ([`SILENCE`](crate::tiers::roster::SILENCE)), so one client
//! registering in a loop would otherwise make placement answer 503 to every real viewer for as
//! long as it kept on.
//!
//! The client is the gateway's: the connection's peer, or behind a load balancer in
//! `trusted_proxies` the address it forwards, counted as an IPv4 address or an IPv6 /64
//! ([`emostream_protocol::client`]).

use crate::error::Error;
use crate::metrics::Metrics;
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use emostream_protocol::client::{client_key, TrustedProxies};
use emostream_protocol::limits::{retry_after_s, RateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// What `[broadcaster]` sets for the limit: `ip_registrations_per_s`,
/// `ip_burst_registrations` and `trusted_proxies`.
#[derive(Debug, Clone)]
pub struct RegistrationLimit {
    /// Registrations a second refilled per client …
    pub per_s: u32,
    /// … and the most a client makes at once.
    pub burst: u32,
    /// Whose `Forwarded` / `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
}

/// The buckets, and the count of refusals.
pub(super) struct Registrations {
    buckets: RateLimiter<IpAddr>,
    trusted: Arc<TrustedProxies>,
    metrics: Arc<Metrics>,
}

impl Registrations {
    pub(super) fn new(limit: &RegistrationLimit, metrics: Arc<Metrics>) -> Self {
        Registrations {
            buckets: RateLimiter::new(limit.per_s, limit.burst),
            trusted: Arc::clone(&limit.trusted_proxies),
            metrics,
        }
    }

    /// Takes the request's token from its client's bucket, or refuses it with 429 and when to
    /// come back. Every registration counts, whatever its answer: a refused one costs the main
    /// publisher the same work, and a page retries with backoff, far below the rate. A request
    /// the server did not accept from a socket (an in-process test's) is not limited.
    pub(super) fn admit(&self, parts: &Parts) -> Result<(), Error> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(());
        };
        let client = client_key(self.trusted.client(peer.ip(), &parts.headers));
        self.buckets
            .take(&client, 1, Instant::now())
            .map_err(|wait| {
                self.metrics.registration_limited();
                Error::TooManyRegistrations {
                    retry_after_s: retry_after_s(wait),
                }
            })
    }
}
