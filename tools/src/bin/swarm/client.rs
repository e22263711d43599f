//! A viewer client with only what the measurement needs: for WebSocket, the opening handshake,
//! then server frames read straight off the socket, pings answered, everything else ignored; for
//! SSE, the response head, then the body (raw up to the close, as a subscriber sends it, or
//! chunked) cut into events, each event's `data:` lines being the frame.
//!
//! The swarm runs on the same cores as the subscribers it measures, so every microsecond it spends
//! per frame is one the subscribers do not get. A general-purpose client (tokio-tungstenite, one
//! allocation and a full JSON parse per message, a multi-threaded runtime) cost more per frame
//! than the subscriber's own write; this one reads into a small buffer it keeps and parses only
//! the head of each frame.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// An epoch's frames (the epoch frame and three trend frames) are 2.8 KB and arrive together, so
/// one read takes them all; a longer burst grows the buffer for as long as it needs to.
const READ_CHUNK: usize = 4096;

/// The handshake response is a few headers; anything longer is not our server.
const MAX_RESPONSE_HEAD: usize = 4096;

use emostream_protocol::websocket::{
    OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};

/// One open viewer connection.
pub struct Client {
    stream: TcpStream,
    /// Bytes read and not yet consumed, from the start of a frame (for SSE: of a chunk).
    pending: Vec<u8>,
    /// The length of the text frame at the front of `pending` that was last returned.
    consumed: usize,
    /// An SSE viewer's event stream; `None` for WebSocket.
    sse: Option<Sse>,
}

/// What an SSE viewer keeps between reads.
struct Sse {
    /// Whether the body comes in `Transfer-Encoding: chunked` (hyper's way for a body of unknown
    /// length on HTTP/1.1), or raw up to the close (a subscriber's, which serves SSE without
    /// hyper).
    chunked: bool,
    /// The body with the chunk framing taken off: events, each ended by an empty line.
    body: Vec<u8>,
    /// The `data:` of the event last returned.
    data: Vec<u8>,
}

/// What the server sent next.
pub enum Event<'a> {
    Text(&'a [u8]),
    /// The server closed the connection (a Close frame or end of stream).
    Closed,
}

impl Client {
    /// Connects to `url` and completes the opening handshake: `ws://host:port/path` for a
    /// WebSocket viewer, `http://host:port/path` for an SSE viewer (a GET whose answer is an
    /// event stream).
    pub async fn connect(url: &str, key_seed: u64) -> io::Result<Self> {
        let (rest, sse) = match (url.strip_prefix("ws://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(invalid("only ws:// and http:// URLs")),
        };
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        // Before the handshake: the server may send the latest epoch right behind its answer.
        stamp_arrivals(&stream)?;
        let request = if sse {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
        } else {
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                handshake_key(key_seed)
            )
        };
        stream.write_all(request.as_bytes()).await?;
        let mut pending = Vec::with_capacity(READ_CHUNK);
        let head_end = loop {
            if let Some(at) = find(&pending, b"\r\n\r\n") {
                break at + 4;
            }
            if pending.len() > MAX_RESPONSE_HEAD {
                return Err(invalid("handshake response too long"));
            }
            if read_stamped(&stream, &mut pending).await?.0 == 0 {
                return Err(invalid("closed during the handshake"));
            }
        };
        let wanted: &[u8] = if sse {
            b"HTTP/1.1 200"
        } else {
            b"HTTP/1.1 101"
        };
        if !pending.starts_with(wanted) {
            let status = String::from_utf8_lossy(&pending[..head_end.min(64)]).into_owned();
            return Err(invalid(&format!("handshake refused: {status}")));
        }
        let sse = sse.then(|| Sse {
            chunked: find(
                &pending[..head_end].to_ascii_lowercase(),
                b"transfer-encoding: chunked",
            )
            .is_some(),
            body: Vec::new(),
            data: Vec::new(),
        });
        pending.drain(..head_end);
        Ok(Self {
            stream,
            pending,
            consumed: 0,
            sse,
        })
    }

