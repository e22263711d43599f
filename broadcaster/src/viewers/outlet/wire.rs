//! The two kinds of viewer connection, WebSocket and SSE: the bytes each sends. Both write to
//! the raw socket the same way.

use super::backlog::MAX_PARTS;
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
    /// Writes what the peer takes now of `parts` one after another, the first from `offset` on
    /// (the rest of a partly written item), in one write and without waiting: `Ok(0)` when it
    /// takes nothing.
    fn try_write<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a Bytes>,
        offset: usize,
    ) -> io::Result<usize>;
    /// Bytes the kernel has taken that the peer has not acknowledged yet, unsent ones included;
    /// `None` if the kernel would not say.
    fn unacknowledged(&self) -> Option<usize>;
    /// Ready once [`Wire::try_write`] may make progress.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A viewer's socket, shared with its task, which reads from it: the fan-out writes the bytes
/// every viewer shares straight into it, whatever the protocol on top.
struct Socket {
    socket: Arc<TcpStream>,
    /// `socket`'s descriptor, kept here, beside the backlog's lock: the fan-out's write then
    /// touches no memory of the socket's own (tokio's registration), one less cold cache line
    /// per viewer per frame.
    fd: RawFd,
}

impl Socket {
    fn new(socket: Arc<TcpStream>) -> Self {
        let fd = socket.as_raw_fd();
        Self { socket, fd }
    }

    fn try_write<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a Bytes>,
        offset: usize,
    ) -> io::Result<usize> {
        let mut slices = [io::IoSlice::new(&[]); MAX_PARTS];
        let mut n = 0;
        for (slice, part) in slices.iter_mut().zip(parts) {
            *slice = io::IoSlice::new(if n == 0 { &part[offset..] } else { part });
            n += 1;
        }
        let slices = &slices[..n];
        // SAFETY: `self.socket` owns the descriptor and outlives this borrow of it.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let raw = socket2::SockRef::from(&fd);
        // The socket is non-blocking, so a plain sendmsg is the same write tokio would make,
        // minus its readiness bookkeeping; the slices point at bytes shared by every viewer. Only
        // when the socket is full does the write go through tokio, so that tokio learns it is no
        // longer writable and `poll_write_ready` waits for it to drain.
        let written = match raw.send_vectored_with_flags(slices, libc::MSG_NOSIGNAL) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.socket.try_write_vectored(slices)
            }
            other => other,
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            // A peer that has closed its end takes nothing more, ever.
            Ok(0) if slices.iter().any(|s| !s.is_empty()) => Err(io::ErrorKind::WriteZero.into()),
            other => other,
        }
    }

    fn unacknowledged(&self) -> Option<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int, the socket's bytes not yet acknowledged by
        // the peer; `self.socket` owns the descriptor.
        let done = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut queued) };
        (done == 0).then(|| usize::try_from(queued).unwrap_or(0))
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_write_ready(cx)
    }
}

/// A WebSocket viewer's socket, taken from hyper at the upgrade.
pub struct WsWire(Socket);

impl WsWire {
    pub fn new(socket: Arc<TcpStream>) -> Self {
        Self(Socket::new(socket))
    }
}

impl Wire for WsWire {
    const CONN: Conn = Conn::Ws;

    fn frame(frame: &FrameData) -> &Bytes {
        frame.ws()
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

    fn try_write<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a Bytes>,
        offset: usize,
    ) -> io::Result<usize> {
        self.0.try_write(parts, offset)
    }

    fn unacknowledged(&self) -> Option<usize> {
        self.0.unacknowledged()
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_write_ready(cx)
    }
}

/// An SSE viewer's socket, never given to hyper ([`crate::viewers::sse`]): after the response
/// head, whose body lasts until the connection closes, events go into it as they are, like a
/// WebSocket's frames.
pub struct SseWire(Socket);

impl SseWire {
    pub fn new(socket: Arc<TcpStream>) -> Self {
        Self(Socket::new(socket))
    }
}

impl Wire for SseWire {
    const CONN: Conn = Conn::Sse;

    fn frame(frame: &FrameData) -> &Bytes {
        frame.sse()
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

    fn try_write<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a Bytes>,
        offset: usize,
    ) -> io::Result<usize> {
        self.0.try_write(parts, offset)
    }

    fn unacknowledged(&self) -> Option<usize> {
        self.0.unacknowledged()
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_write_ready(cx)
    }
}

pub fn notice_json(notice: &ViewerNotice) -> String {
    serde_json::to_string(notice).expect("a ViewerNotice always serializes")
}
