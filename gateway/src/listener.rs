//! The connection caps: a listener that accepts only while it holds a permit, as mini-redis's
//! server does, and at most `max_connections_per_ip` connections of one client IP. A connection
//! keeps its permit until it closes, so at the cap new clients wait in the kernel's listen
//! backlog instead of costing the process a file descriptor and memory; a client IP over its own
//! cap is answered 429 and closed at once, so one address cannot take every slot.

use axum::serve::Listener;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The answer written to a connection refused at accept, before closing it: the refusal shape
/// of every route. Written without waiting (it fits any socket buffer), so a client that does
/// not read cannot stall the accept loop.
const PER_IP_REFUSAL: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\ncontent-length: 55\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
{\"error\":\"too many open connections from this address\"}";

pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
}

impl CappedListener {
    pub fn new(inner: TcpListener, permits: Arc<Semaphore>, max_per_ip: usize) -> Self {
        CappedListener {
            inner,
            permits,
            per_ip: Arc::default(),
            max_per_ip,
        }
    }

    pub async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .expect("the connection semaphore is never closed");
            // TcpListener's own accept logs and retries errors such as EMFILE.
            let (stream, addr) = Listener::accept(&mut self.inner).await;
            let ip = addr.ip();
            {
                let mut per_ip = self.per_ip.lock().expect("never poisoned");
                let open = per_ip.entry(ip).or_default();
                if *open >= self.max_per_ip {
                    drop(per_ip);
                    let _ = stream.try_write(PER_IP_REFUSAL);
                    continue;
                }
                *open += 1;
            }
            // Answers are small and written whole; Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            let stream = CappedStream {
                stream,
                _permit: permit,
                _ip: IpSlot {
                    ip,
                    per_ip: Arc::clone(&self.per_ip),
                },
            };
            return (stream, addr);
        }
    }
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
    _permit: OwnedSemaphorePermit,
    _ip: IpSlot,
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
