//! The supervisor of this host's timely processes (`scripts/run_workers.sh` runs it).
//!
//! Timely has no fault tolerance: when one process of the cluster exits, the others lose their
//! links, so the supervisor stops every local process and starts them all again (each host's
//! supervisor does the same) and the cluster resumes from Kafka. It waits longer before each
//! restart that follows a short run, and does not restart at all when a process says a restart
//! cannot help: fenced by another cluster ([`exit::FENCED`]), refused to start ([`exit::REFUSED`]) or
//! misconfigured ([`exit::CONFIG`]).
//!
//! # Layout
//! - [`plan`]: the command line, and which of the configuration's processes live on this host.
//! - [`backoff`]: [`Backoff`], the delay before each restart.
//! - [`supervise`]: [`supervise::run`], the loop: start, wait for an exit or a signal, stop.

pub mod backoff;
pub mod plan;
pub mod supervise;

pub use backoff::Backoff;
pub use emostream_protocol::exit;
pub use plan::{Args, Plan};
