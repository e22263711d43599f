//! How a subscriber ends a viewer's WebSocket, on raw sockets so that every byte is seen: the
//! Close frame it sends reaches the client whole and is followed by a clean close (FIN, never a
//! reset), even while the client still has pings in flight; a viewer that sends data is closed
//! with 1003; a viewer's pings are answered at most once a second.

mod common;

use common::{listener, until};
use emostream_broadcaster::{subscriber, Error, Settings, TokenKey};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long any one expected thing may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// A subscriber with no tier above (viewers join an empty ring after the sync wait, which is all
/// these tests need), until `stopped`.
async fn lone_subscriber(
    settings: Settings,
    stopped: &watch::Receiver<bool>,
) -> (SocketAddr, JoinHandle<Result<(), Error>>) {
    let (l, addr) = listener().await;
    let (_, nobody) = listener().await;
    let role = tokio::spawn(subscriber(
        l,
        "s".into(),
        nobody.to_string(),
        format!("ws://{addr}"),
        settings,
        until(stopped),
    ));
    (addr, role)
}

/// A WebSocket handshake on a raw connection; returns the socket once the 101 is read.
async fn upgrade(subscriber: SocketAddr, query: &str) -> TcpStream {
    let mut conn = TcpStream::connect(subscriber).await.unwrap();
    let request = format!(
        "GET /v1/streams/main/ws{query} HTTP/1.1\r\nHost: {subscriber}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let head = common::response_head(&mut conn, DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    conn
}

/// A client frame with `payload`, masked as clients must.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7, 1, 9, 3];
    let mut out = vec![b0, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// A server frame as (opcode, payload).
type Frame = (u8, Vec<u8>);

/// Splits what a server sent into frames (server frames are unmasked); `None` if it ends inside
/// one.
fn frames(mut bytes: &[u8]) -> Option<Vec<Frame>> {
    let mut out = Vec::new();
    while let [b0, b1, rest @ ..] = bytes {
        let (len, rest) = match (b1 & 0x7f, rest) {
            (126, [hi, lo, rest @ ..]) => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            (126, _) => return None,
            (127, _) => panic!("no frame here is that long"),
            (len, rest) => (usize::from(len), rest),
        };
        if rest.len() < len {
            return None;
        }
        out.push((b0 & 0x0f, rest[..len].to_vec()));
        bytes = &rest[len..];
    }
    bytes.is_empty().then_some(out)
}

/// The subscriber's own pings (empty, at each viewer's own offset) can fall inside a test.
fn without_server_pings(frames: Vec<Frame>) -> Vec<Frame> {
    frames
        .into_iter()
        .filter(|f| *f != (0x9, Vec::new()))
        .collect()
}

fn close(code: u16, reason: &str) -> Frame {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    (0x8, payload)
}

/// Reads everything until the server closes; the close must be clean (EOF), not a reset.
async fn read_to_eof(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(DEADLINE, conn.read_to_end(&mut got))
        .await
        .expect("the subscriber closes in time")
        .expect("a clean close (FIN), not a reset");
    got
}

/// A client that pings every millisecond and reads nothing until the server's Close has arrived:
/// the server always has pings it has not read when it closes. Returns the server's frames, pings
/// of its own aside, once the server has closed cleanly.
async fn pinging_until_closed(mut conn: TcpStream) -> Vec<Frame> {
    let closed = Arc::new(AtomicBool::new(false));
    let (mut read, mut write) = conn.split();
    let pinging = async {
        let ping = masked(0x89, b"still here");
        while !closed.load(Ordering::Relaxed) {
            if write.write_all(&ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let reading = async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = timeout(DEADLINE, read.read(&mut chunk))
                .await
                .expect("the subscriber closes in time")
                .expect("a clean close (FIN), not a reset");
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&chunk[..n]);
            let complete = frames(&got);
            if complete.is_some_and(|f| f.last().is_some_and(|(op, _)| *op == 0x8)) {
                closed.store(true, Ordering::Relaxed);
            }
        }
    };
    let ((), got) = tokio::join!(pinging, reading);
    without_server_pings(frames(&got).expect("whole frames"))
}

/// Every frame is a pong to the client's pings (at most one a second) up to the last, which is
/// `want`.
fn assert_ends_with_close(got: &[Frame], want: Frame) {
    let (last, before) = got.split_last().expect("at least the Close");
    assert_eq!(last, &want);
    for frame in before {
        assert_eq!(frame, &(0xA, b"still here".to_vec()), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_reach_a_client_with_pings_in_flight_whole_and_cleanly() {
    let (stop, stopped) = watch::channel(false);
    let key = TokenKey::new("viewer-key", Duration::from_secs(1));
    let settings = Settings {
        tokens: Some(key.clone()),
        ..common::settings(8)
    };
    let (s, role) = lone_subscriber(settings, &stopped).await;

    // 1008: a token that expires while its viewer watches (after its 1 s and the 0-5 s spread).
    let (token, _) = key.issue("u1", "main", SystemTime::now());
    let expiring = upgrade(s, &format!("?token={token}")).await;
    let got = pinging_until_closed(expiring).await;
    assert_ends_with_close(&got, close(1008, "token expired; register again"));

    // 1001: the subscriber shuts down while its viewer pings.
    let (token, _) =
        TokenKey::new("viewer-key", Duration::from_secs(60)).issue("u2", "main", SystemTime::now());
    let staying = upgrade(s, &format!("?token={token}")).await;
    let watching = tokio::spawn(pinging_until_closed(staying));
    stop.send_replace(true);
    let got = timeout(DEADLINE, watching).await.unwrap().unwrap();
    assert_ends_with_close(&got, close(1001, "shutting down"));
    timeout(DEADLINE, role).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_sends_data_is_closed_and_its_pings_are_answered_once_a_second() {
    let (stop, stopped) = watch::channel(false);
    let (s, role) = lone_subscriber(common::settings(8), &stopped).await;

    // Text, binary, and a fragment's first part: 1003 each, and a clean close.
    for b0 in [0x81, 0x82, 0x01] {
        let mut conn = upgrade(s, "").await;
        conn.write_all(&masked(b0, b"hello")).await.unwrap();
        let got = without_server_pings(frames(&read_to_eof(&mut conn).await).unwrap());
        assert_eq!(got, [close(1003, "")], "{b0:x}");
    }

    // Twenty pings at once: one pong, for the first. Only once it has arrived does the viewer
    // close, so any pong for the other nineteen would have had time to come first.
    let mut conn = upgrade(s, "").await;
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend(masked(0x89, format!("ping {i}").as_bytes()));
    }
    conn.write_all(&burst).await.unwrap();
    let mut got = Vec::new();
    let first = loop {
        let mut chunk = [0u8; 256];
        let n = timeout(DEADLINE, conn.read(&mut chunk))
            .await
            .expect("a pong in time")
            .unwrap();
        assert!(n > 0, "the connection stays open");
        got.extend_from_slice(&chunk[..n]);
        if let Some(first) = frames(&got).and_then(|f| without_server_pings(f).first().cloned()) {
            break first;
        }
    };
    assert_eq!(first, (0xA, b"ping 0".to_vec()));
    conn.write_all(&masked(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    got.extend(read_to_eof(&mut conn).await);
    let got = without_server_pings(frames(&got).unwrap());
    assert_eq!(got, [(0xA, b"ping 0".to_vec()), close(1000, "")]);

    stop.send_replace(true);
    timeout(DEADLINE, role).await.unwrap().unwrap().unwrap();
}
