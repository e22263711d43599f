//! Tiered fan-out of closed epochs and trend frames to viewers: a main publisher reads
//! `emoji-epochs` and `emoji-trends` and feeds cluster publishers, which feed subscribers, which
//! hold the viewers' WebSockets. Every role is
//! its own process ([`run`] with a [`Role`]); every frame is the dataflow's exact JSON text,
//! shared by reference from the moment it is read until the last viewer's socket.
//!
//! # Layout
//! - `roles`: [`run`], and one module per role ([`main_publisher`], [`cluster_publisher`],
//!   [`subscriber`]) with its routes; shared [`Settings`], binding, the HTTP/1.1 server with its
//!   header-read timeout, the descriptor limit, health, metrics, 404, shutdown.
//! - `hub`: per-stream ring of recent epochs, dedupe by epoch, the newest trend frame per
//!   `(stream, type)`, the feed of every frame in publication order, and which streams this
//!   process's viewers watch.
//! - `link`: the WebSocket between two tiers, both the upper (serving) and lower (connecting)
//!   end, each reading and writing on its own: heartbeats and subscription changes up, what the
//!   lower tier lacks and then live frames down.
//! - `fanout`: a subscriber's lanes, which offer every frame to every viewer of its stream.
//! - `outlet`: one viewer's sending side: frames written straight into its socket while it keeps
//!   up, a small conflating backlog when it does not, lag notices, the byte budget;
//!   `outlet/wire` (WebSocket and SSE sockets and their bytes), `outlet/backlog` (what waits).
//! - `viewer`: one task per viewer (WebSocket or SSE): drains the backlog, pings, reads what a
//!   WebSocket viewer says, and closes.
//! - `websocket`: the viewers' side of RFC 6455: the upgrade handing over the raw socket, frames
//!   encoded once, a reader for pongs and Close.
//! - `roster`: which lower-tier members are alive, from their heartbeats.
//! - `auth`: signed viewer tokens and the tiers' shared link secret.
//! - `metrics`: each tier's counters as Prometheus text.
//! - `kafka`: the main publisher's consumers of `emoji-epochs` and `emoji-trends`.
//! - `synthetic`: a Kafka-free epoch source for benchmarks (frames from
//!   `emostream_protocol::synthetic`).
//! - `socket`: write deadlines and the shutdown Close frame, shared by viewers and links.
//! - `tasks`: stopping every socket task at shutdown and waiting for them all.
//! - `error`: [`Error`], for start-up and for HTTP answers.

mod auth;
mod error;
mod fanout;
mod hub;
mod kafka;
mod link;
mod metrics;
mod outlet;
mod roles;
mod roster;
mod socket;
mod synthetic;
mod tasks;
mod viewer;
mod websocket;

pub use auth::TokenKey;
pub use error::Error;
pub use roles::cluster::cluster_publisher;
pub use roles::main::main_publisher;
pub use roles::subscriber::subscriber;
pub use roles::{run, Role, Settings};
pub use synthetic::Synthetic;
