//! Tiered fan-out of closed epochs to viewers: a main publisher reads `emoji-epochs` and feeds
//! cluster publishers, which feed subscribers, which hold the viewers' WebSockets. Every role is
//! its own process ([`run`] with a [`Role`]); every frame is the dataflow's exact JSON text,
//! shared by reference from the moment it is read until the last viewer's socket.
//!
//! # Layout
//! - `roles`: [`run`], and one module per role ([`main_publisher`], [`cluster_publisher`],
//!   [`subscriber`]) with its routes; shared binding, health, 404 and shutdown.
//! - `hub`: per-stream ring of recent epochs, dedupe by epoch, and the live broadcast feeds.
//! - `link`: the WebSocket between two tiers, both the upper (serving) and lower (connecting) end.
//! - `viewer`: one task per viewer socket; replay on join, live frames, lag notices, pings.
//! - `roster`: which lower-tier members are alive, from their heartbeats.
//! - `kafka`: the main publisher's `emoji-epochs` consumer.
//! - `socket`: write deadlines and the shutdown Close frame, shared by viewers and links.
//! - `tasks`: stopping every socket task at shutdown and waiting for them all.
//! - `error`: [`Error`], for start-up and for HTTP answers.

mod error;
mod hub;
mod kafka;
mod link;
mod roles;
mod roster;
mod socket;
mod tasks;
mod viewer;

pub use error::Error;
pub use roles::cluster::cluster_publisher;
pub use roles::main::main_publisher;
pub use roles::subscriber::subscriber;
pub use roles::{run, Role};
