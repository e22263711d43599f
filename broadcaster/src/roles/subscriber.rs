//! A subscriber: one link up to its cluster publisher, and the viewers' WebSockets and SSE
//! streams.

use super::{finish, lean, serve, Settings};
use crate::auth::{self, TokenKey};
use crate::error::Error;
use crate::hub::{Hub, Joined, Watching};
use crate::link::{self, Upstream};
use crate::metrics::{Conn, Metrics};
use crate::tasks::{Stop, Tasks};
use crate::viewer::{self, Feed, Sse, Viewer, Ws};
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use emostream_protocol::wire::LinkUp;
use futures_util::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

/// Viewers have nothing to say beyond pongs and Close; a larger message is refused.
const MAX_VIEWER_MESSAGE_BYTES: usize = 4096;

/// How long a viewer of a stream this subscriber did not carry yet waits for the tier above to
/// send the stream's ring; past it, the viewer gets what is here and the rest live.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// Serves subscriber `name` on `listener`, linked to its cluster publisher at `cluster`
/// (`host:port`); `url` (`ws://host:port`) is where the main publisher sends viewers.
pub async fn subscriber(
    listener: TcpListener,
    name: String,
    cluster: String,
    url: String,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let hub = Arc::new(Hub::new(settings.ring_epochs));
    let viewers = Arc::new(AtomicU64::new(0));
    let metrics = Arc::new(Metrics::new("subscriber"));
    let tasks = Tasks::new();
    let upstream = Upstream {
        url: format!("ws://{cluster}{}", link::PATH),
        secret: settings.link_secret.clone(),
        subscribe: true,
    };
    let (up_hub, up_viewers, up_metrics, stop) = (
        Arc::clone(&hub),
        Arc::clone(&viewers),
        Arc::clone(&metrics),
        tasks.stop_handle(),
    );
    tokio::spawn(async move {
        let heartbeat = || LinkUp::Subscriber {
            name: name.clone(),
            url: url.clone(),
            viewers: up_viewers.load(Ordering::Relaxed),
        };
        link::keep_upstream(upstream, &up_hub, &up_metrics, heartbeat, stop).await;
    });
    let state = Viewers {
        hub,
        count: viewers,
        metrics: Arc::clone(&metrics),
        tokens: settings.tokens,
        budget_bytes: settings.viewer_lag_budget_bytes,
        stop: tasks.stop_handle(),
    };
    let mut app = Router::new()
        .route("/v1/streams/{stream}/ws", get(watch_ws))
        .route("/v1/streams/{stream}/sse", get(watch_sse));
    if let Some(gateway) = settings.page_gateway {
        // The viewer page: `/`, its assets and `/config.json` naming the gateway for taps.
        app = app.merge(emostream_web::routes(gateway));
    }
    let app = app.with_state(state);
    serve(listener, finish(app, metrics), tasks, shutdown).await
}

#[derive(Clone)]
struct Viewers {
    hub: Arc<Hub>,
    count: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    tokens: Option<TokenKey>,
    budget_bytes: usize,
    stop: Stop,
}

/// `?since=<epoch>`: the last epoch the viewer has; it gets every later one still in the ring.
/// `?token=`: the viewer token, for clients that cannot set headers (browsers' WebSocket).
#[derive(Debug, Deserialize)]
struct ViewerQuery {
    since: Option<u64>,
    token: Option<String>,
}

impl Viewers {
    /// Refuses a viewer without a valid token when viewer auth is on.
    fn admit(&self, query: &ViewerQuery, headers: &HeaderMap) -> Result<(), Error> {
        let Some(key) = &self.tokens else {
            return Ok(());
        };
        let token = query.token.as_deref().or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::bearer)
        });
        key.verify(token, SystemTime::now()).map_err(|e| {
            self.metrics.unauthorized();
            Error::Unauthorized(e.message())
        })
    }

    /// Starts watching `stream` and, if this subscriber did not carry it yet, waits for the tier
    /// above to send its ring; then joins.
    async fn join(&self, stream: &str, since: Option<u64>) -> (Watching, Joined) {
        let watching = self.hub.watch(stream);
        self.hub.until_synced(stream, SYNC_WAIT).await;
        let joined = self.hub.join(stream, since);
        if let Some(in_full) = joined.resumed {
            self.metrics.resumed(in_full);
        }
        (watching, joined)
    }

    fn viewer(&self, joined: Joined) -> Viewer<'_> {
        Viewer {
            replay: joined.replay,
            feed: Feed::new(joined.live),
            metrics: &self.metrics,
            budget_bytes: self.budget_bytes,
            stop: self.stop.clone(),
        }
    }
}

/// Stream ids as the gateway accepts them; anything else cannot have epochs, and would only make
/// the tier above track a made-up name.
fn valid_stream(stream: &str) -> Result<(), Error> {
    if emostream_protocol::wire::is_stream_id(stream) {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "stream",
            message: "a stream id is 1 to 64 of [a-z0-9_-]".into(),
        })
    }
}

async fn watch_ws(
    State(viewers): State<Viewers>,
    stream: Result<Path<String>, PathRejection>,
    query: Result<Query<ViewerQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let Path(stream) = stream?;
    valid_stream(&stream)?;
    let Query(query) = query?;
    viewers.admit(&query, &headers)?;
    let ws = lean(ws?)
        .max_message_size(MAX_VIEWER_MESSAGE_BYTES)
        .max_frame_size(MAX_VIEWER_MESSAGE_BYTES);
    Ok(ws.on_upgrade(move |socket| async move {
        let _counted = Counted::enter(Arc::clone(&viewers.count));
        let _open = viewers.metrics.open(Conn::Ws);
        // Joined only now, after the upgrade, so the replay is as fresh as the socket.
        let (_watching, joined) = viewers.join(&stream, query.since).await;
        let (tx, rx) = socket.split();
        viewer::serve::<Ws, _, _>(tx, rx, viewers.viewer(joined)).await;
    }))
}

/// `GET /v1/streams/{stream}/sse`: every epoch as an event whose id is the epoch, so a browser's
/// `EventSource` resumes by itself after a drop (`Last-Event-ID`); `?since=` works too.
async fn watch_sse(
    State(viewers): State<Viewers>,
    stream: Result<Path<String>, PathRejection>,
    query: Result<Query<ViewerQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let Path(stream) = stream?;
    valid_stream(&stream)?;
    let Query(query) = query?;
    viewers.admit(&query, &headers)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(id) => Some(
            id.to_str()
                .ok()
                .and_then(|id| id.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Invalid {
                    field: "Last-Event-ID",
                    message: "Last-Event-ID must be an epoch (a whole number)".into(),
                })?,
        ),
        None => None,
    };
    let since = last_event_id.or(query.since);
    let counted = Counted::enter(Arc::clone(&viewers.count));
    let (watching, joined) = viewers.join(&stream, since).await;
    // Capacity 0 gives each sender one slot: the viewer task hands over a frame only once hyper
    // has taken the previous one for the socket, so a stalled reader backs up into its outbox,
    // where it is conflated and budgeted like a WebSocket viewer.
    let (tx, body) = futures_channel::mpsc::channel::<Bytes>(0);
    tokio::spawn(async move {
        let _held = (counted, watching);
        let _open = viewers.metrics.open(Conn::Sse);
        viewer::serve::<Sse, _, _>(tx, futures_util::stream::pending(), viewers.viewer(joined))
            .await;
    });
    let body = Body::from_stream(body.map(Ok::<_, Infallible>));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
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
