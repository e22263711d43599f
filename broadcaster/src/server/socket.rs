//! Writing to one socket under a deadline, for viewers and links alike.
//!
//! Every socket is written by its own task, so a slow peer can only stall itself; the deadline
//! is what frees that task (and its feed) once the peer has stopped reading altogether.

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};
use std::time::Duration;

/// A peer that has not taken one frame in this long is treated as gone (NATS uses 10 s too).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// At shutdown a peer gets this long to take its Close frame, so one stuck socket cannot hold
/// the process up.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// The Close frame a viewer or lower tier gets when this role shuts down.
pub fn going_away() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::AWAY,
        reason: Utf8Bytes::from_static("shutting down"),
    }))
}

/// The close a cluster publisher sends its subscribers when it has lost its own upstream: the
/// code viewers get for the same reason.
pub fn upstream_lost() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::RESTART,
        reason: Utf8Bytes::from_static("upstream lost"),
    }))
}

/// Why a write ended the connection.
#[derive(Debug)]
pub enum WriteFailed {
    Timeout,
    Closed(String),
}

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailed::Timeout => write!(f, "peer took no data for {WRITE_DEADLINE:?}"),
            WriteFailed::Closed(e) => write!(f, "socket closed: {e}"),
        }
    }
}

/// Sends one message and flushes it.
pub async fn send<S, M>(sink: &mut S, msg: M) -> Result<(), WriteFailed>
where
    S: Sink<M> + Unpin,
    S::Error: std::fmt::Display,
{
    send_all(sink, [msg]).await
}

/// Sends a farewell (a Close frame) under the short [`CLOSE_DEADLINE`]; the peer is being left
/// either way, so a failed or late farewell changes nothing.
pub async fn close<S, M>(sink: &mut S, msg: M)
where
    S: Sink<M> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_DEADLINE, sink.send(msg)).await;
}

/// Queues every message, then flushes once: one write for a whole replay instead of one per frame.
pub async fn send_all<S, M>(
    sink: &mut S,
    msgs: impl IntoIterator<Item = M>,
) -> Result<(), WriteFailed>
where
    S: Sink<M> + Unpin,
    S::Error: std::fmt::Display,
{
    let write = async {
        for msg in msgs {
            sink.feed(msg).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(WRITE_DEADLINE, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteFailed::Closed(e.to_string())),
        Err(_) => Err(WriteFailed::Timeout),
    }
}
