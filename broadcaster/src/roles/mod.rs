//! The three roles, one per process, and what they share: settings, binding, the link route,
//! health, metrics, the JSON 404, and shutdown.

pub mod cluster;
pub mod main;
pub mod subscriber;

use crate::auth::TokenKey;
use crate::error::Error;
use crate::hub::Hub;
use crate::kafka::FrameSource;
use crate::link;
use crate::metrics::Metrics;
use crate::roster::Roster;
use crate::synthetic::Synthetic;
use crate::tasks::{Stop, Tasks};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::Request;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use emostream_protocol::config::BroadcasterConfig;
use emostream_protocol::Config;
use emostream_web::Page;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// tungstenite allocates its read buffer up front, 128 KiB by default; peers here send only small
/// heartbeats and pongs, and a subscriber holds many thousands of sockets.
const READ_BUFFER_BYTES: usize = 4096;

/// Frames read from Kafka but not yet in the hub. Frames arrive a few per second, so this only
/// fills while the ring is being refilled at start-up.
const FRAME_QUEUE: usize = 1024;

/// Which tier this process is (the binary's subcommand), and where it runs when that is not
/// (only) what the configuration says.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Role {
    /// The main publisher: reads emoji-epochs and emoji-trends, feeds the cluster publishers, and
    /// assigns viewers to subscribers.
    Main {
        /// Serve here instead of broadcaster.main.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        #[command(flatten)]
        synthetic: Option<Synthetic>,
    },
    /// A cluster publisher: a [[broadcaster.clusters]] entry by name, or any name with --listen,
    /// which joins at run time.
    Cluster {
        /// The cluster's name.
        #[arg(long)]
        name: String,
        /// Serve here instead of the configured address.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// The main publisher, instead of broadcaster.main.
        #[arg(long, value_name = "HOST:PORT")]
        upstream: Option<String>,
    },
    /// A subscriber: {cluster}-s{i}, the i-th (from 0) address in its cluster's subscribers, or
    /// any name with --listen and --upstream, which joins at run time.
    Subscriber {
        /// The subscriber's name.
        #[arg(long)]
        name: String,
        /// Serve here instead of the configured address.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// The cluster publisher, instead of the configured one.
        #[arg(long, value_name = "HOST:PORT")]
        upstream: Option<String>,
        /// Where viewers reach this subscriber [default: ws://{listen}]
        #[arg(long, value_name = "URL")]
        advertise: Option<String>,
    },
}

/// What every tier takes from `[broadcaster]`.
#[derive(Clone)]
pub struct Settings {
    pub ring_epochs: usize,
    /// Issues (main) and checks (subscribers) viewer tokens; `None`: viewers need none.
    pub tokens: Option<TokenKey>,
    /// Presented to the tier above and required from the tier below.
    pub link_secret: Option<String>,
    pub viewer_lag_budget_bytes: usize,
    /// A subscriber's threads, one fan-out lane each; 0: one per core.
    pub subscriber_threads: usize,
    /// The services the viewer page served by subscribers talks to: the gateway it posts taps
    /// to, the main publisher it registers with; `None`: subscribers serve no page.
    pub page: Option<Page>,
    /// Viewers a subscriber holds at most (already cut to its descriptor limit).
    pub max_viewers: usize,
    /// Distinct streams a subscriber's viewers may watch at once.
    pub max_streams: usize,
    /// How long a connection may take to send a request's header.
    pub header_read_timeout: Duration,
}

