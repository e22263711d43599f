//! What every role serves with: binding, the HTTP/1.1 accept loop with its header-read timeout
//! and graceful shutdown, the routes every role answers, and the descriptor limit.

pub mod socket;
pub mod tasks;

use crate::error::Error;
use crate::metrics::Metrics;
use axum::extract::Request;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tasks::Tasks;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// Raises this process's soft limit on open descriptors to its hard limit, and returns the limit
/// now in force. Every viewer is a descriptor, and the soft limit is often 1024 where the hard one
/// is far higher.
pub fn raise_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill and then to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

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

/// Serves `app` on `listener` until `shutdown`, then closes every socket and waits for every task.
/// HTTP/1.1 only, as viewers and tiers speak it: hyper's automatic HTTP/2 detection first reads
/// the preface with no deadline, so a client trickling its first bytes would escape the
/// header-read timeout. Each accepted socket goes through `tune` first; a connection that has
/// not sent a request's whole header within `header_read_timeout` is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tasks: Tasks,
    (header_read_timeout, tune): (Duration, fn(&TcpStream)),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let stopping = tasks.trigger();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // Connections learn of shutdown here, and their senders going is how the last is known.
    let (closing, closing_rx) = watch::channel(false);
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
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
        tune(&stream);
        let router = app.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            router.clone().oneshot(request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let (mut closing, open) = (closing_rx.clone(), open.clone());
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = async { closing.wait_for(|closing| *closing).await.map(|_| ()) } => {
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
    drop((listener, app, open));
    // Sockets are told to close as soon as shutdown begins, while plain requests drain; upgraded
    // sockets have left hyper, which is what `tasks` is for.
    stopping.send_replace(true);
    closing.send_replace(true);
    // Nothing is ever sent: `None` means the last connection is gone.
    let _ = all_closed.recv().await;
    tasks.stop().await;
    tracing::info!("stopped");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        let raised = raise_descriptor_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit for the call to fill.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(raised as u64, limit.rlim_cur);
    }
}
