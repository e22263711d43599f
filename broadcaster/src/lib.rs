//! Tiered fan-out of closed epochs and trend frames to viewers: a main publisher reads
//! `emoji-epochs` and `emoji-trends` and feeds cluster publishers, which feed subscribers, which
//! hold the viewers' WebSockets. Every role is
//! its own process ([`run`] with a [`Role`]); every frame is the dataflow's exact JSON text,
//! shared by reference from the moment it is read until the last viewer's socket.
//!
//! # Layout (the data path, top to bottom)
//! - `sources`: the main publisher's frames: `emoji-epochs` and `emoji-trends` (`kafka`), or the
//!   Kafka-free `synthetic` source for benchmarks (frames from `emostream_protocol::synthetic`).
//! - `hub`: per-stream ring of recent epochs, dedupe by epoch, the newest trend frame per
//!   `(stream, type)`, the feed of every frame in publication order, and which streams this
//!   process's viewers watch.
//! - `tiers`: the links between tiers, both the upper (serving) and lower (connecting) end, each
//!   reading and writing on its own (`link`): heartbeats and subscription changes up, what the
//!   lower tier lacks and then live frames down; which lower-tier members are alive (`roster`).
//! - `viewers`: a subscriber's viewers: `lanes` offer every frame to every viewer of its stream;
//!   `outlet` is one viewer's sending side (frames written straight into its socket while it
//!   keeps up, a small conflating backlog when it does not, lag notices, the byte budget);
//!   `connection` is one task per viewer (drains the backlog, pings, reads, closes);
//!   `websocket` is the viewers' side of RFC 6455; `sse` is which requests are SSE viewers' and
//!   the head of their answer.
//! - `roles`: [`run`], and one module per role ([`main_publisher`], [`cluster_publisher`],
//!   [`subscriber`]) with its routes and [`Settings`]; `registrations` is the main publisher's
//!   per-client limit on `/register`.
//! - `server`: what every role serves with: binding, the HTTP/1.1 accept loop with its
//!   header-read timeout, health, metrics, 404, the descriptor limit, requests served on the raw
//!   socket instead of by hyper (`native`: SSE viewers), write deadlines (`socket`) and stopping
//!   every socket task at shutdown (`tasks`).
//! - `auth`: signed viewer tokens and the tiers' shared link secret.
//! - `metrics`: each tier's counters as Prometheus text.
//! - `error`: [`Error`], for start-up and for HTTP answers.

mod auth;
mod error;
mod hub;
mod metrics;
mod roles;
mod server;
mod sources;
mod tiers;
mod viewers;

pub use auth::TokenKey;
pub use error::Error;
pub use hub::Retention;
pub use roles::cluster::cluster_publisher;
pub use roles::main::main_publisher;
pub use roles::subscriber::subscriber;
pub use roles::{allocate_to_give_back, run, RegistrationLimit, Role, Settings};
pub use sources::synthetic::Synthetic;
pub use viewers::outlet::ViewerLimits;

/// What the fuzz target in `broadcaster/fuzz` reads viewers' bytes with; not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::viewers::connection::MAX_VIEWER_MESSAGE_BYTES;
    pub use crate::viewers::websocket::{FromViewer, Reader, Violation};
}