impl Settings {
    /// `descriptors`: this process's limit on open descriptors, which bounds `max_viewers`.
    pub fn from_config(config: &BroadcasterConfig, descriptors: usize) -> Self {
        let BroadcasterConfig {
            main: _,     // where the main publisher listens: placement, not a setting
            clusters: _, // the same
            ring_epochs,
            viewer_token_secret,
            viewer_token_ttl_s,
            link_secret,
            viewer_lag_budget_bytes,
            subscriber_threads,
            max_viewers,
            max_streams,
            header_read_timeout_ms,
        } = config;
        // A small limit (1024 is common) still leaves most of it to viewers.
        let reserved = BroadcasterConfig::RESERVED_DESCRIPTORS.min(descriptors / 4);
        let room = descriptors - reserved;
        let max_viewers = match *max_viewers {
            Some(wanted) if wanted > room => {
                tracing::warn!(
                    max_viewers = wanted,
                    descriptors,
                    "max_viewers is more than the descriptor limit allows; cut to {room}"
                );
                room
            }
            Some(wanted) => wanted,
            None => room,
        };
        Self {
            ring_epochs: *ring_epochs,
            tokens: viewer_token_secret
                .as_deref()
                .map(|secret| TokenKey::new(secret, Duration::from_secs(*viewer_token_ttl_s))),
            link_secret: link_secret.clone(),
            viewer_lag_budget_bytes: *viewer_lag_budget_bytes,
            subscriber_threads: *subscriber_threads,
            page: None,
            max_viewers,
            max_streams: *max_streams,
            header_read_timeout: Duration::from_millis(*header_read_timeout_ms),
        }
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit, and returns the limit
/// now in force. Every viewer is a descriptor, and the soft limit is often 1024 where the hard one
/// is far higher.
fn raise_descriptor_limit() -> usize {
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

/// Runs the launched role until `shutdown` resolves, then closes every socket and returns.
pub async fn run(
    config: Config,
    role: Role,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let broadcaster = &config.broadcaster;
    let settings = Settings {
        // The addresses the tiers themselves use: the main publisher's is the one cluster
        // publishers on other hosts connect to, so browsers can reach it too.
        page: Some(Page {
            gateway: format!("http://{}", config.gateway.listen),
            main: Some(format!("http://{}", broadcaster.main)),
        }),
        ..Settings::from_config(broadcaster, raise_descriptor_limit())
    };
    match role {
        Role::Main { listen, synthetic } => {
            let listener = bind(listen.as_deref().unwrap_or(&broadcaster.main)).await?;
            let (frames_tx, frames) = mpsc::channel(FRAME_QUEUE);
            let sources = match synthetic {
                Some(synthetic) => vec![tokio::spawn(synthetic.run(frames_tx))],
                None => {
                    let sources = FrameSource::all(&config.kafka, settings.ring_epochs)?
                        .map(|source| tokio::spawn(source.run(frames_tx.clone())));
                    // Only the sources hold senders, so the hub hears when both have ended.
                    drop(frames_tx);
                    sources.into()
                }
            };
            let served = main::main_publisher(listener, settings, frames, shutdown).await;
            for source in sources {
                source.abort();
                // Waiting for the abort drops the consumer, which leaves its broker sessions
                // cleanly.
                let _ = source.await;
            }
            served
        }
        Role::Cluster {
            name,
            listen,
            upstream,
        } => {
            let configured = broadcaster.clusters.iter().find(|c| c.name == name);
            let listen = match (listen, configured) {
                (Some(listen), _) => listen,
                (None, Some(c)) => c.listen.clone(),
                (None, None) => {
                    return Err(Error::Role(format!(
                        "no cluster named {name:?} in broadcaster.clusters; give --listen to join one at run time"
                    )))
                }
            };
            let listener = bind(&listen).await?;
            let main = upstream.unwrap_or_else(|| broadcaster.main.clone());
            cluster::cluster_publisher(listener, name, main, settings, shutdown).await
        }
        Role::Subscriber {
            name,
            listen,
            upstream,
            advertise,
        } => {
            let configured = broadcaster
                .clusters
                .iter()
                .flat_map(|c| {
                    c.subscribers
                        .iter()
                        .enumerate()
                        .map(move |(i, s)| (c, i, s))
                })
                .find(|(c, i, _)| format!("{}-s{i}", c.name) == name)
                .map(|(c, i, s)| (c.listen.clone(), s.clone(), c.advertise.get(i).cloned()));
            let (cluster, listen, configured_url) = match (upstream, listen, configured) {
                (Some(up), Some(listen), configured) => {
                    (up, listen, configured.and_then(|(_, _, url)| url))
                }
                (up, listen, Some((c, s, url))) => (up.unwrap_or(c), listen.unwrap_or(s), url),
                (_, _, None) => {
                    return Err(Error::Role(format!(
                        "no subscriber named {name:?}: subscribers are named {{cluster}}-s{{i}}, \
                         i counting from 0 in the cluster's subscribers list; give --listen and \
                         --upstream to join one at run time"
                    )))
                }
            };
            let listener = bind(&listen).await?;
            let url = advertise
                .or(configured_url)
                .unwrap_or_else(|| format!("ws://{listen}"));
            if unspecified(&url) {
                return Err(Error::Role(format!(
                    "subscriber {name} would tell viewers to connect to {url}, which is no host: \
                     give --advertise, or its URL in its cluster's advertise list in cluster.toml"
                )));
            }
            subscriber::subscriber(listener, name, cluster, url, settings, shutdown).await
        }
    }
}

/// Whether a `ws://` URL names the unspecified address (`0.0.0.0`, `[::]`): a place to listen
/// on, not to connect to.
fn unspecified(url: &str) -> bool {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_unspecified())
}

/// Refuses to serve a tier on an address other hosts can reach without the link secret: its
/// link route would take any lower tier, and a subscriber on such an address links to a tier
/// above it across the network, which needs the secret too.
pub fn require_link_secret(listener: &TcpListener, settings: &Settings) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: "the listener".into(),
        source,
    })?;
    let has_secret = settings
        .link_secret
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    if addr.ip().is_loopback() || has_secret {
        return Ok(());
    }
    Err(Error::Role(format!(
        "listening on {addr}, which is not a loopback address, needs broadcaster.link_secret \
         (or EMOSTREAM_BROADCASTER__LINK_SECRET): without it any host that reaches this port \
         could link to this tier"
    )))
}

