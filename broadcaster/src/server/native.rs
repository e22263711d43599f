//! A route a role serves on the raw socket, without hyper: the accept loop peeks at a new
//! connection's first bytes and, if they are the route's request line, reads the request's head
//! itself and hands the socket over; anything else goes to hyper untouched.
//!
//! For a connection that lasts (an SSE viewer) hyper keeps about 16 KiB of buffers for its life
//! (its read buffer and its header buffer start at 8 KiB each and cannot be made smaller), a
//! connection task, and a body channel that wakes that task for every frame. A socket served
//! here costs what an upgraded WebSocket costs.

use super::Pending;
use crate::server::socket::CLOSE_DEADLINE;
use axum::body::Body;
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Version};
use futures_util::future::BoxFuture;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The start of a request a [`Native::claims`] looks at: request lines it claims are shorter
/// (stream ids are at most 64 bytes), and one that runs past this without being decided goes to
/// hyper.
pub const PEEK_BYTES: usize = 1024;

/// What a native route does with a request it claimed: answer it on `socket`, which is its own
/// from now on. The connection stays among the pending ones until the route releases `pending`
/// or the future ends; a lasting answer spawns a task of its own and releases it.
pub type Handler = Arc<dyn Fn(TcpStream, Parts, Pending) -> BoxFuture<'static, ()> + Send + Sync>;

/// A route served on the raw socket.
#[derive(Clone)]
pub struct Native {
    /// Whether the request that starts with these bytes is the route's; `None` while it cannot
    /// tell yet.
    pub claims: fn(&[u8]) -> Option<bool>,
    pub handler: Handler,
}

/// Why a request's head could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The peer closed, or the socket failed: there is no one to answer.
    Closed,
    /// More than `max_bytes` or `max_headers` fields: hyper answers that 431.
    TooLarge,
    /// Not an HTTP/1.x request head: hyper answers that 400.
    Malformed,
}

