//! The three roles, one per process, and what they share: binding, the link route, health, the
//! JSON 404, and shutdown.

pub mod cluster;
pub mod main;
pub mod subscriber;

use crate::error::Error;
use crate::hub::Hub;
use crate::kafka::EpochSource;
use crate::link;
use crate::roster::Roster;
use crate::tasks::{Stop, Tasks};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use emostream_protocol::Config;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// tungstenite allocates its read buffer up front, 128 KiB by default; peers here send only small
/// heartbeats and pongs, and a subscriber holds many thousands of sockets.
const READ_BUFFER_BYTES: usize = 4096;

/// Frames read from Kafka but not yet in the hub. Epochs arrive a few per second, so this only
/// fills while the ring is being refilled at start-up.
const FRAME_QUEUE: usize = 1024;

/// Which tier this process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Reads `emoji-epochs`, feeds the cluster publishers, and assigns viewers to subscribers.
    Main,
    /// A cluster publisher: a `[[broadcaster.clusters]]` entry, by name.
    Cluster { name: String },
    /// A subscriber: `{cluster}-s{i}`, the i-th (from 0) address in its cluster's `subscribers`.
    Subscriber { name: String },
}

/// Runs `role` as `config` places it until `shutdown` resolves, then closes every socket and
/// returns.
pub async fn run(
    config: Config,
    role: Role,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let broadcaster = &config.broadcaster;
    let ring_epochs = broadcaster.ring_epochs;
    match role {
        Role::Main => {
            let source = EpochSource::new(&config.kafka, ring_epochs)?;
            let listener = bind(&broadcaster.main).await?;
            let (frames_tx, frames) = mpsc::channel(FRAME_QUEUE);
            let kafka = tokio::spawn(source.run(frames_tx));
            let served = main::main_publisher(listener, ring_epochs, frames, shutdown).await;
            kafka.abort();
            // Waiting for the abort drops the consumer, which leaves its broker sessions cleanly.
            let _ = kafka.await;
            served
        }
        Role::Cluster { name } => {
            let cluster = broadcaster
                .clusters
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    Error::Role(format!("no cluster named {name:?} in broadcaster.clusters"))
                })?;
            let listener = bind(&cluster.listen).await?;
            cluster::cluster_publisher(
                listener,
                name,
                broadcaster.main.clone(),
                ring_epochs,
                shutdown,
            )
            .await
        }
        Role::Subscriber { name } => {
            let (cluster, listen) = broadcaster
                .clusters
                .iter()
                .flat_map(|c| {
                    c.subscribers
                        .iter()
                        .enumerate()
                        .map(move |(i, s)| (c, i, s))
                })
                .find(|(c, i, _)| format!("{}-s{i}", c.name) == name)
                .map(|(c, _, s)| (c, s))
                .ok_or_else(|| {
                    Error::Role(format!(
                        "no subscriber named {name:?}: subscribers are named {{cluster}}-s{{i}}, \
                         i counting from 0 in the cluster's subscribers list"
                    ))
                })?;
            let listener = bind(listen).await?;
            let url = format!("ws://{listen}");
            subscriber::subscriber(
                listener,
                name,
                cluster.listen.clone(),
                url,
                ring_epochs,
                shutdown,
            )
            .await
        }
    }
}

async fn bind(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// Adds what every role answers: `/healthz`, and JSON errors for unknown routes and methods.
fn finish(router: Router) -> Router {
    router
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
}

/// Serves `app` on `listener` until `shutdown`, then closes every socket and waits for every task.
async fn serve(
    listener: TcpListener,
    app: Router,
    tasks: Tasks,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let stopping = tasks.trigger();
    // Sockets are told to close as soon as shutdown begins, while axum stops accepting and drains
    // plain requests; it cannot see upgraded sockets, which is what `tasks` is for.
    let graceful = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .await
        .map_err(Error::Serve);
    tasks.stop().await;
    tracing::info!("stopped");
    served
}

/// Applies the small read buffer to an upgrade.
fn lean(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER_BYTES)
}

#[derive(Clone)]
struct LinkState {
    hub: Arc<Hub>,
    roster: Arc<Roster>,
    stop: Stop,
}

/// `GET /internal/link`, where the tier below connects.
fn link_routes(hub: Arc<Hub>, roster: Arc<Roster>, stop: Stop) -> Router {
    Router::new()
        .route(link::PATH, get(link_upgrade))
        .with_state(LinkState { hub, roster, stop })
}

async fn link_upgrade(
    State(s): State<LinkState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    Ok(lean(ws?).on_upgrade(move |socket| async move {
        link::serve_downstream(socket, &s.hub, &s.roster, s.stop).await;
    }))
}
