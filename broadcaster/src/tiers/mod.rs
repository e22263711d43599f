//! Both ends of the links between tiers: the upper tier's route where a lower tier connects,
//! the link itself (`link`), and which lower-tier members are alive (`roster`).

pub mod link;
pub mod roster;

use crate::error::Error;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::server::tasks::Stop;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use roster::Roster;
use std::sync::Arc;
use tokio::sync::watch;

/// tungstenite allocates its read buffer up front, 128 KiB by default; peers here send only small
/// heartbeats and pongs, and a subscriber holds many thousands of sockets.
const READ_BUFFER_BYTES: usize = 4096;

/// Applies the small read buffer to an upgrade, and makes every write go out at once: frames are
/// written one flush at a time by their task, so tungstenite's 128 KiB write batching would only
/// hold bytes back.
pub fn lean(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER_BYTES).write_buffer_size(0)
}

/// The upper tier's side of every link.
#[derive(Clone)]
pub struct LinkState {
    pub hub: Arc<Hub>,
    pub roster: Arc<Roster>,
    pub metrics: Arc<Metrics>,
    pub secret: Option<String>,
    pub stop: Stop,
    /// `true` while this tier's own upstream is lost (a cluster publisher's); `None` for the
    /// main publisher, which has none. Lower tiers are refused and cut while it is.
    pub upstream_lost: Option<watch::Receiver<bool>>,
}

/// `GET /internal/link`, where the tier below connects.
pub fn link_routes(state: LinkState) -> Router {
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
    let ws = ws?;
    if s.upstream_lost.as_ref().is_some_and(|lost| *lost.borrow()) {
        return Err(Error::Unavailable(
            "this tier has lost its own upstream; it serves no frames until it is back".into(),
        ));
    }
    Ok(lean(ws)
        .on_upgrade(move |socket| async move {
            link::serve_downstream(
                socket,
                &s.hub,
                &s.roster,
                &s.metrics,
                s.stop,
                s.upstream_lost,
            )
            .await;
        })
        .into_response())
}
