//! The ingest tier: emoji taps over HTTP in, acknowledged batch records on `emoji-events` out.
//!
//! # Layout
//! - [`routes`]: the HTTP handlers, the deadline-and-count middleware, and [`app`].
//! - [`parse`]: request bodies (JSON object, JSON array, NDJSON) into validated taps (public for
//!   the fuzz target in `gateway/fuzz`): `parse/fast` (borrowed structs), `parse/slow` (every
//!   refusal names its field), `parse/validate` (the rules both share), `parse/emoji`.
//! - `limits`: token buckets per user id and per client IP.
//! - `batcher`: the in-flight budget, and the packing of one (partition, stream, epoch) into one
//!   Kafka record, answering each request once the broker has acknowledged its record:
//!   `batcher/batches` (when a batch is due) and `batcher/packer` (sending, answers).
//! - `producer`: the Kafka producer and the broker's health (503 at once while it is down).
//! - `listener`: the connection cap.
//! - `error`: [`GatewayError`], every refusal as a status and a JSON reason.
//! - `metrics`: counters, gauges and the broker-ack histogram served on `/metrics`.

mod batcher;
mod error;
mod limits;
mod listener;
mod metrics;
pub mod parse;
mod producer;
mod routes;

pub use batcher::{Batcher, BatcherHandle, ProducerHealth};
pub use error::{GatewayError, StartError};
pub use listener::ClientAddr;
pub use metrics::Metrics;
pub use routes::{app, AppState};

use emostream_protocol::Config;
use listener::CappedListener;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the gateway on `listener` until `shutdown` resolves: then it stops accepting, lets
/// in-flight requests finish (each still waits for its broker acknowledgement), flushes every
/// open batch and waits for the broker's answers before returning. A fatal producer error
/// starts the same drain and then returns [`StartError::Fatal`], so the process exits non-zero
/// and its supervisor restarts it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let (batcher, handle) =
        Batcher::start(&config, Arc::clone(&metrics)).map_err(StartError::Producer)?;
    serve(config, listener, shutdown, (batcher, handle), metrics).await
}

/// [`run`] with a batcher already started (a test keeps a handle to it).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    (batcher, handle): (Batcher, BatcherHandle),
    metrics: Arc<Metrics>,
) -> Result<(), StartError> {
    // A topic with another partition count than configured is refused at start: serving would
    // mean 503s (or idle partitions) until someone reads the logs. A broker that is not up yet
    // or a topic not created yet is not an error here: `/readyz` says so until they are.
    if let Err(e @ StartError::Partitions { .. }) = handle.ready().await {
        batcher.abort();
        return Err(e);
    }
    // The same for a topic whose records must be smaller than the gateway's largest: they
    // would be refused (500) under load only. A broker that does not answer DescribeConfigs
    // cannot be checked: a warning, not a refusal. (Nisshi 0.8.1 answers with the settings
    // a topic was created with only, so a topic without this one is a warning.)
    match producer::check_record_limit(&config).await {
        Ok(producer::RecordLimit::Enough) => {}
        Ok(producer::RecordLimit::Unknown(why)) => tracing::warn!(
            topic = %config.kafka.events_topic,
            why,
            "could not read the topic's max.message.bytes; records reach {} bytes",
            producer::MAX_RECORD_BYTES
        ),
        Err(e) => {
            batcher.abort();
            return Err(e);
        }
    }
    let health = handle.health();
    let failed = health.clone().failed();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = failed => {}
        }
    };
    let state = AppState::new(&config, handle, metrics)?;
    let listener = CappedListener::new(listener, state.connections());
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<ClientAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await?;
    // Every handler has returned, so every sender clone is gone: the batcher drains and stops.
    batcher.finish().await;
    match health.fatal() {
        Some(reason) => Err(StartError::Fatal(reason)),
        None => Ok(()),
    }
}
