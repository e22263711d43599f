//! What every role serves with: binding, the HTTP/1.1 accept loop with its header-read timeout
//! and graceful shutdown, the routes every role answers, and the descriptor limit.

pub mod native;
pub mod socket;
pub mod tasks;

use crate::error::Error;
use crate::metrics::Metrics;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use native::{HeadError, Native};
use prometheus_client::encoding::prometheus_text;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tasks::Tasks;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub async fn bind(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// Adds what every role answers: `/healthz`, `/metrics`, and JSON errors for unknown routes and
/// methods.
pub fn finish(router: Router, metrics: Arc<Metrics>) -> Router {
    router
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
                    metrics.render(),
                )
            }),
        )
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
}

/// How a role's accept loop treats connections.
#[derive(Clone, Copy)]
pub struct Accepting {
    /// How long a connection may take to send a request's header.
    pub header_read_timeout: Duration,
    /// Socket options, set on each accepted socket before anything is read.
    pub tune: fn(&TcpStream),
    /// Connections that have neither upgraded nor become a long answer (an SSE viewer, served
    /// natively, which gives up its place with [`Pending::release`]) held at once. Past it, a new connection is closed at
    /// once, unanswered: a flood of them cannot use the descriptors that upgraded viewers, the
    /// upstream link and the connections already being served need.
    pub max_pending: usize,
}

/// hyper's read buffer may grow to this (its default is about 400 KiB): a request header and a
/// small body fit, and a connection that has not upgraded pins no more. A natively served
/// request's head may be as large.
const MAX_BUF_BYTES: usize = 16 * 1024;

/// Headers a request may have (hyper's default is 100); more is answered 431.
const MAX_HEADERS: usize = 32;

/// A connection's place among the pending ones ([`Accepting::max_pending`]), handed to a native
/// route ([`native::Handler`]) so that an answer that lasts (an SSE viewer) can give it up; a
/// connection hyper serves gives it up when it leaves hyper (upgraded, or closed).
#[derive(Clone)]
pub struct Pending(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Pending {
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Serves `app` on `listener` until `shutdown`, then closes every socket and waits for every task.
/// HTTP/1.1 only, as viewers and tiers speak it: hyper's automatic HTTP/2 detection first reads
/// the preface with no deadline, so a client trickling its first bytes would escape the
/// header-read timeout. See [`Accepting`] for what each connection is allowed. Requests `native`
/// claims are served on the raw socket instead ([`native`]), under the same header-read timeout
/// and limits.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    native: Option<Native>,
    tasks: Tasks,
    accepting: Accepting,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, max_pending = accepting.max_pending, "listening");
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(accepting.header_read_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .max_headers(MAX_HEADERS);
    let pending = Arc::new(Semaphore::new(accepting.max_pending));
    // Connections learn of shutdown here; the tracker is how the last is known.
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: the connections already held are served
                    // while this waits, and retrying at once would only spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            tracing::debug!("too many connections not yet upgraded; closing a new one");
            continue;
        };
        (accepting.tune)(&stream);
        let place = Pending(Arc::new(Mutex::new(Some(permit))));
        let router = app.clone();
        // Every answer but an upgrade closes its connection: hyper restarts the header-read
        // timeout for each request, so a client polling on one keep-alive connection (a health
        // check every few seconds) would keep its pending place forever, and enough of them
        // would leave none for a lower tier's link reconnecting, or for a viewer.
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // Who asks, for the per-client limits (the main publisher's `/register`).
            request.extensions_mut().insert(ConnectInfo(peer));
            let answer = router.clone().oneshot(request);
            async move {
                let mut response = answer.await?;
                if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        });
        let mut builder = builder.clone();
        let closing = closing.clone();
        let native = native.clone();
        let header_read_timeout = accepting.header_read_timeout;
        connections.spawn(async move {
            let deadline = Instant::now() + header_read_timeout;
            if let Some(native) = native {
                let claimed = tokio::select! {
                    claimed = tokio::time::timeout_at(deadline, native::claimed(&stream, native.claims)) => claimed,
                    () = closing.cancelled() => return,
                };
                match claimed {
                    Ok(Ok(false)) => {}
                    Ok(Ok(true)) => {
                        serve_native(stream, &native, deadline, place, &closing).await;
                        return;
                    }
                    // Closed, failed, or undecided for the whole header-read timeout: closed
                    // unanswered, as hyper does.
                    Ok(Err(_)) | Err(_) => return native::discard_peeked(&stream),
                }
                // The request's first bytes came out of its header-read timeout: hyper has the
                // rest, so that a trickling client is cut off when it would have been anyway.
                builder.header_read_timeout(deadline.saturating_duration_since(Instant::now()));
            }
            // Held while hyper has the connection: an upgraded one gives its place up as it
            // leaves hyper, when this task ends.
            let _place = place;
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = closing.cancelled() => {
                    // Answers the request in progress, if any, then closes.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // A client that vanished or timed out: nothing to answer.
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    // The router's state holds `Stop`s too: `tasks.stop` waits for it to go.
    drop((listener, app, native));
    // Sockets are told to close as soon as shutdown begins, while plain requests drain; upgraded
    // sockets have left hyper, which is what `tasks` is for.
    tasks.trigger();
    closing.cancel();
    connections.close();
    connections.wait().await;
    tasks.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Reads the head of a request `native` claimed, by `deadline`, and hands it over; a head that
/// is too large or malformed is answered as hyper answers it (but in JSON, like every error), and
/// one that does not come in time, or never whole, is closed unanswered.
async fn serve_native(
    stream: TcpStream,
    native: &Native,
    deadline: Instant,
    place: Pending,
    closing: &CancellationToken,
) {
    let head = tokio::select! {
        head = tokio::time::timeout_at(deadline, native::read_head(&stream, MAX_BUF_BYTES, MAX_HEADERS)) => head,
        () = closing.cancelled() => return,
    };
    let refusal = |status, message: &str| Error::Rejected {
        status,
        message: message.to_owned(),
    };
    let refused = match head {
        Ok(Ok(head)) => return (native.handler)(stream, head, place).await,
        Ok(Err(HeadError::TooLarge)) => refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request header is too large",
        ),
        Ok(Err(HeadError::Malformed)) => {
            refusal(StatusCode::BAD_REQUEST, "the request header is malformed")
        }
        Ok(Err(HeadError::Closed)) | Err(_) => return,
    };
    native::answer(stream, refused.into_response()).await;
}

/// How long the accept loop waits after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Sends every write at once on a socket accepted by a tier above subscribers, whose links carry
/// frames down. An epoch's frames (the epoch and its trend frames) are written one after another;
/// with Nagle's algorithm each after the first waits for the peer to acknowledge the one before,
/// and the peer delays that acknowledgement by up to 40 ms, at every tier.
pub fn nodelay(socket: &TcpStream) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "link socket options");
    }
}
