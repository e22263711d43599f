//! The connection caps: a listener that accepts only while it holds a permit, as mini-redis's
//! server does, and at most `max_connections_per_ip` connections of one client IP. A connection
//! keeps its permit until it closes, so at the cap new clients wait in the kernel's listen
//! backlog instead of costing the process a file descriptor and memory; a client IP over its own
//! cap is answered 429 and closed at once, so one address cannot take every slot. A connection
//! whose answer waits longer than `write_timeout_ms` for the client to read is closed, so a
//! client that stops reading (hyper then stops reading its requests too) frees its slot.

use axum::serve::Listener;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// The key a client is counted under (connections, rate, budget share): its IPv4 address, or
/// the /64 of its IPv6 address, since a host is given a whole /64 and may use any address in
/// it. An IPv4-mapped IPv6 address is its IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
    }
}

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
    write_timeout: Duration,
}

impl CappedListener {
    pub fn new(
        inner: TcpListener,
        permits: Arc<Semaphore>,
        max_per_ip: usize,
        write_timeout: Duration,
    ) -> Self {
        CappedListener {
            inner,
            permits,
            per_ip: Arc::default(),
            max_per_ip,
            write_timeout,
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
            let ip = client_key(addr.ip());
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
                write_timeout: self.write_timeout,
                stalled: None,
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
    write_timeout: Duration,
    /// Armed when a write finds the socket buffer full, cleared by any write that goes through.
    /// Boxed: only a stalled connection pays for it.
    stalled: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
    _ip: IpSlot,
}

impl CappedStream {
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
        let write = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.paced(cx, write)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.paced(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flush = Pin::new(&mut self.stream).poll_flush(cx);
        self.paced(cx, flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::client_key;
    use std::net::IpAddr;

    #[test]
    fn ipv6_clients_are_keyed_per_64_and_ipv4_per_address() {
        let key = |s: &str| client_key(s.parse::<IpAddr>().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }
}
