//! The WebSocket link between two tiers, from both ends.
//!
//! Frames flow down, heartbeats ([`LinkUp`]) flow up. When a lower tier connects, the upper one
//! sends its whole ring and then every new frame; the lower tier feeds them all into its own hub,
//! whose dedupe drops what it already had. So a reconnect after any outage heals every gap the
//! ring still covers, with no request/response protocol at all.

use crate::hub::Hub;
use crate::roster::{LinkId, Roster, HEARTBEAT, SILENCE};
use crate::socket::{self, going_away, WriteFailed};
use crate::tasks::Stop;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use emostream_protocol::wire::LinkUp;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as ClientMessage;

/// The path every upper tier serves its lower tier on.
pub const PATH: &str = "/internal/link";

/// Reconnect backoff to the tier above: quick after a blip, at most 2 s after a long outage.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Serves one lower tier that connected to [`PATH`], until it leaves, falls silent for
/// [`SILENCE`], or the role shuts down. Whatever it reported is forgotten when this returns.
pub async fn serve_downstream(socket: WebSocket, hub: &Hub, roster: &Roster, mut stop: Stop) {
    let link = roster.open();
    let ended = downstream_session(socket, link, hub, roster, &mut stop).await;
    roster.close(link);
    tracing::info!(link, reason = %ended, "downstream link closed");
}

async fn downstream_session(
    socket: WebSocket,
    link: LinkId,
    hub: &Hub,
    roster: &Roster,
    stop: &mut Stop,
) -> Ended {
    let (mut tx, mut rx) = socket.split();
    let (ring, mut live) = hub.link();
    tracing::info!(link, frames = ring.len(), "downstream link open");
    if let Err(e) = socket::send_all(&mut tx, ring.into_iter().map(Message::Text)).await {
        return Ended::Write(e);
    }
    let mut last_heard = Instant::now();
    // The lower tier's heartbeats prove it alive; these pings let it tell the same of us while
    // no frames flow.
    let mut ping = tokio::time::interval(HEARTBEAT);
    loop {
        let written = tokio::select! {
            frame = live.recv() => match frame {
                Ok(text) => socket::send(&mut tx, Message::Text(text)).await,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(link, missed, "downstream link lagged; resending the ring");
                    socket::send_all(&mut tx, hub.ring().into_iter().map(Message::Text)).await
                }
                Err(RecvError::Closed) => return Ended::Stopped,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    match serde_json::from_str::<LinkUp>(&text) {
                        Ok(up) => roster.heard(link, up),
                        Err(e) => tracing::warn!(link, error = %e, "unreadable heartbeat"),
                    }
                    Ok(())
                }
                Some(Ok(Message::Close(_))) | None => return Ended::Closed,
                Some(Err(e)) => return Ended::Read(e.to_string()),
                Some(Ok(_)) => {
                    last_heard = Instant::now();
                    Ok(())
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE {
                    return Ended::Silent;
                }
                socket::send(&mut tx, Message::Ping(Bytes::new())).await
            }
            _ = stop.stopped() => {
                socket::close(&mut tx, going_away()).await;
                return Ended::Stopped;
            }
        };
        if let Err(e) = written {
            return Ended::Write(e);
        }
    }
}

/// Keeps a link to the upper tier at `url` (`ws://host:port/internal/link`) until shutdown:
/// frames from it go into `hub`, and every [`HEARTBEAT`] `heartbeat()` goes up.
pub async fn keep_upstream(url: String, hub: &Hub, heartbeat: impl Fn() -> LinkUp, mut stop: Stop) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            connected = tokio_tungstenite::connect_async(url.as_str()) => connected,
            _ = stop.stopped() => return,
        };
        match connected {
            Ok((socket, _)) => {
                tracing::info!(upstream = %url, "upstream link open");
                backoff = MIN_BACKOFF;
                match upstream_session(socket, hub, &heartbeat, &mut stop).await {
                    Ended::Stopped => return,
                    ended => {
                        tracing::warn!(upstream = %url, reason = %ended, "upstream link lost; reconnecting")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %url, error = %e, retry_in = ?backoff, "cannot reach upstream")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.stopped() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn upstream_session<S>(
    socket: S,
    hub: &Hub,
    heartbeat: &impl Fn() -> LinkUp,
    stop: &mut Stop,
) -> Ended
where
    S: futures_util::Sink<ClientMessage, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<ClientMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let mut last_heard = Instant::now();
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        let written = tokio::select! {
            msg = rx.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(ClientMessage::Text(text))) => {
                        // Validated as UTF-8 again, but not copied: the bytes stay the ones read.
                        match Utf8Bytes::try_from(Bytes::from(text)) {
                            Ok(text) => {
                                if let Err(e) = hub.publish(text) {
                                    tracing::warn!(error = %e, "upstream sent a frame without a stream and epoch");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "upstream sent invalid UTF-8"),
                        }
                        Ok(())
                    }
                    Some(Ok(ClientMessage::Close(_))) | None => return Ended::Closed,
                    Some(Err(e)) => return Ended::Read(e.to_string()),
                    // tungstenite answers pings by itself.
                    Some(Ok(_)) => Ok(()),
                }
            },
            _ = beat.tick() => {
                if last_heard.elapsed() > SILENCE {
                    return Ended::Silent;
                }
                let up = serde_json::to_string(&heartbeat()).expect("a LinkUp always serializes");
                socket::send(&mut tx, ClientMessage::text(up)).await
            }
            _ = stop.stopped() => {
                let _ = tokio::time::timeout(socket::CLOSE_DEADLINE, tx.close()).await;
                return Ended::Stopped;
            }
        };
        if let Err(e) = written {
            return Ended::Write(e);
        }
    }
}

/// Why a link session ended.
enum Ended {
    Stopped,
    Closed,
    Silent,
    Read(String),
    Write(WriteFailed),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Stopped => write!(f, "shutting down"),
            Ended::Closed => write!(f, "closed by the peer"),
            Ended::Silent => write!(f, "silent for {SILENCE:?}"),
            Ended::Read(e) => write!(f, "read failed: {e}"),
            Ended::Write(e) => write!(f, "{e}"),
        }
    }
}
