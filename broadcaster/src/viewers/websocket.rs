//! The server side of RFC 6455 for viewers, kept to what a viewer connection needs: the opening
//! handshake handed off as the raw `TcpStream`, server frames encoded once and shared, and a
//! reader for what viewers send (pongs, pings, Close).
//!
//! Viewers do not go through axum's `WebSocket`: its socket sits behind a sink that one task must
//! drive, so every frame to every viewer cost a task wake-up, a poll of that task's whole select,
//! a lock between the socket's halves and an encoding pass. Owning the socket lets the fan-out
//! write a frame's shared bytes straight into each socket ([`crate::viewers::outlet`]); links between
//! tiers, a handful of sockets, still use axum's.

use crate::error::Error;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use emostream_protocol::websocket::{
    server_frame, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub use emostream_protocol::websocket::close_code;

/// Whether `key` is what RFC 6455 4.1 says a client sends: 16 random bytes in base64, which is
/// always 22 characters of the alphabet, the last one carrying 2 bits (so one of `AQgw`), and
/// `==`.
fn valid_key(key: &[u8]) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..21].iter().all(base64)
        && b"AQgw".contains(&key[21])
        && &key[22..] == b"=="
}

/// A valid WebSocket upgrade request, before the answer.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

fn reject(status: StatusCode, message: &str) -> Error {
    Error::Rejected {
        status,
        message: message.to_owned(),
    }
}