    /// Reads until the next SSE event with data, or the end of the body. `on_read` as for
    /// [`Client::next`].
    async fn next_event(&mut self, mut on_read: impl FnMut(Option<u64>)) -> io::Result<Event<'_>> {
        let sse = self.sse.as_mut().expect("an SSE client");
        loop {
            if let Some(end) = find(&sse.body, b"\n\n") {
                sse.data.clear();
                // `id:` repeats the epoch the data carries, `event:` names a notice (`closing`,
                // the end follows), and a line starting with `:` is a comment: only data counts.
                for line in sse.body[..end].split(|&b| b == b'\n') {
                    if let Some(value) = line.strip_prefix(b"data:") {
                        if !sse.data.is_empty() {
                            sse.data.push(b'\n');
                        }
                        sse.data
                            .extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
                    }
                }
                sse.body.drain(..end + 2);
                if sse.data.is_empty() {
                    continue;
                }
                break;
            }
            if sse.chunked {
                match dechunk(&mut self.pending, &mut sse.body)? {
                    Chunks::Moved => continue,
                    Chunks::Partial => {}
                    Chunks::Ended => return Ok(Event::Closed),
                }
            } else if !self.pending.is_empty() {
                sse.body.append(&mut self.pending);
                continue;
            }
            let (n, arrived_ms) = read_stamped(&self.stream, &mut self.pending).await?;
            if n == 0 {
                return Ok(Event::Closed);
            }
            on_read(arrived_ms);
        }
        Ok(Event::Text(&sse.data))
    }

    /// Reads until the next text frame or the close, answering pings on the way. `on_read` runs
    /// after every read that returned bytes, before they are parsed, with the moment the kernel
    /// received the last of them (Unix ms), when it said.
    pub async fn next(&mut self, mut on_read: impl FnMut(Option<u64>)) -> io::Result<Event<'_>> {
        if self.sse.is_some() {
            return self.next_event(on_read).await;
        }
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
                    let (n, arrived_ms) = read_stamped(&self.stream, &mut self.pending).await?;
                    if n == 0 {
                        return Ok(Event::Closed);
                    }
                    on_read(arrived_ms);
                }
            }
        }
    }
}

/// What [`dechunk`] did.
#[derive(Debug, PartialEq)]
enum Chunks {
    /// At least one whole chunk's data moved to the body.
    Moved,
    /// Not one whole chunk yet: read more.
    Partial,
    /// The last chunk (size 0): the body has ended.
    Ended,
}

/// Moves the data of every whole chunk at the front of `raw` to `body` (RFC 9112 7.1; chunk
/// extensions are skipped, trailers are not read since the body has ended).
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) -> io::Result<Chunks> {
    let mut at = 0;
    let mut moved = Chunks::Partial;
    while let Some(line) = find(&raw[at..], b"\r\n") {
        let size = &raw[at..at + line];
        let size = size.split(|&b| b == b';').next().unwrap_or(size);
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| invalid("bad chunk size"))?;
        if size == 0 {
            // The events before the end are the caller's first; the end is told the next time.
            if moved == Chunks::Partial {
                return Ok(Chunks::Ended);
            }
            break;
        }
        let data = at + line + 2;
        if raw.len() < data + size + 2 {
            break;
        }
        body.extend_from_slice(&raw[data..data + size]);
        at = data + size + 2;
        moved = Chunks::Moved;
    }
    raw.drain(..at);
    Ok(moved)
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

