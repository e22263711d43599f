//! The shapes every Emostream tier agrees on, written once.
//!
//! # Layout
//! - [`config`]: `cluster.toml` as typed structs, with environment overrides.
//! - [`kafka`]: the librdkafka settings of every Kafka client the tiers build.
//! - [`epoch`]: the 2-second epoch grid and the per-1000 reduction rule.
//! - [`exit`]: the dataflow's exit statuses that tell its supervisors not to restart it.
//! - [`progress`]: the dataflow's recovery record on the progress topic.
//! - [`trends`]: the trend frames (trending, sentiment, popular) on `emoji-trends`.
//! - [`websocket`]: WebSocket opcodes and the server's frame encoding, for viewers' sockets.
//! - [`wire`]: the HTTP bodies, the Kafka records and the viewer frames.
//! - [`synthetic`]: the frames of an epoch (epoch and trend frames) the fan-out benchmark and its
//!   floor both send.
//! - [`shutdown`] (feature `signal`): one future that resolves on Ctrl-C or SIGTERM.
//! - [`auth`] (feature `auth`): the platform's user tokens (JWT), verified.
//! - [`client`] and [`limits`] (feature `limits`): who a request is from (behind
//!   `trusted_proxies`, the forwarded address) and the key it is counted under (IPv4 address,
//!   IPv6 /64); token buckets per key. The gateway's per-client limits and the main publisher's
//!   `/register` limit.

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "limits")]
pub mod client;
pub mod config;
pub mod epoch;
pub mod exit;
pub mod kafka;
#[cfg(feature = "limits")]
pub mod limits;
pub mod progress;
#[cfg(feature = "signal")]
pub mod shutdown;
pub mod synthetic;
pub mod trends;
pub mod websocket;
pub mod wire;

pub use config::Config;
