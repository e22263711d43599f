//! A subscriber: one link up to its cluster publisher, and the viewers' WebSockets.

use super::{finish, lean, serve};
use crate::error::Error;
use crate::hub::Hub;
use crate::link;
use crate::tasks::{Stop, Tasks};
use crate::viewer::{self, Feed};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use emostream_protocol::wire::LinkUp;
use futures_util::StreamExt;
use serde::Deserialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Viewers have nothing to say beyond pongs and Close; a larger message is refused.
const MAX_VIEWER_MESSAGE_BYTES: usize = 4096;

/// Serves subscriber `name` on `listener`, linked to its cluster publisher at `cluster`
/// (`host:port`); `url` (`ws://host:port`) is where the main publisher sends viewers.
pub async fn subscriber(
    listener: TcpListener,
    name: String,
    cluster: String,
    url: String,
    ring_epochs: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let hub = Arc::new(Hub::new(ring_epochs));
    let viewers = Arc::new(AtomicU64::new(0));
    let tasks = Tasks::new();
    let upstream = format!("ws://{cluster}{}", link::PATH);
    let (up_hub, up_viewers, stop) = (Arc::clone(&hub), Arc::clone(&viewers), tasks.stop_handle());
    tokio::spawn(async move {
        let heartbeat = || LinkUp::Subscriber {
            name: name.clone(),
            url: url.clone(),
            viewers: up_viewers.load(Ordering::Relaxed),
        };
        link::keep_upstream(upstream, &up_hub, heartbeat, stop).await;
    });
    let state = Viewers {
        hub,
        count: viewers,
        stop: tasks.stop_handle(),
    };
    let app = Router::new()
        .route("/v1/streams/{stream}/ws", get(watch))
        .with_state(state);
    serve(listener, finish(app), tasks, shutdown).await
}

#[derive(Clone)]
struct Viewers {
    hub: Arc<Hub>,
    count: Arc<AtomicU64>,
    stop: Stop,
}

/// `?since=<epoch>`: the last epoch the viewer has; it gets every later one still in the ring.
#[derive(Debug, Deserialize)]
struct Resume {
    since: Option<u64>,
}

async fn watch(
    State(viewers): State<Viewers>,
    stream: Result<Path<String>, PathRejection>,
    resume: Result<Query<Resume>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let Path(stream) = stream?;
    let Query(Resume { since }) = resume?;
    let ws = lean(ws?)
        .max_message_size(MAX_VIEWER_MESSAGE_BYTES)
        .max_frame_size(MAX_VIEWER_MESSAGE_BYTES);
    Ok(ws.on_upgrade(move |socket| async move {
        let Viewers { hub, count, stop } = viewers;
        let _counted = Counted::enter(count);
        // Joined only now, after the upgrade, so the replay is as fresh as the socket.
        let (replay, live) = hub.join(&stream, since);
        let (tx, rx) = socket.split();
        viewer::serve(tx, rx, replay, Feed::new(live), stop).await;
        hub.forget_if_idle(&stream);
    }))
}

/// One viewer in the count reported upstream, for as long as it is held.
struct Counted(Arc<AtomicU64>);

impl Counted {
    fn enter(count: Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
