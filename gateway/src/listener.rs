//! The connection caps: a listener that accepts only while it holds a permit, as mini-redis's
//! server does, and at most `max_connections_per_ip` connections of one client IP. A connection
//! keeps its permit until it closes, so at the cap new clients wait in the kernel's listen
//! backlog instead of costing the process a file descriptor and memory; a client IP over its own
//! cap is answered 429 and closed at once, so one address cannot take every slot. A connection
//! whose answer waits longer than `write_timeout_ms` for the client to read is closed, so a
//! client that stops reading (hyper then stops reading its requests too) frees its slot.

use axum::serve::Listener;
use emostream_protocol::client::{client_key, TrustedProxies};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// The answer written to a connection refused at accept, before closing it: the refusal shape
/// of every route. Written without waiting (it fits any socket buffer), so a client that does
/// not read cannot stall the accept loop.
const PER_IP_REFUSAL: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\ncontent-length: 55\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
{\"error\":\"too many open connections from this address\"}";

/// The caps every listener of the process shares: the connection permits and the per-IP
/// counts (a client's connections count against one cap whichever listener took them).
#[derive(Clone)]
pub struct Caps {
    permits: Arc<Semaphore>,
    open: Arc<AtomicUsize>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
    /// A load balancer's connections are its clients', not its own: no per-IP cap.
    trusted: Arc<TrustedProxies>,
    write_timeout: Duration,
}

impl Caps {
    pub fn new(
        permits: Arc<Semaphore>,
        open: Arc<AtomicUsize>,
        max_per_ip: usize,
        trusted: Arc<TrustedProxies>,
        write_timeout: Duration,
    ) -> Self {
        Caps {
            permits,
            open,
            per_ip: Arc::default(),
            max_per_ip,
            trusted,
            write_timeout,
        }
    }
}

pub struct CappedListener {
    inner: TcpListener,
    caps: Caps,
}

impl CappedListener {
    pub fn new(inner: TcpListener, caps: Caps) -> Self {
        CappedListener { inner, caps }
    }

    pub async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        let caps = &self.caps;
        loop {
            let permit = Arc::clone(&caps.permits)
                .acquire_owned()
                .await
                .expect("the connection semaphore is never closed");
            // TcpListener's own accept logs and retries errors such as EMFILE.
            let (stream, addr) = Listener::accept(&mut self.inner).await;
            let slot = if caps.trusted.contains(addr.ip()) {
                None
            } else {
                let ip = client_key(addr.ip());
                let mut per_ip = caps.per_ip.lock().expect("never poisoned");
                let open = per_ip.entry(ip).or_default();
                if *open >= caps.max_per_ip {
                    drop(per_ip);
                    let _ = stream.try_write(PER_IP_REFUSAL);
                    continue;
                }
                *open += 1;
                Some(IpSlot {
                    ip,
                    per_ip: Arc::clone(&caps.per_ip),
                })
            };
            // Answers are small and written whole; Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            caps.open.fetch_add(1, Ordering::Relaxed);
            let stream = CappedStream {
                stream,
                refusal: None,
                write_timeout: caps.write_timeout,
                stalled: None,
                _permit: Open {
                    _permit: permit,
                    open: Arc::clone(&caps.open),
                },
                _ip: slot,
            };
            return (stream, addr);
        }
    }
}

/// Descriptors kept back from connections, as the broadcaster keeps them from viewers
/// (`BroadcasterConfig::RESERVED_DESCRIPTORS`): the listener, the producer's and the start-up
/// admin client's broker sockets and wake-up pipes, the runtime's, the logs; a small limit
/// keeps a quarter instead.
const RESERVED_DESCRIPTORS: usize = 1024;

/// The connections `max_connections` allows within `descriptors` (the process's limit) and the
/// reserve: the listener accepts only while it holds one of these permits, so it never runs the
/// process out of descriptors, where each failed accept (EMFILE) would cost a second's pause.
pub fn connections_within(max_connections: usize, descriptors: usize) -> usize {
    let reserved = RESERVED_DESCRIPTORS.min(descriptors / 4);
    max_connections.min(descriptors - reserved).max(1)
}

