//! Test plumbing shared by every test, benchmark and load tool of the workspace, written once.
//! Nothing here knows the gateway, the dataflow or the broadcaster crates (they dev-depend on
//! it); it drives the repository's scripts and talks to real sockets and a real broker.
//!
//! # Layout
//!
//! - [`broker`]: [`Broker`], a private development broker started by `scripts/broker.sh` on a
//!   free port, stopped on drop; [`broker::minimal_config`] around it.
//! - [`topic`] (feature `kafka`): read a topic to its end, watermarks, produce and await.
//! - [`process`]: [`Process`], a child with its log file, signalled and stopped with deadlines.
//! - [`workers`]: the timely cluster under `scripts/run_workers.sh` and its processes' pids.
//! - [`procfs`]: what `/proc` says about a process: resident memory, state, CPU time, pids by
//!   command line.
//! - [`paths`]: the repository root and the workspace binaries of the running test's profile.
//! - [`scratch`]: [`Scratch`], a temporary folder kept when a test fails.
//! - [`ports`]: [`free_port`], a loopback port for a process started later.
//! - [`http`]: a raw HTTP/1.1 client, one request per connection.
//! - [`wait`]: [`wait_until`] and [`wait_for`], a condition polled until a deadline.
//! - [`rng`]: [`Rng`], a seeded generator, so a failing trace replays.
//! - [`clock`]: [`now_ms`], wall-clock Unix milliseconds.
//! - [`stats`]: nearest-rank percentiles of samples and of millisecond histograms.
//! - [`netns`]: a test's own network hosts in namespaces on a bridge: links cut, rate limits,
//!   loss, and [`netns::DelayProxy`] for latency.

pub mod broker;
pub mod clock;
pub mod http;
pub mod netns;
pub mod paths;
pub mod ports;
pub mod process;
pub mod procfs;
pub mod rng;
pub mod scratch;
pub mod stats;
#[cfg(feature = "kafka")]
pub mod topic;
pub mod wait;
pub mod workers;

pub use broker::Broker;
pub use clock::now_ms;
pub use paths::{bin_dir, binary, repo_root};
pub use ports::free_port;
pub use process::Process;
pub use rng::Rng;
pub use scratch::Scratch;
pub use stats::{bucket_percentile, percentile};
pub use wait::{wait_for, wait_until};
