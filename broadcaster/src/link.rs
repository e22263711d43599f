//! The WebSocket link between two tiers, from both ends.
//!
//! Frames flow down; heartbeats ([`LinkUp`]) and subscriptions ([`Subscribe`]) flow up. The lower
//! tier's first message says what it wants: a subscriber sends a [`Subscribe`] naming the streams
//! its viewers watch, and gets only those; a cluster publisher sends its heartbeat, and gets every
//! stream. For each stream it starts to want, the upper tier sends that stream's ring and newest
//! trend frames, then [`Synced`]; after that, every new frame of it. `popular` trend frames are
//! about every stream, so every lower tier gets them. The lower tier feeds everything into its
//! own hub, whose dedupe drops what it already had, so a reconnect after any outage heals every
//! gap the ring still covers and brings every trend up to date.

use crate::auth;
use crate::hub::{Frame, Hub};
use crate::metrics::{Conn, Metrics};
use crate::roster::{LinkId, Roster, HEARTBEAT, SILENCE};
use crate::socket::{self, going_away, WriteFailed};
use crate::tasks::Stop;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use emostream_protocol::trends::ALL_STREAMS;
use emostream_protocol::wire::{LinkUp, Subscribe, Synced};
use futures_util::{Sink, SinkExt, StreamExt};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as ClientMessage;

/// The path every upper tier serves its lower tier on.
pub const PATH: &str = "/internal/link";

/// Reconnect backoff to the tier above: quick after a blip, at most 2 s after a long outage.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// [`Synced`] serialized by serde starts with its tag, so a lower tier can tell it from an epoch
/// frame without parsing every frame twice.
const SYNCED_PREFIX: &str = r#"{"type":"synced""#;

/// Which streams a lower tier gets.
enum Wants {
    /// Nothing yet: its first message has not come.
    Undeclared,
    /// Every stream (a cluster publisher).
    All,
    /// Only these, and the frames about all streams (a subscriber).
    Streams(HashSet<Arc<str>>),
}

impl Wants {
    fn includes(&self, frame: &Frame) -> bool {
        match self {
            Wants::Undeclared => false,
            Wants::All => true,
            Wants::Streams(streams) => {
                streams.contains(&frame.stream) || &*frame.stream == ALL_STREAMS
            }
        }
    }
}

/// Serves one lower tier that connected to [`PATH`], until it leaves, falls silent for
/// [`SILENCE`], or the role shuts down. Whatever it reported is forgotten when this returns.
pub async fn serve_downstream(
    socket: WebSocket,
    hub: &Hub,
    roster: &Roster,
    metrics: &Metrics,
    mut stop: Stop,
) {
    let _open = metrics.open(Conn::Link);
    let link = roster.open();
    let ended = downstream_session(socket, link, hub, roster, metrics, &mut stop).await;
    roster.close(link);
    tracing::info!(link, reason = %ended, "downstream link closed");
}

/// Sends `frames` and flushes once, counting each as delivered.
async fn send_frames<S>(
    tx: &mut S,
    frames: Vec<Frame>,
    metrics: &Metrics,
) -> Result<(), WriteFailed>
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    // Collected before the await: an iterator with a closure over `&Frame` held across it trips
    // rustc's higher-ranked `Send` check for the spawned task.
    let mut texts = Vec::with_capacity(frames.len());
    for f in &frames {
        texts.push(Message::Text(f.text.clone()));
    }
    socket::send_all(tx, texts).await?;
    for f in &frames {
        metrics.sent(Conn::Link, f.text.len(), f.at.elapsed());
    }
    Ok(())
}

