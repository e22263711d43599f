//! A subscriber: one link up to its cluster publisher, and the viewers' WebSockets and SSE
//! streams.

use super::Settings;
use crate::auth::{self, TokenKey};
use crate::error::Error;
use crate::hub::{Hub, Watching};
use crate::metrics::{Conn, Metrics};
use crate::server::native::{self, Native};
use crate::server::socket::WRITE_DEADLINE;
use crate::server::tasks::{Stop, Tasks};
use crate::server::{finish, serve, Pending};
use crate::tiers::link::{self, Upstream, UpstreamHealth};
use crate::viewers::connection::{self, Until, CLOSE_SPREAD};
use crate::viewers::lanes::Fanout;
use crate::viewers::outlet::{Offer, Outlet, SseWire, ViewerLimits, Wire, WsWire};
use crate::viewers::sse;
use crate::viewers::websocket::Upgrade;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use emostream_protocol::wire::LinkUp;
use serde::Deserialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a viewer of a stream this subscriber did not carry yet waits for the tier above to
/// send the stream's ring; past it, the viewer gets what is here and the rest live.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// The shortest reconnection delay an SSE viewer is given (`retry:`); each gets a random part of
/// [`CLOSE_SPREAD`] more.
const SSE_RETRY_MIN: Duration = Duration::from_secs(2);

/// Unsent bytes a viewer's socket holds before a write returns WouldBlock (`TCP_NOTSENT_LOWAT`):
/// about ten 1.5 KiB epoch frames. Without it the kernel takes 100+ KB per socket before the
/// outlet sees any backpressure, so a viewer on a slow link would never be conflated, budgeted
/// or timed out, only buffered; bytes already sent and not yet acknowledged are not limited.
const NOTSENT_LOWAT_BYTES: u32 = 16 * 1024;

/// How long data written to a viewer may stay unacknowledged before the kernel fails the socket
/// (`TCP_USER_TIMEOUT`), instead of retransmitting for ~15 minutes. A WebSocket viewer that stops
/// answering is found by its pings, an SSE viewer only this way: the 25 s pings give its socket
/// data to time out on even on a quiet stream.
const USER_TIMEOUT: Duration = Duration::from_secs(20);

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
    let viewers = Arc::new(AtomicU64::new(0));
    let metrics = Arc::new(Metrics::new("subscriber"));
    let tasks = Tasks::new();
    let hub = super::start_hub(settings.retention, &metrics, tasks.stop_handle());
    let upstream = Upstream {
        url: format!("ws://{cluster}{}", link::PATH),
        secret: settings.link_secret.clone(),
        subscribe: true,
    };
    let (max_viewers, max_streams) = (settings.max_viewers as u64, settings.max_streams);
    let health = Arc::new(UpstreamHealth::start(tasks.stop_handle()));
    let upstream_lost = health.lost();
    let (up_hub, up_viewers, up_metrics, stop) = (
        Arc::clone(&hub),
        Arc::clone(&viewers),
        Arc::clone(&metrics),
        tasks.stop_handle(),
    );
    tokio::spawn(async move {
        let heartbeat = || {
            health.heard();
            let viewers = up_viewers.load(Ordering::Relaxed);
            let stream_room = max_streams.saturating_sub(up_hub.watched()) as u64;
            LinkUp::Subscriber {
                name: name.clone(),
                url: url.clone(),
                viewers,
                room: Some(max_viewers.saturating_sub(viewers)),
                stream_room: Some(stream_room),
                // Only while full: then placement must know which streams still fit.
                carrying: if stream_room == 0 {
                    up_hub.watched_tags()
                } else {
                    Vec::new()
                },
            }
        };
        link::keep_upstream(upstream, &up_hub, &up_metrics, heartbeat, stop).await;
    });
    let lanes = match settings.subscriber_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let fanout = Arc::new(Fanout::start(
        &hub,
        lanes,
        settings.bundle_wait,
        Arc::clone(&metrics),
    ));
    // Viewers make one request per connection (see `Settings::accepting_viewers`).
    let accepting = settings.accepting_viewers(tune);
    let state = Viewers {
        hub,
        fanout,
        count: viewers,
        max_viewers,
        max_streams: settings.max_streams,
        upstream_lost,
        metrics: Arc::clone(&metrics),
        tokens: settings.tokens,
        limits: settings.viewer_limits,
        stop: tasks.stop_handle(),
    };
    let native = Native {
        claims: sse::claims,
        handler: {
            let viewers = state.clone();
            Arc::new(move |socket, request, pending| {
                Box::pin(watch_sse(viewers.clone(), socket, request, pending))
            })
        },
    };
    let mut app = Router::new()
        .route("/v1/streams/{stream}/ws", get(watch_ws))
        .route("/v1/streams/{stream}/sse", any(sse_elsewhere));
    if let Some(page) = settings.page {
        // The viewer page: `/`, its assets and `/config.json` naming the gateway for taps and
        // the main publisher for registering again.
        app = app.merge(emostream_web::routes(page));
    }
    let app = app.with_state(state);
    let app = finish(app, metrics);
    serve(listener, app, Some(native), tasks, accepting, shutdown).await
}

