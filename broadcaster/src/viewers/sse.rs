//! SSE viewers on the raw socket. The accept loop hands over a connection whose request line is
//! `GET /v1/streams/{stream}/sse` ([`claims`]) before hyper sees it
//! ([`crate::server::native`]); the subscriber answers it with [`response_head`] and the events
//! follow straight from the fan-out ([`crate::viewers::outlet::SseWire`]), as a WebSocket's
//! frames do.
//!
//! The body is delimited by the connection's close (RFC 9112 6.3: no `Content-Length`, no
//! chunking, `Connection: close`), which `EventSource` reads like any other: every event is
//! then the bytes every viewer of the stream shares, written as they are. Chunked encoding would
//! put a size line of each write's own before it.

use std::time::Duration;

const PREFIX: &[u8] = b"GET /v1/streams/";
const SUFFIX: &[u8] = b"/sse";

/// Whether the request that starts with `start` is an SSE viewer's: `GET /v1/streams/`, a
/// non-empty path segment, `/sse`, then the query or the end of the path. `None` while `start`
/// is a prefix of one. Whatever else the path is, hyper answers, as before.
pub fn claims(start: &[u8]) -> Option<bool> {
    let n = start.len().min(PREFIX.len());
    if start[..n] != PREFIX[..n] {
        return Some(false);
    }
    let rest = start.get(PREFIX.len()..)?;
    let end = rest.iter().position(|b| matches!(b, b'/' | b' ' | b'?'))?;
    if end == 0 || rest[end] != b'/' {
        return Some(false);
    }
    let tail = &rest[end..];
    let n = tail.len().min(SUFFIX.len());
    if tail[..n] != SUFFIX[..n] {
        return Some(false);
    }
    Some(matches!(tail.get(SUFFIX.len())?, b' ' | b'?'))
}

/// The stream a claimed request's path names, percent-decoded as axum decodes a path parameter;
/// `None` if it is not UTF-8 then.
pub fn stream_of(path: &str) -> Option<String> {
    let segment = path
        .strip_prefix("/v1/streams/")
        .and_then(|rest| rest.strip_suffix("/sse"))?;
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(String::from)
}

/// The answer's head and its first event, the viewer's own reconnection delay (`retry:`).
pub fn response_head(retry: Duration) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         connection: close\r\n\r\nretry: {}\n\n",
        retry.as_millis()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_sse_request_line_is_claimed_and_each_is_decided_as_soon_as_it_can_be() {
        let line = b"GET /v1/streams/main/sse?since=3 HTTP/1.1\r\n";
        let decided_at = "GET /v1/streams/main/sse?".len();
        for n in 0..decided_at {
            assert_eq!(claims(&line[..n]), None, "{n}");
        }
        assert_eq!(claims(&line[..decided_at]), Some(true));
        assert_eq!(claims(b"GET /v1/streams/main/sse HTTP/1.1"), Some(true));
        for other in [
            &b"GET /v1/streams/main/ws "[..],
            b"GET /v1/streams/main/sse/ ",
            b"GET /v1/streams/main/sses ",
            b"GET /v1/streams//sse ",
            b"GET /v1/streams/main ",
            b"GET /healthz ",
            b"POST /v1/streams/main/sse ",
            b"HEAD /v1/streams/main/sse ",
            b"G\r\n",
        ] {
            assert_eq!(
                claims(other),
                Some(false),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn the_stream_is_percent_decoded() {
        assert_eq!(stream_of("/v1/streams/ma%69n/sse").as_deref(), Some("main"));
        assert_eq!(stream_of("/v1/streams/%ff/sse"), None);
    }
}