/// Whether a comma-separated header holds `token`, case-insensitively (`Connection: keep-alive,
/// Upgrade` is an upgrade).
fn has_token(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        if parts.method != Method::GET {
            return Err(reject(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET",
            ));
        }
        let headers = &parts.headers;
        if !has_token(headers.get(header::CONNECTION), "upgrade") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !has_token(headers.get(header::UPGRADE), "websocket") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ));
        };
        if !valid_key(key.as_bytes()) {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` is not 16 bytes in base64",
            ));
        }
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(reject(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        Ok(Self { accept, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and, once the client has the answer, runs `serve` with the connection's socket
    /// and any bytes the client sent after its request.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(TcpStream, Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            // Every role serves plain TCP through hyper's HTTP/1 connection (crate::roles).
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => serve(parts.io.into_inner(), parts.read_buf).await,
                Err(_) => tracing::warn!("an upgraded connection that is not a TCP socket"),
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, self.accept),
            ],
        )
            .into_response()
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    server_frame(opcode, payload).into()
}

/// A text frame: how an epoch or trend frame goes to every WebSocket viewer.
pub fn text(payload: &str) -> Bytes {
    frame(OP_TEXT, payload.as_bytes())
}

/// An empty ping, the same two bytes every time.
pub fn ping() -> Bytes {
    Bytes::from_static(&[0x80 | OP_PING, 0])
}

/// Control frames carry at most 125 bytes; a longer reason is cut.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    frame(OP_CLOSE, &payload)
}

fn pong(payload: &[u8]) -> Bytes {
    frame(OP_PONG, payload)
}

/// What a viewer sent, as far as the server cares.
#[derive(Debug, PartialEq, Eq)]
pub enum FromViewer {
    /// A ping: the answer to send.
    Ping(Bytes),
    /// The viewer is closing; its code, if it gave one.
    Close(Option<u16>),
    /// A pong: the viewer is alive, and that is all.
    Alive,
}

/// Why a viewer's connection has to be failed, as the Close code it gets.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation(pub u16);

/// Parses frames from a viewer out of what its socket has delivered so far.
pub struct Reader {
    buf: Vec<u8>,
    max_payload: usize,
}

impl Reader {
    pub fn new(max_payload: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_payload,
        }
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. A frame that breaks the rules fails as soon as
    /// its header has, without waiting for (or copying) its payload.
    pub fn next_frame(&mut self) -> Result<Option<FromViewer>, Violation> {
        let buf = &self.buf;
        let [b0, b1, ..] = *buf.as_slice() else {
            return Ok(None);
        };
        if b1 & 0x80 == 0 {
            // RFC 6455 5.1: a server must fail a connection whose client frames are unmasked.
            return Err(Violation(close_code::PROTOCOL));
        }
        let (len_bytes, len) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (2, u64::from(u16::from_be_bytes([buf[2], buf[3]]))),
            127 if buf.len() >= 10 => (8, u64::from_be_bytes(buf[2..10].try_into().expect("8"))),
            126 | 127 => return Ok(None),
            len => (0, u64::from(len)),
        };
        if len > self.max_payload as u64 {
            return Err(Violation(close_code::SIZE));
        }
        let opcode = b0 & 0x0f;
        let control = opcode & 0x8 != 0;
        // RSV1-3 mean an extension, and none was agreed (RFC 6455 5.2).
        if b0 & 0x70 != 0 || (control && (b0 & 0x80 == 0 || len > 125)) {
            return Err(Violation(close_code::PROTOCOL));
        }
        match opcode {
            OP_PING | OP_PONG | OP_CLOSE => {}
            // A viewer has nothing to say: data from one is refused rather than read and dropped.
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                return Err(Violation(close_code::UNSUPPORTED))
            }
            _ => return Err(Violation(close_code::PROTOCOL)),
        }
        let start = 2 + len_bytes + 4;
        let end = start + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        let mask: [u8; 4] = buf[start - 4..start].try_into().expect("4 bytes");
        let payload: Vec<u8> = buf[start..end]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        let got = match opcode {
            OP_PING => FromViewer::Ping(pong(&payload)),
            OP_CLOSE => FromViewer::Close(close_payload(&payload)?),
            _ => FromViewer::Alive,
        };
        self.buf.drain(..end);
        if self.buf.is_empty() {
            // An idle viewer keeps no buffer.
            self.buf = Vec::new();
        }
        Ok(Some(got))
    }
}

/// The code of a viewer's Close, checked so that only a code a peer may send is ever echoed
/// (RFC 6455 7.4): a one-byte payload, a reserved or unassigned code, or a reason that is not
/// UTF-8 fails the connection instead.
fn close_payload(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation(close_code::PROTOCOL)),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_sendable(code) {
                return Err(Violation(close_code::PROTOCOL));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation(close_code::INVALID_DATA));
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked as clients must.
    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![b0];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    #[test]
    fn control_frames_are_what_viewers_expect() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        assert_eq!(&ping()[..], [0x89, 0]);
        assert_eq!(&close(1001, "bye")[..], b"\x88\x05\x03\xe9bye");
        assert_eq!(close(1008, &"x".repeat(200)).len(), 2 + 125);
    }

    #[test]
    fn a_reader_takes_frames_as_they_arrive_in_pieces() {
        let mut reader = Reader::new(4096);
        let mut bytes = masked(0x89, b"abc");
        bytes.extend(masked(0x8A, b""));
        bytes.extend(masked(0x88, &1000u16.to_be_bytes()));
        let (first, rest) = bytes.split_at(3);
        reader.extend(first);
        assert_eq!(reader.next_frame(), Ok(None));
        reader.extend(rest);
        assert_eq!(
            reader.next_frame(),
            Ok(Some(FromViewer::Ping(pong(b"abc"))))
        );
        assert_eq!(reader.next_frame(), Ok(Some(FromViewer::Alive)));
        assert_eq!(reader.next_frame(), Ok(Some(FromViewer::Close(Some(1000)))));
        assert_eq!(reader.next_frame(), Ok(None));
        assert_eq!(reader.buf.capacity(), 0);
    }

    #[test]
    fn a_reader_fails_unmasked_oversized_and_unknown_frames() {
        let mut unmasked = Reader::new(4096);
        unmasked.extend(b"\x81\x02hi");
        assert_eq!(unmasked.next_frame(), Err(Violation(close_code::PROTOCOL)));

        let mut big = Reader::new(100);
        big.extend(&masked(0x81, &[b'x'; 101]));
        assert_eq!(big.next_frame(), Err(Violation(close_code::SIZE)));
        let mut fits = Reader::new(300);
        fits.extend(&masked(0x8A, &[b'x'; 125]));
        assert_eq!(fits.next_frame(), Ok(Some(FromViewer::Alive)));

        // Data frames fail at their header, whole or not, fragmented or not: 1003.
        for b0 in [0x81, 0x82, 0x01, 0x80] {
            let mut data = Reader::new(4096);
            data.extend(&masked(b0, b"hello")[..2]);
            assert_eq!(
                data.next_frame(),
                Err(Violation(close_code::UNSUPPORTED)),
                "{b0:x}"
            );
        }

        let mut unknown = Reader::new(4096);
        unknown.extend(&masked(0x83, b""));
        assert_eq!(unknown.next_frame(), Err(Violation(close_code::PROTOCOL)));
        let mut fragmented_ping = Reader::new(4096);
        fragmented_ping.extend(&masked(0x09, b""));
        assert_eq!(
            fragmented_ping.next_frame(),
            Err(Violation(close_code::PROTOCOL))
        );
    }

    type Heard = Result<Option<FromViewer>, Violation>;

    #[test]
    fn rsv_bits_and_closes_a_peer_may_not_send_fail_the_connection() {
        let cases: [(Vec<u8>, Heard); 9] = [
            (masked(0xC1, b"x"), Err(Violation(close_code::PROTOCOL))),
            (masked(0xA1, b"x"), Err(Violation(close_code::PROTOCOL))),
            (masked(0x99, b""), Err(Violation(close_code::PROTOCOL))),
            (masked(0x88, &[3]), Err(Violation(close_code::PROTOCOL))),
            (
                masked(0x88, &1005u16.to_be_bytes()),
                Err(Violation(close_code::PROTOCOL)),
            ),
            (
                masked(0x88, &1006u16.to_be_bytes()),
                Err(Violation(close_code::PROTOCOL)),
            ),
            (
                masked(0x88, &[0x03, 0xe8, 0xff, 0xfe]),
                Err(Violation(close_code::INVALID_DATA)),
            ),
            (masked(0x88, b""), Ok(Some(FromViewer::Close(None)))),
            (
                masked(0x88, &[0x0f, 0xa0, b'o', b'k']),
                Ok(Some(FromViewer::Close(Some(4000)))),
            ),
        ];
        for (bytes, want) in cases {
            let mut reader = Reader::new(4096);
            reader.extend(&bytes);
            assert_eq!(reader.next_frame(), want, "{bytes:x?}");
        }
    }

    #[test]
    fn only_a_base64_16_byte_key_is_a_key() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        for bad in [
            &b""[..],
            b"x",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25j*Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==x",
            b"dGhlIHNhbXBsZSBub25jZQAA",
        ] {
            assert!(!valid_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
