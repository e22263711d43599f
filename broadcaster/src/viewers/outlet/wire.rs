//! The two kinds of viewer connection: the bytes each sends, and how it writes to its peer.

use crate::hub::FrameData;
use crate::metrics::Conn;
use bytes::Bytes;
use emostream_protocol::wire::ViewerNotice;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// A kind of viewer connection: its bytes for each thing sent, and its socket.
pub trait Wire: Send + 'static {
    const CONN: Conn;
    /// The bytes that carry `frame`, made once per frame per tier.
    fn frame(frame: &FrameData) -> &Bytes;
    /// A notice to the viewer, made when it is sent (rarely: a lag, a gap, a farewell).
    fn notice(notice: &ViewerNotice) -> Bytes;
    /// What a viewer is told as the connection ends with `code`: a Close frame, or on SSE (which
    /// has no close of its own) a `closing` notice with the same code.
    fn farewell(code: u16, reason: &str) -> Bytes;
    fn ping() -> Bytes;
    /// Writes what the peer takes now of `bytes`, then of `then` (a ping riding along), in one
    /// write and without waiting: `Ok(0)` when it takes nothing.
    fn try_write(&mut self, bytes: &Bytes, then: Option<&Bytes>) -> io::Result<usize>;
    /// Ready once [`Wire::try_write`] may make progress.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A WebSocket viewer's socket, shared with its task, which reads from it.
pub struct WsWire {
    socket: Arc<TcpStream>,
    /// `socket`'s descriptor, kept here, beside the backlog's lock: the fan-out's write then
    /// touches no memory of the socket's own (tokio's registration), one less cold cache line
    /// per viewer per frame.
    fd: RawFd,
}

impl WsWire {
    pub fn new(socket: Arc<TcpStream>) -> Self {
        let fd = socket.as_raw_fd();
        Self { socket, fd }
    }
}

impl Wire for WsWire {
    const CONN: Conn = Conn::Ws;

    fn frame(frame: &FrameData) -> &Bytes {
        &frame.ws
    }

    fn notice(notice: &ViewerNotice) -> Bytes {
        crate::viewers::websocket::text(&notice_json(notice))
    }

    fn farewell(code: u16, reason: &str) -> Bytes {
        crate::viewers::websocket::close(code, reason)
    }

    fn ping() -> Bytes {
        crate::viewers::websocket::ping()
    }

    fn try_write(&mut self, bytes: &Bytes, then: Option<&Bytes>) -> io::Result<usize> {
        // SAFETY: `self.socket` owns the descriptor and outlives this borrow of it.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let raw = socket2::SockRef::from(&fd);
        // The socket is non-blocking, so a plain send is the same write tokio would make, minus
        // its readiness bookkeeping. Only when the socket is full does the write go through
        // tokio, so that tokio learns it is no longer writable and `poll_write_ready` waits for
        // it to drain. A ping riding along makes it one `sendmsg` of two slices, on the stack:
        // this runs once per viewer per frame.
        let written = match then {
            None => match raw.send(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.socket.try_write(bytes),
                other => other,
            },
            Some(then) => {
                let slices = [io::IoSlice::new(bytes), io::IoSlice::new(then)];
                match raw.send_vectored(&slices) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.socket.try_write_vectored(&slices)
                    }
                    other => other,
                }
            }
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            // A peer that has closed its end takes nothing more, ever.
            Ok(0) if !bytes.is_empty() => Err(io::ErrorKind::WriteZero.into()),
            other => other,
        }
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_write_ready(cx)
    }
}

/// An SSE viewer's response body: hyper takes one chunk at a time from the channel's single
/// slot, so a peer that stops reading backs up here, where it is conflated and budgeted like a
/// WebSocket viewer.
pub struct SseWire(pub futures_channel::mpsc::Sender<Bytes>);

impl Wire for SseWire {
    const CONN: Conn = Conn::Sse;

    fn frame(frame: &FrameData) -> &Bytes {
        &frame.sse
    }

    /// An event named by the notice's type, so an `EventSource` listens for it by name.
    fn notice(notice: &ViewerNotice) -> Bytes {
        let json = notice_json(notice);
        let kind = match notice {
            ViewerNotice::Lagged { .. } => "lagged",
            ViewerNotice::Gap { .. } => "gap",
            ViewerNotice::Closing { .. } => "closing",
        };
        format!("event: {kind}\ndata: {json}\n\n").into()
    }

    fn farewell(code: u16, reason: &str) -> Bytes {
        Self::notice(&ViewerNotice::Closing {
            code,
            reason: reason.to_owned(),
        })
    }

    /// A comment: browsers ignore it, proxies see traffic.
    fn ping() -> Bytes {
        Bytes::from_static(b": ping\n\n")
    }

    fn try_write(&mut self, bytes: &Bytes, then: Option<&Bytes>) -> io::Result<usize> {
        // One chunk, so that hyper writes both at once; a ping rides along every 25 s at most.
        let chunk = match then {
            None => Bytes::clone(bytes),
            Some(then) => [&bytes[..], &then[..]].concat().into(),
        };
        let len = chunk.len();
        match self.0.try_send(chunk) {
            Ok(()) => Ok(len),
            Err(e) if e.is_full() => Ok(0),
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0
            .poll_ready(cx)
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }
}

pub fn notice_json(notice: &ViewerNotice) -> String {
    serde_json::to_string(notice).expect("a ViewerNotice always serializes")
}