async fn downstream_session(
    socket: WebSocket,
    link: LinkId,
    hub: &Hub,
    roster: &Roster,
    metrics: &Metrics,
    stop: &mut Stop,
) -> Ended {
    let (mut tx, mut rx) = socket.split();
    // Subscribed before anything is sent, so that a frame published while a ring is on its way
    // comes after it here (and is dropped there if the ring had it already).
    let mut live = hub.link();
    let mut wants = Wants::Undeclared;
    tracing::info!(link, "downstream link open");
    let mut last_heard = Instant::now();
    // The lower tier's heartbeats prove it alive; these pings let it tell the same of us while
    // no frames flow.
    let mut ping = tokio::time::interval(HEARTBEAT);
    loop {
        let written = tokio::select! {
            frame = live.recv() => match frame {
                Ok(frame) if wants.includes(&frame) => send_frames(&mut tx, vec![frame], metrics).await,
                Ok(_) => Ok(()),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(link, missed, "downstream link lagged; resending the rings and trends");
                    let backlog = hub.backlog().into_iter().filter(|f| wants.includes(f)).collect();
                    send_frames(&mut tx, backlog, metrics).await
                }
                Err(RecvError::Closed) => return Ended::Stopped,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    heard(&text, link, hub, roster, metrics, &mut wants, &mut tx).await
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

/// One message from the lower tier: a heartbeat or a subscription.
async fn heard<S>(
    text: &str,
    link: LinkId,
    hub: &Hub,
    roster: &Roster,
    metrics: &Metrics,
    wants: &mut Wants,
    tx: &mut S,
) -> Result<(), WriteFailed>
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    if let Ok(Subscribe { streams }) = serde_json::from_str::<Subscribe>(text) {
        let streams: HashSet<Arc<str>> = streams.into_iter().map(Arc::from).collect();
        let added: Vec<Arc<str>> = match wants {
            Wants::Streams(had) => streams.difference(had).cloned().collect(),
            Wants::Undeclared | Wants::All => streams.iter().cloned().collect(),
        };
        tracing::debug!(
            link,
            streams = streams.len(),
            added = added.len(),
            "subscription"
        );
        *wants = Wants::Streams(streams);
        for stream in added {
            send_frames(tx, hub.backlog_of(&stream), metrics).await?;
            let synced = serde_json::to_string(&Synced {
                stream: stream.to_string(),
            })
            .expect("a Synced always serializes");
            socket::send(tx, Message::Text(synced.into())).await?;
        }
        return Ok(());
    }
    match serde_json::from_str::<LinkUp>(text) {
        Ok(up) => {
            roster.heard(link, up);
            if matches!(wants, Wants::Undeclared) {
                // A heartbeat first: a cluster publisher, which takes every stream.
                *wants = Wants::All;
                return send_frames(tx, hub.backlog(), metrics).await;
            }
        }
        Err(e) => tracing::warn!(link, error = %e, "unreadable message from a lower tier"),
    }
    Ok(())
}

/// How a lower tier reaches the one above it.
pub struct Upstream {
    /// `ws://host:port/internal/link`.
    pub url: String,
    /// Presented as `Authorization: Bearer`.
    pub secret: Option<String>,
    /// Whether to subscribe to the streams the hub's viewers watch (a subscriber) or take every
    /// stream (a cluster publisher).
    pub subscribe: bool,
}

/// Keeps a link to the upper tier until shutdown: frames from it go into `hub`, and every
/// [`HEARTBEAT`] `heartbeat()` goes up.
pub async fn keep_upstream(
    upstream: Upstream,
    hub: &Hub,
    metrics: &Metrics,
    heartbeat: impl Fn() -> LinkUp,
    mut stop: Stop,
) {
    let url = upstream.url.as_str();
    let mut backoff = MIN_BACKOFF;
    loop {
        let request = match link_request(&upstream) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(upstream = %url, error = %e, "cannot build the link request");
                return;
            }
        };
        let connected = tokio::select! {
            connected = tokio_tungstenite::connect_async(request) => connected,
            _ = stop.stopped() => return,
        };
        match connected {
            Ok((socket, _)) => {
                tracing::info!(upstream = %url, "upstream link open");
                backoff = MIN_BACKOFF;
                // The tier above syncs every wanted stream again on this link.
                hub.unsync_all();
                let session = upstream_session(
                    socket,
                    hub,
                    metrics,
                    upstream.subscribe,
                    &heartbeat,
                    &mut stop,
                );
                match session.await {
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

fn link_request(
    upstream: &Upstream,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::client::Request,
    tokio_tungstenite::tungstenite::Error,
> {
    let mut request = upstream.url.as_str().into_client_request()?;
    if let Some(secret) = &upstream.secret {
        let value = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|e| tokio_tungstenite::tungstenite::Error::HttpFormat(e.into()))?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A [`Subscribe`] for `streams`, as sent up.
fn subscription(streams: &[String]) -> ClientMessage {
    let text = serde_json::to_string(&Subscribe {
        streams: streams.to_vec(),
    })
    .expect("a Subscribe always serializes");
    ClientMessage::text(text)
}

async fn upstream_session<S>(
    socket: S,
    hub: &Hub,
    metrics: &Metrics,
    subscribe: bool,
    heartbeat: &impl Fn() -> LinkUp,
    stop: &mut Stop,
) -> Ended
where
    S: futures_util::Sink<ClientMessage, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<ClientMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let mut wanted = hub.wanted();
    // First message: what this tier wants (see the module docs).
    if subscribe {
        let first = subscription(&wanted.borrow_and_update());
        if let Err(e) = socket::send(&mut tx, first).await {
            return Ended::Write(e);
        }
    }
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
                            Ok(text) => from_upstream(text, hub, metrics),
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
            changed = wanted.changed(), if subscribe => {
                if changed.is_err() {
                    return Ended::Stopped;
                }
                let streams = wanted.borrow_and_update().clone();
                socket::send(&mut tx, subscription(&streams)).await
            }
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

fn from_upstream(text: Utf8Bytes, hub: &Hub, metrics: &Metrics) {
    if text.starts_with(SYNCED_PREFIX) {
        match serde_json::from_str::<Synced>(&text) {
            Ok(Synced { stream }) => hub.mark_synced(&stream),
            Err(e) => tracing::warn!(error = %e, "unreadable synced notice"),
        }
        return;
    }
    match hub.publish(text) {
        Ok(true) => metrics.frame_in(),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "upstream sent a frame without a stream and epoch"),
    }
}

/// Whether a link upgrade presented the shared secret (or none is required).
pub fn authorized(secret: Option<&str>, authorization: Option<&str>) -> bool {
    secret.is_none_or(|secret| {
        auth::link_secret_matches(secret, authorization.and_then(auth::bearer))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_notices_start_with_their_tag() {
        let text = serde_json::to_string(&Synced {
            stream: "main".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"synced","stream":"main"}"#);
        assert!(text.starts_with(SYNCED_PREFIX));
        let sub = serde_json::to_string(&Subscribe {
            streams: vec!["a".into()],
        })
        .unwrap();
        assert_eq!(sub, r#"{"type":"subscribe","streams":["a"]}"#);
        // A heartbeat is not a subscription.
        let beat = r#"{"type":"subscriber","name":"s","url":"ws://x","viewers":0}"#;
        assert!(serde_json::from_str::<Subscribe>(beat).is_err());
    }
}
