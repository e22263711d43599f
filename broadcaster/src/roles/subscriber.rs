//! A subscriber: one link up to its cluster publisher, and the viewers' WebSockets and SSE
//! streams.

use super::{finish, serve, Settings};
use crate::auth::{self, TokenKey};
use crate::error::Error;
use crate::fanout::Fanout;
use crate::hub::{Hub, Watching};
use crate::link::{self, Upstream};
use crate::metrics::{Conn, Metrics};
use crate::outlet::{Offer, Outlet, SseWire, Wire, WsWire};
use crate::tasks::{Stop, Tasks};
use crate::viewer;
use crate::websocket::Upgrade;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
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
    super::require_link_secret(&listener, &settings)?;
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
    let lanes = match settings.subscriber_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let fanout = Arc::new(Fanout::start(&hub, lanes, Arc::clone(&metrics)));
    let state = Viewers {
        hub,
        fanout,
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
    fanout: Arc<Fanout>,
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
    /// above to send its ring; then joins: `outlet` gets the replay, then every later frame.
    async fn join<W: Wire>(
        &self,
        stream: &str,
        since: Option<u64>,
        outlet: &Arc<Outlet<W>>,
    ) -> Watching {
        let watching = self.hub.watch(stream);
        if !self.hub.until_synced(stream, SYNC_WAIT).await {
            tracing::debug!(
                stream,
                "joining before the stream synced: the ring may be short"
            );
        }
        let resumed = self.hub.join(stream, since, |after, replay| {
            outlet.start(after, replay);
            self.fanout
                .add(stream, Arc::clone(outlet) as Arc<dyn Offer>);
        });
        if let Some(in_full) = resumed {
            self.metrics.resumed(in_full);
        }
        watching
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
    upgrade: Result<Upgrade, Error>,
) -> Result<Response, Error> {
    let Path(stream) = stream?;
    valid_stream(&stream)?;
    let Query(query) = query?;
    viewers.admit(&query, &headers)?;
    Ok(upgrade?.on_upgrade(move |socket, early| async move {
        let _counted = Counted::enter(Arc::clone(&viewers.count));
        let _open = viewers.metrics.open(Conn::Ws);
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "viewer socket");
        }
        let socket = Arc::new(socket);
        let outlet = Outlet::new(WsWire::new(Arc::clone(&socket)), viewers.budget_bytes);
        // Joined only now, after the upgrade, so the replay is as fresh as the socket.
        let _watching = viewers.join(&stream, query.since, &outlet).await;
        viewer::serve_ws(
            socket,
            early,
            outlet,
            &viewers.metrics,
            viewers.stop.clone(),
        )
        .await;
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
    // Capacity 0 gives the sender one slot: the fan-out hands over a frame only once hyper has
    // taken the previous one for the socket, so a stalled reader backs up into the outlet.
    let (tx, body) = futures_channel::mpsc::channel::<Bytes>(0);
    let outlet = Outlet::new(SseWire(tx), viewers.budget_bytes);
    let watching = viewers.join(&stream, since, &outlet).await;
    tokio::spawn(async move {
        let _held = (counted, watching);
        let _open = viewers.metrics.open(Conn::Sse);
        viewer::serve_sse(outlet, &viewers.metrics, viewers.stop.clone()).await;
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