/// The client's socket address, for the per-IP rate limit.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// One connection counted against its IP's cap until it closes.
struct IpSlot {
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().expect("never poisoned");
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open -= 1;
            // Forgotten at zero, so the map holds only addresses with a connection open.
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A connection and its share of the cap.
pub struct CappedStream {
    stream: TcpStream,
    /// The JSON answer written in place of hyper's own (empty-bodied) refusal of a request it
    /// could not parse, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
    write_timeout: Duration,
    /// Armed when a write finds the socket buffer full, cleared by any write that goes through.
    /// Boxed: only a stalled connection pays for it.
    stalled: Option<Pin<Box<Sleep>>>,
    _permit: Open,
    _ip: Option<IpSlot>,
}

/// A connection's permit, counted as open until it closes.
struct Open {
    _permit: OwnedSemaphorePermit,
    open: Arc<AtomicUsize>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// hyper answers a request it cannot parse itself, before any route sees it, with an empty
/// body (its `on_error`: 400 for a bad method, URI, version or header, 431 for a head past
/// `max_buf_size` or `max_headers`, 414 for a URI past its limit), and has no hook to change
/// that. Such an answer is recognised by its status line and `content-length: 0` (no route
/// answers these statuses without a body) and replaced with the refusal shape of every route.
fn json_refusal(head: &[u8]) -> Option<Vec<u8>> {
    let (status, error) = [
        (&b"HTTP/1.1 400 "[..], "malformed HTTP request"),
        (
            &b"HTTP/1.1 431 "[..],
            "request header too large (8 KiB and 32 fields at most)",
        ),
        (&b"HTTP/1.1 414 "[..], "request URI too long"),
    ]
    .into_iter()
    .find(|(line, _)| head.starts_with(line))?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let empty = head[..end]
        .split(|&b| b == b'\n')
        .any(|l| l.eq_ignore_ascii_case(b"content-length: 0\r"));
    if !empty {
        return None;
    }
    let reason = match &status[9..12] {
        b"400" => "Bad Request",
        b"431" => "Request Header Fields Too Large",
        _ => "URI Too Long",
    };
    let body = format!(r#"{{"error":"{error}"}}"#);
    Some(
        format!(
            "{}{reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            std::str::from_utf8(status).expect("ASCII"),
            body.len()
        )
        .into_bytes(),
    )
}

impl CappedStream {
    /// Writes what is left of a replaced refusal; ready once it is all written.
    fn write_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.refusal {
            if *written == answer.len() {
                break;
            }
            let write = Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]);
            match self.paced(cx, write) {
                Poll::Ready(Ok(n)) => {
                    if let Some((_, written)) = &mut self.refusal {
                        *written += n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// A write's outcome, or the write timeout's error once writes have been pending for
    /// `write_timeout`. The timer is polled with the write's waker, so hyper, waiting on the
    /// write, is woken to see the error.
    fn paced<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if write.is_ready() {
            self.stalled = None;
            return write;
        }
        let timeout = self.write_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client has not read its answers within write_timeout_ms",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.refusal.is_none() {
            if let Some(answer) = json_refusal(buf) {
                self.refusal = Some((answer, 0));
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let write = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.paced(cx, write)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.refusal.is_none() {
            // hyper's refusal has no body: its head is the one buffer.
            if let Some(answer) = bufs.first().and_then(|head| json_refusal(head)) {
                self.refusal = Some((answer, 0));
                return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
            }
        }
        let write = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.paced(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.write_refusal(cx))?;
        let flush = Pin::new(&mut self.stream).poll_flush(cx);
        self.paced(cx, flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.write_refusal(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{connections_within, json_refusal};

    #[test]
    fn connections_stay_below_the_descriptor_limit_with_a_reserve() {
        // (max_connections, descriptor limit, connections served)
        let cases = [
            (10_000, 1_048_576, 10_000),
            (10_000, 11_024, 10_000),
            (10_000, 11_023, 9_999),
            (10_000, 1024, 768),
            (10_000, 4096, 3072),
            (500, 1024, 500),
            (10_000, 8, 6),
            (10_000, 1, 1),
        ];
        for (wanted, descriptors, got) in cases {
            assert_eq!(
                connections_within(wanted, descriptors),
                got,
                "{wanted} within {descriptors}"
            );
        }
    }

    #[test]
    fn hypers_own_refusals_become_json_and_nothing_else_is_touched() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
            content-length: 0\r\ndate: Mon, 07 Dec 2026 13:00:00 GMT\r\n\r\n";
        assert_eq!(
            String::from_utf8(json_refusal(hyper_431).unwrap()).unwrap(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             content-length: 66\r\nconnection: close\r\n\r\n\
             {\"error\":\"request header too large (8 KiB and 32 fields at most)\"}"
        );
        let route_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
            content-length: 25\r\n\r\n{\"error\":\"bad\",\"x\":1}";
        assert_eq!(json_refusal(route_400), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(json_refusal(ok), None);
    }
}
