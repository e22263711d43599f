//! The ingest tier: emoji taps over HTTP in, acknowledged batch records on `emoji-events` out.
//!
//! # Layout
//! - [`routes`]: the HTTP handlers, the deadline-and-count middleware, and [`app`].
//! - [`parse`]: request bodies (JSON object, JSON array, NDJSON) into validated taps (public for
//!   the fuzz target in `gateway/fuzz`): `parse/fast` (borrowed structs), `parse/slow` (every
//!   refusal names its field), `parse/validate` (the rules both share), `parse/emoji`.
//! - who a request is from (behind `trusted_proxies`, the forwarded address), the key it is
//!   counted under (IPv4 address, IPv6 /64), and the token buckets per user id and per client IP
//!   are `emostream_protocol::client` and `emostream_protocol::limits`, shared with the main
//!   publisher's `/register`.
//! - `batcher`: the in-flight budget (`batcher/budget`: each client's share), and the packing of one (partition, stream, epoch) into one
//!   Kafka record, answering each request once the broker has acknowledged its record:
//!   `batcher/batches` (when a batch is due) and `batcher/packer` (sending, answers).
//! - `producer`: the Kafka producer and the broker's health (503 at once while it is down).
//! - `listener`: the connection caps (none per IP for a trusted proxy), the write timeout, and
//!   hyper's own refusals rewritten as JSON.
//! - `error`: [`GatewayError`], every refusal as a status and a JSON reason.
//! - `metrics`: counters, gauges and the broker-ack histogram served on `/metrics`.

mod batcher;
mod error;
mod listener;
mod metrics;
pub mod parse;
mod producer;
mod routes;
mod streams;

pub use batcher::{Batcher, BatcherHandle, ProducerHealth};
pub use error::{GatewayError, StartError};
pub use listener::ClientAddr;
pub use metrics::Metrics;
pub use routes::{app, AppState};

use axum::extract::ConnectInfo;
use axum::http::Request;
use emostream_protocol::Config;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use listener::{CappedListener, Caps};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Serves the gateway on `listener` until `shutdown` resolves, first raising the descriptor
/// limit to its hard limit and cutting `max_connections` to what that allows (with a reserve
/// for everything else). On `shutdown` it stops accepting, lets in-flight requests finish (each
/// still waits for its broker acknowledgement) for up to
/// `drain_timeout_ms - delivery_timeout_ms` and closes the connections still open, flushes
/// every open batch and waits for the broker's answers before returning. A fatal producer error
/// starts the same drain and then returns [`StartError::Fatal`], so the process exits non-zero
/// and its supervisor restarts it; so does the batcher's packer task ending early (a panic),
/// with [`StartError::BatcherStopped`].
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let descriptors = emostream_protocol::limits::raise_descriptor_limit();
    let g = &mut config.gateway;
    let connections = listener::connections_within(g.max_connections, descriptors);
    if connections < g.max_connections {
        tracing::warn!(
            max_connections = g.max_connections,
            descriptors,
            "max_connections is more than the descriptor limit allows; cut to {connections}"
        );
    } else {
        tracing::info!(
            descriptors,
            max_connections = connections,
            "descriptor limit"
        );
    }
    g.max_connections = connections;
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
    // The same for a topic whose records must be smaller than the gateway's largest (they
    // would be refused, 500, under load only), or whose min.insync.replicas lets a production
    // cluster lose acknowledged taps. A broker that does not answer DescribeConfigs cannot be
    // checked: a warning, not a refusal. (Nisshi 0.8.1 answers with the settings a topic was
    // created with only, so a topic without these is a warning.)
    match producer::check_topic(&config).await {
        Ok(check) => {
            if let Some(producer::RecordLimit::Unknown(why)) = check.record_limit {
                tracing::warn!(
                    topic = %config.kafka.events_topic,
                    why,
                    "could not read the topic's max.message.bytes; records reach {} bytes",
                    producer::MAX_RECORD_BYTES
                );
            }
            if let Some(why) = check.durability {
                tracing::warn!(topic = %config.kafka.events_topic, "{why}");
            }
        }
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
    let g = &config.gateway;
    let caps = Caps::new(
        state.connections(),
        state.open_connections(),
        g.max_connections_per_ip,
        state.trusted_proxies(),
        Duration::from_millis(g.write_timeout_ms),
    );
    let listener = CappedListener::new(listener, caps);
    serve_connections(
        listener,
        app(state),
        Duration::from_millis(g.header_read_timeout_ms),
        // The rest of the drain is for the records sent meanwhile, which the producer answers
        // within its delivery timeout.
        Duration::from_millis(g.drain_timeout_ms.saturating_sub(g.delivery_timeout_ms)),
        stop,
    )
    .await;
    // Every handler has returned, so every sender clone is gone: the batcher drains and stops.
    batcher.finish().await;
    if let Some(reason) = health.stopped() {
        return Err(StartError::BatcherStopped(reason));
    }
    match health.fatal() {
        Some(reason) => Err(StartError::Fatal(reason)),
        None => Ok(()),
    }
}

/// The most a connection's read buffer holds, hyper's smallest: a request head larger than this
/// is answered 431 (as nginx's default buffers for a head's lines, 8 KiB). Part of what
/// [`emostream_protocol::config::CONNECTION_BYTES`] sets aside per connection.
const MAX_BUF_BYTES: usize = 8 * 1024;
/// Header fields of one request: a browser sends about 15, a load balancer adds a few.
const MAX_HEADERS: usize = 32;

/// The accept loop: HTTP/1.1 only (one request at a time per connection, so a connection costs
/// at most one request's memory; HTTP/2 would multiplex many), and a deadline on each request's
/// header. On `stop` it stops accepting, closes idle connections and waits up to `drain` for
/// every request in progress to be answered; then it closes the connections still open.
async fn serve_connections(
    mut listener: CappedListener,
    router: axum::Router,
    header_read_timeout: Duration,
    drain: Duration,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let (close, closing) = watch::channel(false);
    let mut builder = http1::Builder::new();
    // hyper's smallest read and write buffers (neither can go under 8 KiB) and a head of 32
    // fields: a connection holds at most `CONNECTION_BYTES` whatever its client sends, where
    // hyper's defaults let each buffer grow to about 400 KiB.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .max_headers(MAX_HEADERS);
    tokio::pin!(stop);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo(ClientAddr(addr)));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let mut closing = closing.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A client that vanished or timed out: nothing to answer.
                done = connection => if let Err(e) = done {
                    tracing::debug!(error = %e, "connection closed");
                },
                // Past the drain deadline the connection goes with its request: an answer not
                // sent is no acknowledgement, and taps already queued are still flushed.
                _ = closing.wait_for(|&closed| closed) => {}
            }
        });
    }
    drop(listener);
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(drain, &mut drained).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "closing the connections still open at the drain deadline"
        );
        let _ = close.send(true);
        drained.await;
    }
}