async fn bind(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// Adds what every role answers: `/healthz`, `/metrics`, and JSON errors for unknown routes and
/// methods.
fn finish(router: Router, metrics: Arc<Metrics>) -> Router {
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
async fn serve(
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
fn nodelay(socket: &TcpStream) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "link socket options");
    }
}

/// Applies the small read buffer to an upgrade, and makes every write go out at once: frames are
/// written one flush at a time by their task, so tungstenite's 128 KiB write batching would only
/// hold bytes back.
fn lean(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER_BYTES).write_buffer_size(0)
}

/// The upper tier's side of every link.
#[derive(Clone)]
struct LinkState {
    hub: Arc<Hub>,
    roster: Arc<Roster>,
    metrics: Arc<Metrics>,
    secret: Option<String>,
    stop: Stop,
}

/// `GET /internal/link`, where the tier below connects.
fn link_routes(state: LinkState) -> Router {
    Router::new()
        .route(link::PATH, get(link_upgrade))
        .with_state(state)
}

async fn link_upgrade(
    State(s): State<LinkState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !link::authorized(s.secret.as_deref(), presented) {
        s.metrics.unauthorized();
        return Err(Error::Unauthorized(
            "this link needs the tiers' shared secret",
        ));
    }
    Ok(lean(ws?)
        .on_upgrade(move |socket| async move {
            link::serve_downstream(socket, &s.hub, &s.roster, &s.metrics, s.stop).await;
        })
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_viewers: Option<usize>) -> BroadcasterConfig {
        serde_json::from_value(serde_json::json!({
            "main": "127.0.0.1:9000",
            "clusters": [],
            "max_viewers": max_viewers,
        }))
        .unwrap()
    }

    #[test]
    fn max_viewers_stays_below_the_descriptor_limit() {
        let cases = [
            (None, 20_000, 18_976),
            (Some(50_000), 20_000, 18_976),
            (Some(100), 20_000, 100),
            (Some(1000), 1024, 768),
            (None, 4096, 3072),
            (None, 8192, 7168),
        ];
        for (wanted, descriptors, got) in cases {
            let settings = Settings::from_config(&config(wanted), descriptors);
            assert_eq!(settings.max_viewers, got, "{wanted:?} of {descriptors}");
        }
    }

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

    #[test]
    fn an_advertised_url_must_name_a_host() {
        for (url, unusable) in [
            ("ws://0.0.0.0:9011", true),
            ("ws://[::]:9011/", true),
            ("ws://127.0.0.1:9011", false),
            ("ws://10.77.0.3:9011", false),
            ("wss://viewers.example/s1", false),
            ("ws://host:9011", false),
        ] {
            assert_eq!(unspecified(url), unusable, "{url}");
        }
    }
}