/// Waits until `claims` can tell whether the request on `socket` is the route's, looking at its
/// first bytes without taking them, so hyper gets the connection untouched otherwise. `Err`: the
/// peer closed before saying anything decisive, or the socket failed.
pub async fn claimed(socket: &TcpStream, claims: fn(&[u8]) -> Option<bool>) -> io::Result<bool> {
    let mut start = [0u8; PEEK_BYTES];
    loop {
        socket.readable().await?;
        // Peeking leaves the bytes in the socket, so the socket stays readable: when they do not
        // decide yet, `WouldBlock` clears tokio's readiness so that the next wait is for more
        // bytes, not a spin. The peek runs inside `try_io`, so bytes that arrive during it keep
        // the socket readable rather than being cleared unseen.
        let decided = socket.try_io(Interest::READABLE, || {
            let n = peek(socket, &mut start)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match claims(&start[..n]) {
                Some(claimed) => Ok(claimed),
                None if n == start.len() => Ok(false),
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
        match decided {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Takes the bytes [`claimed`] only looked at, so that closing the socket sends a FIN: a socket
/// closed with bytes unread is reset, which the peer may see as an error rather than a close.
pub fn discard_peeked(socket: &TcpStream) {
    let mut start = [0u8; PEEK_BYTES];
    // Past tokio: [`claimed`] left its readiness cleared, and `try_read` would not even try.
    let _ = recv(socket, &mut start, libc::MSG_DONTWAIT);
}

fn peek(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    recv(socket, buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

fn recv(socket: &TcpStream, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; `socket` owns the descriptor.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Reads a request's head from `socket`, at most `max_bytes` of it with at most `max_headers`
/// fields (hyper's limits for every other request). Bytes after the head may be read too; the
/// caller has no use for a request body.
pub async fn read_head(
    socket: &TcpStream,
    max_bytes: usize,
    max_headers: usize,
) -> Result<Parts, HeadError> {
    let mut head = Vec::new();
    // Grown by what arrives, so a short head (all of them, in practice) holds little.
    let mut chunk = [0u8; 1024];
    loop {
        socket.readable().await.map_err(|_| HeadError::Closed)?;
        let room = (max_bytes - head.len()).min(chunk.len());
        match socket.try_read(&mut chunk[..room]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(HeadError::Closed),
        }
        let mut fields = vec![httparse::EMPTY_HEADER; max_headers];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => return parts(&request),
            Ok(httparse::Status::Partial) if head.len() == max_bytes => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

fn parts(request: &httparse::Request<'_, '_>) -> Result<Parts, HeadError> {
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed)?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(request.path.unwrap_or_default())
        .version(version);
    for field in request.headers.iter() {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| HeadError::Malformed)?;
        builder = builder.header(name, value);
    }
    let request = builder.body(()).map_err(|_| HeadError::Malformed)?;
    Ok(request.into_parts().0)
}

/// Writes all of `bytes` to `socket`, however long the peer takes: callers bound it.
pub async fn write_all(socket: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Answers with `response` (an error's JSON, short) and closes, as hyper does with
/// `Connection: close`: the peer gets [`CLOSE_DEADLINE`] to take the answer and as long again to
/// close its side, so a flood of refused connections cannot hold descriptors.
pub async fn answer(socket: TcpStream, response: Response<Body>) {
    let (parts, body) = response.into_parts();
    // The bodies answered here are a line of JSON.
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name != CONNECTION && name != CONTENT_LENGTH {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
    }
    head.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    head.extend_from_slice(&body);
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_DEADLINE, write_all(&socket, &head)).await {
        let _ = tokio::time::timeout(CLOSE_DEADLINE, half_close(&socket)).await;
    }
}

/// Shuts the write half and discards what the peer sends until it closes its own: a socket
/// closed with bytes unread is reset, and a reset can make the peer's stack throw away the last
/// thing it was sent before it has read it.
pub async fn half_close(socket: &TcpStream) {
    if socket2::SockRef::from(socket)
        .shutdown(std::net::Shutdown::Write)
        .is_err()
    {
        return;
    }
    let mut chunk = [0u8; 512];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn starts_with_get(start: &[u8]) -> Option<bool> {
        let want = b"GET /x ";
        let n = start.len().min(want.len());
        if start[..n] != want[..n] {
            Some(false)
        } else {
            (n == want.len()).then_some(true)
        }
    }

    /// A request line that arrives a byte at a time is decided once its deciding byte is in,
    /// without taking any: what hyper would get is still in the socket.
    #[tokio::test]
    async fn a_peek_waits_for_the_deciding_bytes_and_takes_none() {
        let (mut client, server) = pair().await;
        let peeking = tokio::spawn(async move {
            let claimed = claimed(&server, starts_with_get).await.unwrap();
            (claimed, server)
        });
        for byte in b"GET /x HTTP/1.1\r\n\r\n" {
            client.write_all(&[*byte]).await.unwrap();
        }
        let (claimed, server) = peeking.await.unwrap();
        assert!(claimed);
        let head = read_head(&server, 1024, 4).await.unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri, "/x");
    }

    #[tokio::test]
    async fn another_request_is_not_claimed_and_a_closed_peer_is_an_error() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET /y").await.unwrap();
        assert!(!claimed(&server, starts_with_get).await.unwrap());
        let (client, server) = pair().await;
        drop(client);
        assert!(claimed(&server, starts_with_get).await.is_err());
    }

    #[tokio::test]
    async fn a_head_too_large_or_with_too_many_fields_or_malformed_is_refused() {
        let cases: [(&[u8], HeadError); 3] = [
            (b"GET /x HTTP/9.9\r\n\r\n", HeadError::Malformed),
            (
                b"GET /x HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
                HeadError::TooLarge,
            ),
            (
                b"GET /x HTTP/1.1\r\nA: 0123456789012345678901234567890123456789\r\n",
                HeadError::TooLarge,
            ),
        ];
        for (sent, want) in cases {
            let (mut client, server) = pair().await;
            client.write_all(sent).await.unwrap();
            assert_eq!(read_head(&server, 48, 2).await.unwrap_err(), want);
        }
    }
}