/// Makes a slow viewer's backpressure visible to its outlet, and a dead one's socket fail.
fn tune(socket: &TcpStream) {
    let raw = socket2::SockRef::from(socket);
    let tuned = raw
        .set_tcp_nodelay(true)
        .and_then(|()| raw.set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES))
        .and_then(|()| raw.set_tcp_user_timeout(Some(USER_TIMEOUT)));
    if let Err(e) = tuned {
        tracing::debug!(error = %e, "viewer socket options");
    }
}

#[derive(Clone)]
struct Viewers {
    hub: Arc<Hub>,
    fanout: Arc<Fanout>,
    count: Arc<AtomicU64>,
    max_viewers: u64,
    max_streams: usize,
    upstream_lost: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    tokens: Option<TokenKey>,
    limits: ViewerLimits,
    stop: Stop,
}

/// `?since=<epoch>`: the last epoch the viewer has; it gets every later one still in the ring.
/// `?token=`: the viewer token, for clients that cannot set headers (browsers' WebSocket).
#[derive(Debug, Deserialize)]
struct ViewerQuery {
    since: Option<u64>,
    token: Option<String>,
}

/// A viewer let in: its seat, its stream, and when its token expires. Dropping it gives them
/// back.
struct Admitted {
    _seat: Seat,
    _watching: Watching,
    token_expires: Option<Instant>,
}

impl Viewers {
    /// Checks the viewer's token for `stream` when viewer tokens are on (401 if it fails), and
    /// says when it expires.
    fn authorize(
        &self,
        stream: &str,
        query: &ViewerQuery,
        headers: &HeaderMap,
    ) -> Result<Option<Instant>, Error> {
        let Some(key) = &self.tokens else {
            return Ok(None);
        };
        let token = query.token.as_deref().or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::bearer)
        });
        let now = SystemTime::now();
        let expires_s = key.verify(token, stream, now).map_err(|e| {
            self.metrics.unauthorized();
            Error::Unauthorized(e.message())
        })?;
        let left = (UNIX_EPOCH + Duration::from_secs(expires_s))
            .duration_since(now)
            .unwrap_or_default();
        Ok(Some(Instant::now() + left))
    }

    /// Lets an authorized viewer of `stream` in, or says why not (503): no upstream, no seat, or
    /// one stream too many. Before the upgrade, so a refused viewer costs no socket task.
    fn admit(&self, stream: &str, token_expires: Option<Instant>) -> Result<Admitted, Error> {
        let refuse = |why: String| {
            self.metrics.refused();
            Error::Unavailable(why)
        };
        if *self.upstream_lost.borrow() {
            return Err(refuse(
                "this subscriber has lost its upstream; register again".into(),
            ));
        }
        let seat = Seat::take(&self.count, self.max_viewers).ok_or_else(|| {
            refuse(format!(
                "this subscriber is full ({} viewers); register again",
                self.max_viewers
            ))
        })?;
        let watching = self.hub.watch(stream, self.max_streams).ok_or_else(|| {
            refuse(format!(
                "this subscriber carries its most streams ({}); retry later",
                self.max_streams
            ))
        })?;
        Ok(Admitted {
            _seat: seat,
            _watching: watching,
            token_expires,
        })
    }

    /// What ends the viewer's connection besides the viewer. Its token is honoured for a random
    /// part of [`CLOSE_SPREAD`] past its expiry: tokens issued in one burst (a reconnect storm)
    /// would otherwise all expire, and send their viewers to register, in the same second.
    fn until(&self, admitted: &Admitted) -> Until {
        Until {
            stop: self.stop.clone(),
            upstream_lost: self.upstream_lost.clone(),
            token_expires: admitted
                .token_expires
                .map(|at| at + connection::spread(CLOSE_SPREAD)),
        }
    }

    /// Checks an SSE viewer's request as axum's extractors and `watch_ws` check a WebSocket
    /// viewer's, and lets it in: its stream, and the epoch it has (`Last-Event-ID` wins over
    /// `since`).
    fn admit_sse(&self, request: &Parts) -> Result<(String, Option<u64>, Admitted), Error> {
        let stream = sse::stream_of(request.uri.path()).ok_or_else(invalid_stream)?;
        valid_stream(&stream)?;
        let Query(query) = Query::<ViewerQuery>::try_from_uri(&request.uri)?;
        let token_expires = self.authorize(&stream, &query, &request.headers)?;
        let last_event_id = match request.headers.get("last-event-id") {
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
        let admitted = self.admit(&stream, token_expires)?;
        Ok((stream, since, admitted))
    }

    /// If this subscriber did not carry `stream` yet, waits for the tier above to send its ring;
    /// then joins: `outlet` gets the replay (after a gap notice, if `since` is older than the
    /// ring), then every later frame.
    async fn join<W: Wire>(&self, stream: &str, since: Option<u64>, outlet: &Arc<Outlet<W>>) {
        if !self.hub.until_synced(stream, SYNC_WAIT).await {
            tracing::debug!(
                stream,
                "joining before the stream synced: the ring may be short"
            );
        }
        let resumed = self.hub.join(stream, since, |after, replay, gap| {
            outlet.start(after, since, replay, gap.as_ref());
            self.fanout
                .add(stream, Arc::clone(outlet) as Arc<dyn Offer>);
        });
        if let Some(in_full) = resumed {
            self.metrics.resumed(in_full);
        }
    }
}

