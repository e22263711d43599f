//! A minimal HTTP/1.1 client over a real socket (one request per connection), enough to drive
//! the gateway and the broadcaster exactly as any client would.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a whole exchange may take: far above any answer the tiers give on a loaded 2-core
/// machine (milliseconds), so only a hung server trips it, as an error rather than a hung test.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not the expected JSON: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub async fn get(addr: &str, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, None, b"").await
}

pub async fn post_json(addr: &str, path: &str, body: &str) -> std::io::Result<Response> {
    request(
        addr,
        "POST",
        path,
        Some("application/json"),
        body.as_bytes(),
    )
    .await
}

/// A JSON POST with extra header lines, e.g. `[("Idempotency-Key", "k1")]`.
pub async fn post_json_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Response> {
    let extra: String = (headers.iter())
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let stream = TcpStream::connect(addr).await?;
    let exchange = exchange_on(
        stream,
        addr,
        "POST",
        path,
        Some("application/json"),
        &extra,
        body.as_bytes(),
    );
    tokio::time::timeout(EXCHANGE_LIMIT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("POST {path} on {addr}: no complete answer in {EXCHANGE_LIMIT:?}"),
            )
        })?
}

/// One request on its own connection (`Connection: close`), read to the end; a chunked body
/// comes back de-chunked. An error when nothing listens, the answer is not HTTP, or the
/// exchange takes longer than 30 s.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Response> {
    tokio::time::timeout(
        EXCHANGE_LIMIT,
        exchange(addr, method, path, content_type, body),
    )
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{method} {path} on {addr}: no complete answer in {EXCHANGE_LIMIT:?}"),
        )
    })?
}

async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Response> {
    let stream = TcpStream::connect(addr).await?;
    exchange_on(stream, addr, method, path, content_type, "", body).await
}

/// [`request`] on a connection already made, to `addr`: one made inside a network namespace
/// ([`crate::netns::connect`]).
pub async fn request_on(
    stream: TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Response> {
    tokio::time::timeout(
        EXCHANGE_LIMIT,
        exchange_on(stream, addr, method, path, content_type, "", body),
    )
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{method} {path} on {addr}: no complete answer in {EXCHANGE_LIMIT:?}"),
        )
    })?
}

async fn exchange_on(
    mut stream: TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<Response> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(extra_headers);
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "unparseable response: {}",
            String::from_utf8_lossy(&raw)
        ))
    })
}

/// A whole response as read from a connection the server closed; `None` when it is not HTTP.
pub fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).ok()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_chunked_body_comes_back_whole() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n\
                    3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse(raw).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
        assert_eq!(r.header("x-a"), Some("b"));
    }
}