/// Asks the kernel to stamp each packet this socket receives with the time it arrived
/// (`SO_TIMESTAMPNS`), and to hand the stamp over with the data.
fn stamp_arrivals(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of_val(&on) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Proof that the kernel is stamping received packets, for as long as it is held.
///
/// Linux switches receive stamping on for the whole machine, and lazily: when no socket has it
/// on, the first `SO_TIMESTAMPNS` only schedules the switch on a workqueue (`net_enable_timestamp`
/// under `CONFIG_JUMP_LABEL`), and packets received before that work runs carry no stamp. On a busy
/// machine that is milliseconds, long enough for a first frame to go unstamped. The switch stays on
/// while any socket keeps the option, so this holds the probe connection that saw a stamp.
pub struct StampingOn {
    _probe: (TcpStream, TcpStream),
}

/// Waits until a packet received on a loopback probe connection comes with its arrival stamp.
pub async fn kernel_stamping(within: Duration) -> io::Result<StampingOn> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = TcpStream::connect(listener.local_addr()?).await?;
    let (mut sender, _) = listener.accept().await?;
    stamp_arrivals(&receiver)?;
    let probe = async {
        // The workqueue gives no signal when it has run: each try sends one byte and looks at
        // its stamp, a millisecond apart.
        let mut tries = tokio::time::interval(Duration::from_millis(1));
        let mut buf = Vec::new();
        loop {
            tries.tick().await;
            sender.write_all(b"?").await?;
            let (n, stamp) = read_stamped(&receiver, &mut buf).await?;
            if n == 0 {
                return Err(invalid("the probe connection closed"));
            }
            if stamp.is_some() {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(within, probe).await {
        Ok(Ok(())) => Ok(StampingOn {
            _probe: (receiver, sender),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the kernel did not stamp received packets within {within:?}"),
        )),
    }
}

/// Reads what the socket has into `buf`'s spare room (0 at end of stream), with the kernel's
/// arrival stamp of the last packet read (Unix ms).
async fn read_stamped(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<(usize, Option<u64>)> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_stamped(stream.as_raw_fd(), buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// One `recvmsg` into `buf`'s spare room, with its `SCM_TIMESTAMPNS`.
fn recv_stamped(fd: libc::c_int, buf: &mut Vec<u8>) -> io::Result<(usize, Option<u64>)> {
    let spare = buf.spare_capacity_mut();
    let mut iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // Room for one cmsghdr and a timespec, aligned for both.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the iovec points at `buf`'s spare capacity, the control buffer at `control`.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    let mut arrived_ms = None;
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                arrived_ms = Some(ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000);
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((n, arrived_ms))
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

#[cfg(test)]
mod tests {
    use super::*;
    use emostream_testkit::now_ms;

    #[test]
    fn chunks_come_off_whole_and_a_partial_one_waits() {
        let mut raw = b"5\r\nid: 1\r\n3;ext=1\r\nabc\r\n4\r\nde".to_vec();
        let mut body = Vec::new();
        assert_eq!(dechunk(&mut raw, &mut body).unwrap(), Chunks::Moved);
        assert_eq!((&body[..], &raw[..]), (&b"id: 1abc"[..], &b"4\r\nde"[..]));
        assert_eq!(dechunk(&mut raw, &mut body).unwrap(), Chunks::Partial);
        raw.extend_from_slice(b"f\n\r\n0\r\n\r\n");
        assert_eq!(dechunk(&mut raw, &mut body).unwrap(), Chunks::Moved);
        assert_eq!(dechunk(&mut raw, &mut body).unwrap(), Chunks::Ended);
        assert_eq!(&body[..], b"id: 1abcdef\n");
        assert!(dechunk(&mut b"zz\r\n".to_vec(), &mut body).is_err());
    }

    #[tokio::test]
    async fn an_sse_viewer_gets_each_events_data_across_chunks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/streams/main/sse",
            listener.local_addr().unwrap()
        );
        let server = async {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let n = tokio::io::AsyncReadExt::read(&mut conn, &mut request)
                .await
                .unwrap();
            assert!(request[..n].starts_with(b"GET /v1/streams/main/sse HTTP/1.1\r\n"));
            // One event split over two chunks, a comment, a second event, the end.
            let events = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                          Transfer-Encoding: chunked\r\n\r\n\
                          9\r\nid: 7\ndat\r\n\
                          10\r\na: {\"a\":1}\n\n: c\n\r\n\
                          b\r\n\ndata: {}\n\n\r\n0\r\n\r\n";
            conn.write_all(events.as_bytes()).await.unwrap();
            conn
        };
        let (mut client, _conn) =
            tokio::join!(async { Client::connect(&url, 0).await.unwrap() }, server);
        let mut texts = Vec::new();
        while let Event::Text(text) = client.next(|_| {}).await.unwrap() {
            texts.push(String::from_utf8(text.to_vec()).unwrap());
        }
        assert_eq!(texts, [r#"{"a":1}"#, "{}"]);
    }

    #[tokio::test]
    async fn a_read_carries_the_moment_its_bytes_arrived_not_the_moment_it_ran() {
        // Without this, the first packets after the machine's first `SO_TIMESTAMPNS` may arrive
        // before the kernel has switched stamping on (see `StampingOn`).
        let _stamping = kernel_stamping(Duration::from_secs(10)).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let viewer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        stamp_arrivals(&viewer).unwrap();

        let before = now_ms();
        server.write_all(b"frame").await.unwrap();
        let after = now_ms();
        // The delay under test: the viewer reads well after the bytes arrived.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = Vec::new();
        let (n, arrived) = read_stamped(&viewer, &mut buf).await.unwrap();
        let read = now_ms();

        assert_eq!((n, &buf[..]), (5, &b"frame"[..]));
        let arrived = arrived.expect("the kernel stamps every packet once asked");
        assert!(
            (before..=after).contains(&arrived),
            "arrived {arrived}, written between {before} and {after}"
        );
        assert!(read >= after + 50, "read {read} is after the delay");
    }
}