/// Stream ids as the gateway accepts them; anything else cannot have epochs, and would only make
/// the tier above track a made-up name.
fn valid_stream(stream: &str) -> Result<(), Error> {
    if emostream_protocol::wire::is_stream_id(stream) {
        Ok(())
    } else {
        Err(invalid_stream())
    }
}

fn invalid_stream() -> Error {
    Error::Invalid {
        field: "stream",
        message: "a stream id is 1 to 64 of [a-z0-9_-]".into(),
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
    let token_expires = viewers.authorize(&stream, &query, &headers)?;
    let upgrade = upgrade?;
    let admitted = viewers.admit(&stream, token_expires)?;
    Ok(upgrade.on_upgrade(move |socket, early| async move {
        let _open = viewers.metrics.open(Conn::Ws);
        let socket = Arc::new(socket);
        let outlet = Outlet::new(WsWire::new(Arc::clone(&socket)), viewers.limits);
        // Joined only now, after the upgrade, so the replay is as fresh as the socket.
        viewers.join(&stream, query.since, &outlet).await;
        let until = viewers.until(&admitted);
        connection::serve_ws(socket, early, outlet, &viewers.metrics, until).await;
        drop(admitted);
    }))
}

/// `GET /v1/streams/{stream}/sse`: every epoch as an event whose id is the epoch, so a browser's
/// `EventSource` resumes by itself after a drop (`Last-Event-ID`); `?since=` works too. Served on
/// the raw socket, never by hyper ([`crate::viewers::sse`]), so that the viewer costs what a
/// WebSocket viewer costs; it answers as the other routes do, in JSON, when it refuses.
async fn watch_sse(viewers: Viewers, socket: TcpStream, request: Parts, pending: Pending) {
    let (stream, since, admitted) = match viewers.admit_sse(&request) {
        Ok(admitted) => admitted,
        Err(refused) => return native::answer(socket, refused.into_response()).await,
    };
    // A viewer now, counted by its seat: its connection is no longer a pending one.
    pending.release();
    tokio::spawn(async move {
        let _open = viewers.metrics.open(Conn::Sse);
        let socket = Arc::new(socket);
        // Each connection's own reconnection delay: `EventSource`'s default (about 3 s) would
        // bring every viewer of a closed subscriber back in the same instant.
        let retry = SSE_RETRY_MIN + connection::spread(CLOSE_SPREAD);
        // Written before the outlet exists, so nothing can go ahead of it; a new socket takes
        // these few hundred bytes at once.
        let head = sse::response_head(retry);
        if !matches!(
            tokio::time::timeout(WRITE_DEADLINE, native::write_all(&socket, &head)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let outlet = Outlet::new(SseWire::new(Arc::clone(&socket)), viewers.limits);
        viewers.join(&stream, since, &outlet).await;
        let until = viewers.until(&admitted);
        connection::serve_sse(socket, outlet, &viewers.metrics, until).await;
        drop(admitted);
    });
}

/// What hyper gets at the SSE path: the methods other than GET, answered 405 as a GET-only route
/// answers them, and the GETs the peek does not claim: one whose stream segment is too long for
/// it to see past ([`native::PEEK_BYTES`]), which is no stream id, and one whose target is an
/// absolute URL (as sent to a proxy), which only a path is served as.
async fn sse_elsewhere(method: Method, stream: Result<Path<String>, PathRejection>) -> Error {
    if method != Method::GET {
        return Error::MethodNotAllowed;
    }
    match stream
        .map_err(Error::from)
        .and_then(|Path(stream)| valid_stream(&stream))
    {
        Err(e) => e,
        Ok(()) => Error::Rejected {
            status: StatusCode::BAD_REQUEST,
            message: "an SSE request's target is its path, not an absolute URL".into(),
        },
    }
}

/// One viewer's place in the count reported upstream and checked against `max_viewers`, for as
/// long as it is held.
struct Seat(Arc<AtomicU64>);

impl Seat {
    /// A seat, if fewer than `max` are taken. Taken before the upgrade, so a flood of upgrades
    /// arriving at once cannot all pass the check.
    fn take(count: &Arc<AtomicU64>, max: u64) -> Option<Self> {
        count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(count)))
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
