//! A WebSocket viewer as lean as the measurement needs: the opening handshake, then server frames
//! read straight off the socket, pings answered, everything else ignored.
//!
//! The swarm runs on the same cores as the subscribers it measures, so every microsecond it spends
//! per frame is one the subscribers do not get. A general-purpose client (tokio-tungstenite, one
//! allocation and a full JSON parse per message, a multi-threaded runtime) cost more per frame
//! than the subscriber's own write; this one reads into a small buffer it keeps and parses only
//! the head of each frame.

use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Server frames here are a few hundred bytes; a longer one grows the buffer for as long as it
/// needs to.
const READ_CHUNK: usize = 1024;

/// The handshake response is a few headers; anything longer is not our server.
const MAX_RESPONSE_HEAD: usize = 4096;

use emostream_protocol::websocket::{
    OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};

/// One open viewer connection.
pub struct Client {
    stream: TcpStream,
    /// Bytes read and not yet consumed, from the start of a frame.
    pending: Vec<u8>,
    /// The length of the text frame at the front of `pending` that was last returned.
    consumed: usize,
}

/// What the server sent next.
pub enum Event<'a> {
    Text(&'a [u8]),
    /// The server closed the connection (a Close frame or end of stream).
    Closed,
}

impl Client {
    /// Connects to `url` (`ws://host:port/path`) and completes the opening handshake.
    pub async fn connect(url: &str, key_seed: u64) -> io::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| invalid("only ws:// URLs"))?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            handshake_key(key_seed)
        );
        stream.write_all(request.as_bytes()).await?;
        let mut pending = Vec::with_capacity(READ_CHUNK);
        let head_end = loop {
            if let Some(at) = find(&pending, b"\r\n\r\n") {
                break at + 4;
            }
            if pending.len() > MAX_RESPONSE_HEAD {
                return Err(invalid("handshake response too long"));
            }
            if read_more(&mut stream, &mut pending).await? == 0 {
                return Err(invalid("closed during the handshake"));
            }
        };
        if !pending.starts_with(b"HTTP/1.1 101") {
            let status = String::from_utf8_lossy(&pending[..head_end.min(64)]).into_owned();
            return Err(invalid(&format!("handshake refused: {status}")));
        }
        pending.drain(..head_end);
        Ok(Self {
            stream,
            pending,
            consumed: 0,
        })
    }

    /// Reads until the next text frame or the close, answering pings on the way. `on_read` runs
    /// after every read that returned bytes, before they are parsed: the receipt time.
    pub async fn next(&mut self, mut on_read: impl FnMut()) -> io::Result<Event<'_>> {
        // The text frame returned last time was lent out of `pending`; it is dropped only now.
        self.pending.drain(..std::mem::take(&mut self.consumed));
        loop {
            match parse(&self.pending)? {
                Some((OP_TEXT, payload, len)) => {
                    self.consumed = len;
                    return Ok(Event::Text(&self.pending[payload]));
                }
                Some((opcode, payload, len)) => {
                    match opcode {
                        OP_PING => {
                            let pong = masked(OP_PONG, &self.pending[payload]);
                            self.stream.write_all(&pong).await?;
                        }
                        OP_CLOSE => return Ok(Event::Closed),
                        OP_BINARY | OP_PONG => {}
                        OP_CONTINUATION => return Err(invalid("fragmented frame")),
                        _ => return Err(invalid("unknown opcode")),
                    }
                    self.pending.drain(..len);
                }
                None => {
                    if read_more(&mut self.stream, &mut self.pending).await? == 0 {
                        return Ok(Event::Closed);
                    }
                    on_read();
                }
            }
        }
    }
}

/// Reads what the socket has into `buf`'s spare room; 0 at end of stream.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

/// The first whole frame in `buf`: its opcode, where its payload is, and its whole length.
/// Frames from a server are never masked and, from ours, never fragmented.
fn parse(buf: &[u8]) -> io::Result<Option<(u8, std::ops::Range<usize>, usize)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x80 == 0 {
        return Err(invalid("fragmented frame"));
    }
    if b1 & 0x80 != 0 {
        return Err(invalid("a masked frame from the server"));
    }
    let (header, len) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => {
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            (
                10,
                usize::try_from(len).map_err(|_| invalid("frame too long"))?,
            )
        }
        126 | 127 => return Ok(None),
        len => (2, len as usize),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some((b0 & 0x0f, header..header + len, header + len)))
}

/// A client frame: clients must mask. The mask is fixed; it only has to be present.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    // Control frames carry at most 125 bytes, so the short length form always fits.
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// `Sec-WebSocket-Key`: 16 bytes, base64; servers only echo a hash of it back.
fn handshake_key(seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 18];
    bytes[..8].copy_from_slice(&seed.to_be_bytes());
    bytes[8..16].copy_from_slice(&seed.rotate_left(29).to_le_bytes());
    let mut key = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            key.push(ALPHABET[(n >> shift) as usize & 63] as char);
        }
    }
    // 16 bytes are 22 characters and two of padding; the last chunk above was zero-filled.
    key.truncate(22);
    key.push_str("==");
    key
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}
