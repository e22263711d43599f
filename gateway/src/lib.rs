//! The ingest tier: emoji taps over HTTP in, acknowledged batch records on `emoji-events` out.
//!
//! # Layout
//! - [`routes`]: the HTTP handlers and [`app`], the router they make.
//! - `parse`: request bodies (JSON object, JSON array, NDJSON) into validated events.
//! - `batcher`: packs the events of one (partition, stream, epoch) into one Kafka record and
//!   answers each request once the broker has acknowledged the record that holds it.
//! - `error`: [`GatewayError`], every refusal as a status and a JSON reason.
//! - `metrics`: counters served on `/metrics`.

mod batcher;
mod error;
mod metrics;
mod parse;
mod routes;

pub use batcher::{Batcher, BatcherHandle};
pub use error::GatewayError;
pub use routes::{app, AppState};

use emostream_protocol::Config;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the gateway on `listener` until `shutdown` resolves, then finishes in-flight requests,
/// flushes every open batch and waits for the broker's acknowledgements before returning.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (batcher, handle) = Batcher::start(&config).map_err(std::io::Error::other)?;
    let state = AppState::new(Arc::new(config), handle);
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    // Every handler has returned, so every sender clone is gone: the batcher drains and stops.
    batcher.finish().await;
    Ok(())
}
