//! One task per viewer connection, WebSocket or SSE. The fan-out writes frames straight into the
//! socket ([`crate::viewers::outlet`]); this task does the rest: it drains what the socket did not take at
//! once, answers and sends pings, reads what a WebSocket viewer says, and closes the connection
//! when the viewer leaves, stops reading, falls too far behind, its token expires, the subscriber
//! loses its upstream for too long, or the role shuts down.

use crate::metrics::Metrics;
use crate::server::native::half_close;
use crate::server::socket::{CLOSE_DEADLINE, WRITE_DEADLINE};
use crate::server::tasks::Stop;
use crate::viewers::outlet::{Outlet, SseWire, Standing, Wire, WsWire, HELD_RECHECK};
use crate::viewers::websocket::{close_code, FromViewer, Reader, Violation};
use bytes::Bytes;
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Idle viewers are pinged this often (Centrifugo's interval), which keeps proxies from timing out
/// the connection; a WebSocket viewer that answers nothing by the next ping is gone.
pub const PING_EVERY: Duration = Duration::from_secs(25);

/// How long a requested ping waits for a frame to ride along with before it goes out alone: a
/// live stream has one every 2 s, a quiet one none.
const PING_ALONE_AFTER: Duration = Duration::from_secs(5);

/// Viewers have nothing to say beyond pongs and Close; a larger message is refused.
pub const MAX_VIEWER_MESSAGE_BYTES: usize = 4096;

/// When a new viewer gets its first ping: somewhere in the first [`PING_EVERY`], each viewer at its
/// own offset. Viewers arrive in bursts (a stream starts, a subscriber dies and its viewers move),
/// and pinging every one of a burst in the same second would land a storm of pings and pongs on
/// whichever epoch is being written then. The offsets follow the golden ratio, so any run of
/// consecutive joiners spreads evenly over the interval.
fn first_ping() -> Duration {
    static JOINED: AtomicU64 = AtomicU64::new(0);
    const GOLDEN: f64 = 0.618_033_988_749_895;
    let n = JOINED.fetch_add(1, Ordering::Relaxed);
    let fraction = (n as f64 * GOLDEN).fract();
    // Never at once: a brand-new viewer has just proven it is there.
    PING_EVERY.mul_f64(fraction).max(Duration::from_secs(1))
}

/// What a viewer's socket reads between frames: a stack buffer, so an idle viewer holds none.
const READ_CHUNK: usize = 512;

/// A viewer's pings are answered at most this often: each pong is a write, and a viewer pinging
/// at line rate would otherwise take the worker its lane shares. Pings in between still prove
/// the viewer is there.
const PONG_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Closes the subscriber makes of many viewers at once (its upstream lost, tokens issued in one
/// burst expiring together) come at a random point of this window for each viewer, so that they
/// do not all register and reconnect in the same instant. Shutdown (1001) is not spread: it has
/// [`CLOSE_DEADLINE`] in all, and the viewers' own jittered backoff spreads their return.
pub const CLOSE_SPREAD: Duration = Duration::from_secs(5);

/// A uniformly random duration in `[0, window)`.
pub fn spread(window: Duration) -> Duration {
    window.mul_f64(fastrand::f64())
}

/// Why a viewer's connection ends, and so what it is told.
enum End {
    /// It sent Close (with this code, which a peer may send): it gets one back.
    ViewerClosed(Option<u16>),
    Violation(u16),
    TooSlow,
    /// The subscriber has had no upstream for [`UPSTREAM_LOST_AFTER`](crate::tiers::link::UPSTREAM_LOST_AFTER):
    /// the viewer should register again, and may land where frames still flow.
    UpstreamLost,
    /// Its token expired while it watched.
    TokenExpired,
    /// It took nothing for [`WRITE_DEADLINE`] or answered no ping.
    Silent,
    /// Its socket failed or closed under us: nothing more can be said.
    Dropped,
    Away,
}

impl End {
    /// The close code and reason the viewer is told, if it can still be told anything.
    fn farewell(&self) -> Option<(u16, &'static str)> {
        Some(match self {
            End::ViewerClosed(code) => (code.unwrap_or(close_code::NORMAL), ""),
            End::Violation(code) => (*code, ""),
            End::TooSlow => (close_code::TRY_AGAIN_LATER, TOO_SLOW),
            End::UpstreamLost => (close_code::SERVICE_RESTART, UPSTREAM_LOST),
            End::TokenExpired => (close_code::POLICY, TOKEN_EXPIRED),
            End::Away => (close_code::AWAY, "shutting down"),
            End::Silent | End::Dropped => return None,
        })
    }
}

/// The reasons in the Close frames (and SSE `closing` notices) a client acts on.
pub const TOO_SLOW: &str = "too slow; reconnect with since";
pub const UPSTREAM_LOST: &str = "upstream lost; register again";
pub const TOKEN_EXPIRED: &str = "token expired; register again";

/// What ends a viewer's connection from the subscriber's side.
pub struct Until {
    /// The role is shutting down.
    pub stop: Stop,
    /// `true` once the subscriber has been without its upstream for too long.
    pub upstream_lost: watch::Receiver<bool>,
    /// When the viewer's token expires (viewer tokens on).
    pub token_expires: Option<Instant>,
}

/// What this task hears from the viewer: a WebSocket's frames, or on SSE only that it left.
enum Incoming {
    Ws {
        socket: Arc<TcpStream>,
        reader: Reader,
        /// When the viewer's last ping was answered.
        ponged: Option<Instant>,
    },
    Sse(Arc<TcpStream>),
}

impl Incoming {
    /// The next thing the viewer said. Cancel-safe: what was read is kept in the reader.
    async fn next(&mut self) -> Result<FromViewer, End> {
        let (socket, reader, ponged) = match self {
            Incoming::Ws {
                socket,
                reader,
                ponged,
            } => (socket, reader, ponged),
            Incoming::Sse(socket) => return Err(left(socket).await),
        };
        loop {
            match reader.next_frame() {
                Ok(Some(FromViewer::Ping(pong))) => {
                    if ponged.is_some_and(|at| at.elapsed() < PONG_AT_MOST_EVERY) {
                        return Ok(FromViewer::Alive);
                    }
                    *ponged = Some(Instant::now());
                    return Ok(FromViewer::Ping(pong));
                }
                Ok(Some(heard)) => return Ok(heard),
                Ok(None) => {}
                Err(Violation(code)) => return Err(End::Violation(code)),
            }
            socket.readable().await.map_err(|_| End::Dropped)?;
            let mut chunk = [0u8; READ_CHUNK];
            match socket.try_read(&mut chunk) {
                Ok(0) => return Err(End::Dropped),
                Ok(n) => reader.extend(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::Dropped),
            }
        }
    }
}

/// Reads an SSE viewer's socket until the viewer closes it. It has nothing to say: whatever it
/// sends is dropped (a stack buffer at a time, so an idle viewer holds none).
async fn left(socket: &TcpStream) -> End {
    loop {
        if socket.readable().await.is_err() {
            return End::Dropped;
        }
        let mut chunk = [0u8; READ_CHUNK];
        match socket.try_read(&mut chunk) {
            Ok(0) => return End::Dropped,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return End::Dropped,
        }
    }
}

/// Serves a WebSocket viewer on its upgraded socket; `early` is what it sent after its request.
pub async fn serve_ws(
    socket: Arc<TcpStream>,
    early: Bytes,
    outlet: Arc<Outlet<WsWire>>,
    metrics: &Metrics,
    until: Until,
) {
    let mut reader = Reader::new(MAX_VIEWER_MESSAGE_BYTES);
    reader.extend(&early);
    // Usually a slice of hyper's whole read buffer, which it would keep alive.
    drop(early);
    let incoming = Incoming::Ws {
        socket: Arc::clone(&socket),
        reader,
        ponged: None,
    };
    let end = serve(&outlet, incoming, metrics, until).await;
    farewell_and_close(&outlet, end, metrics, Some(&socket)).await;
}

/// Serves an SSE viewer on its socket, the response's head already sent.
pub async fn serve_sse(
    socket: Arc<TcpStream>,
    outlet: Arc<Outlet<SseWire>>,
    metrics: &Metrics,
    until: Until,
) {
    let end = serve(&outlet, Incoming::Sse(Arc::clone(&socket)), metrics, until).await;
    // Closing the connection ends the response, the only close SSE has; a `closing` notice says
    // why before it. No half-close: an SSE viewer sends nothing that could be left unread (what
    // it did send has been read), so closing sends a FIN behind the notice, not a reset, and the
    // viewer's place is given back at once, as when hyper ended the response.
    farewell_and_close(&outlet, end, metrics, None).await;
}

/// Sends the farewell, if the viewer can still be told anything, and closes. On a WebSocket
/// (`socket`) a Close frame that went out is followed by a half-close and reading until the
/// viewer closes too: a socket closed with bytes unread (a ping, the viewer's own Close) is reset,
/// and a reset can make the viewer's stack throw away the Close frame it had not read yet.
async fn farewell_and_close<W: Wire>(
    outlet: &Outlet<W>,
    end: End,
    metrics: &Metrics,
    socket: Option<&TcpStream>,
) {
    let farewell = end.farewell();
    outlet.finish(farewell.map(|(code, reason)| W::farewell(code, reason)));
    // Bounded like every farewell: a peer that stopped reading would hold it forever.
    let drained =
        tokio::time::timeout(CLOSE_DEADLINE, poll_fn(|cx| outlet.poll_drain(cx, metrics))).await;
    if let (Some(socket), Some(_), Ok(Ok(()))) = (socket, farewell, drained) {
        let _ = tokio::time::timeout(CLOSE_DEADLINE, half_close(socket)).await;
    }
    outlet.close();
}

async fn serve<W: Wire>(
    outlet: &Outlet<W>,
    mut incoming: Incoming,
    metrics: &Metrics,
    until: Until,
) -> End {
    let Until {
        mut stop,
        mut upstream_lost,
        token_expires,
    } = until;
    let pongs = matches!(incoming, Incoming::Ws { .. });
    let mut next_ping = Instant::now() + first_ping();
    let mut awaiting_pong = false;
    let mut ping_alone_at = None;
    // When this viewer is closed for the lost upstream, unless the upstream is back by then.
    let mut upstream_lost_close_at: Option<Instant> = None;
    loop {
        match outlet.standing() {
            Standing::Open => {}
            Standing::TooSlow => {
                tracing::debug!("viewer too slow; closing");
                metrics.lag_close();
                return End::TooSlow;
            }
            Standing::Gone => return End::Dropped,
        }
        let busy_since = outlet.busy_since();
        let deadline = busy_since.map(|since| since + WRITE_DEADLINE);
        let closing_for_upstream = upstream_lost_close_at.is_some();
        // One timer for every deadline: each viewer's task is one allocation for the life of its
        // connection, and a timer per deadline made it several hundred bytes larger. A viewer
        // held back for staleness looks again shortly: its peer's acknowledgements wake nothing.
        let held_recheck = outlet.held().then(|| Instant::now() + HELD_RECHECK);
        let wake_at = [
            held_recheck,
            ping_alone_at,
            deadline,
            upstream_lost_close_at,
            token_expires,
        ]
        .into_iter()
        .flatten()
        .fold(next_ping, Instant::min);
        tokio::select! {
            drained = poll_fn(|cx| outlet.poll_drain(cx, metrics)), if busy_since.is_some() => {
                if let Err(e) = drained {
                    tracing::debug!(error = %e, "viewer dropped");
                    return End::Dropped;
                }
            }
            // The fan-out left something the socket did not take, or changed the standing.
            () = outlet.woken() => {}
            heard = incoming.next() => match heard {
                // Pongs, and anything else the viewer says, prove it is still there.
                Ok(FromViewer::Alive) => awaiting_pong = false,
                Ok(FromViewer::Ping(pong)) => {
                    awaiting_pong = false;
                    outlet.push_pong(pong);
                }
                Ok(FromViewer::Close(code)) => return End::ViewerClosed(code),
                Err(end) => return end,
            },
            () = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
                if due(token_expires) {
                    metrics.token_expiry_close();
                    return End::TokenExpired;
                }
                if due(upstream_lost_close_at) {
                    metrics.upstream_lost_close();
                    return End::UpstreamLost;
                }
                if due(deadline) {
                    tracing::debug!("viewer took no data for {WRITE_DEADLINE:?}; closing");
                    metrics.silent_close();
                    return End::Silent;
                }
                if next_ping <= now {
                    if awaiting_pong {
                        tracing::debug!("viewer stopped answering pings");
                        metrics.silent_close();
                        return End::Silent;
                    }
                    awaiting_pong = pongs;
                    outlet.request_ping();
                    ping_alone_at = Some(now + PING_ALONE_AFTER);
                    // A task starved past a whole period pings once, not twice in a row.
                    next_ping = now + PING_EVERY;
                }
                if due(ping_alone_at) {
                    outlet.ping_now();
                    ping_alone_at = None;
                }
            }
            Ok(_) = upstream_lost.wait_for(|lost| *lost != closing_for_upstream) => {
                upstream_lost_close_at =
                    (!closing_for_upstream).then(|| Instant::now() + spread(CLOSE_SPREAD));
            }
            () = stop.stopped() => return End::Away,
        }
    }
}
