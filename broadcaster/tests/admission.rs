//! Admission at the connection level (issue 20 item 7, review H1): a subscriber whose descriptor
//! limit is small, flooded with twice that many clients polling `/healthz` on keep-alive
//! connections, keeps its viewers and its upstream link through a blip of the tier above; and a
//! main publisher flooded so takes a lower tier's link all the same.
//!
//! The subscriber is a real process started under `ulimit -n`, so its limit is the kernel's and
//! not a setting; the main and cluster publishers run in this process.

mod common;

use common::{listener, until};
use emostream_broadcaster::{cluster_publisher, main_publisher, Error};
use emostream_testkit::{free_port, wait_for, Process, Scratch};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// How long any one expected thing may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// The subscriber's descriptor limit (soft and hard, so it cannot raise it).
const DESCRIPTORS: usize = 256;

/// Viewers watching through the flood.
const VIEWERS: usize = 3;

type Viewer = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn frame(epoch: u64) -> String {
    format!(r#"{{"type":"epoch","stream":"main","epoch":{epoch},"total":{epoch}}}"#)
}

/// How often a flood client asks, starting this long after it connects.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// What the flood's clients saw.
#[derive(Default)]
struct Flood {
    /// Answers that closed the connection after them.
    closing: AtomicU64,
    /// Answers that let the connection carry another request.
    kept_alive: AtomicU64,
    /// Connections closed before any answer.
    refused: AtomicU64,
    stop: AtomicBool,
}

/// One client polling `GET /healthz` every [`POLL_EVERY`] on one keep-alive connection for as
/// long as the subscriber keeps it, then on a new one.
async fn poll_healthz(subscriber: SocketAddr, flood: Arc<Flood>) {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {subscriber}\r\n\r\n");
    let mut buf = [0u8; 1024];
    while !flood.stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = TcpStream::connect(subscriber).await else {
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        };
        let mut answers = 0;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            if flood.stop.load(Ordering::Relaxed) {
                return;
            }
            if conn.write_all(request.as_bytes()).await.is_err() {
                break;
            }
            let n = match timeout(DEADLINE, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
            answers += 1;
            if head.contains("\r\nconnection: close\r\n") {
                flood.closing.fetch_add(1, Ordering::Relaxed);
            } else {
                flood.kept_alive.fetch_add(1, Ordering::Relaxed);
            }
        }
        if answers == 0 {
            flood.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The next epoch a viewer gets, pings aside; a Close or an end fails the test.
async fn next_epoch(viewer: &mut Viewer) -> u64 {
    loop {
        let msg = timeout(DEADLINE, viewer.next())
            .await
            .expect("an epoch in time")
            .expect("the viewer stays connected")
            .expect("a frame");
        match msg {
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Text(text) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                return value["epoch"].as_u64().expect("an epoch frame");
            }
            other => panic!("viewers keep every epoch and no Close: got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_flood_past_the_descriptor_limit_leaves_viewers_and_the_link_intact() {
    let scratch = Scratch::new("admission");
    let (stop, stopped) = watch::channel(false);
    let (cluster_stop, cluster_stopped) = watch::channel(false);
    let settings = common::settings(16);
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let mut roles: Vec<JoinHandle<Result<(), Error>>> = vec![tokio::spawn(main_publisher(
        main_l,
        settings.clone(),
        frames_rx,
        until(&stopped),
    ))];
    let first_cluster = tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        settings.clone(),
        until(&cluster_stopped),
    ));

    // `ulimit -n` sets the soft and the hard limit, so the subscriber's raise is a no-op.
    let config = common::config(
        &scratch,
        &format!("[broadcaster]\nmain = \"{main}\"\nclusters = []\n"),
    );
    let subscriber: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _process = Process::spawn(
        "subscriber",
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {DESCRIPTORS} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_emostream-broadcaster"))
            .arg("--config")
            .arg(&config)
            .args(["subscriber", "--name", "c0-s0", "--listen"])
            .arg(subscriber.to_string())
            .arg("--upstream")
            .arg(cluster.to_string()),
        &scratch.join("subscriber.log"),
    );

    frames.send(frame(1).into()).await.unwrap();
    let mut viewers = Vec::new();
    for _ in 0..VIEWERS {
        let url = format!("ws://{subscriber}/v1/streams/main/ws");
        let viewer = wait_for("the subscriber takes a viewer", DEADLINE, || async {
            connect_async(&url).await.ok().map(|(viewer, _)| viewer)
        })
        .await;
        viewers.push(viewer);
    }
    let mut received: Vec<Vec<u64>> = vec![Vec::new(); VIEWERS];
    for (viewer, got) in viewers.iter_mut().zip(&mut received) {
        got.push(next_epoch(viewer).await);
    }

    // Twice the descriptor limit of pollers: were each allowed to keep its connection, the
    // subscriber would run out of descriptors.
    let flood = Arc::new(Flood::default());
    let pollers: Vec<_> = (0..2 * DESCRIPTORS)
        .map(|_| tokio::spawn(poll_healthz(subscriber, Arc::clone(&flood))))
        .collect();
    // The flood at full strength: every poller has been answered about once.
    wait_for("the flood answered", DEADLINE, || async {
        let answered =
            flood.closing.load(Ordering::Relaxed) + flood.kept_alive.load(Ordering::Relaxed);
        (answered >= 2 * DESCRIPTORS as u64).then_some(())
    })
    .await;
    for epoch in 2..=3 {
        frames.send(frame(epoch).into()).await.unwrap();
        for (viewer, got) in viewers.iter_mut().zip(&mut received) {
            got.push(next_epoch(viewer).await);
        }
    }

    // The blip: the cluster publisher goes, epochs 4 and 5 reach only the main publisher, and
    // it comes back on the same address. The subscriber's link needs a descriptor to reconnect,
    // under the flood, and within UPSTREAM_LOST_AFTER (5 s) or its viewers get 1012.
    cluster_stop.send_replace(true);
    timeout(DEADLINE, first_cluster)
        .await
        .expect("the cluster stops in time")
        .unwrap()
        .unwrap();
    frames.send(frame(4).into()).await.unwrap();
    frames.send(frame(5).into()).await.unwrap();
    let cluster_l = TcpListener::bind(cluster).await.unwrap();
    roles.push(tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        settings,
        until(&stopped),
    )));
    for (viewer, got) in viewers.iter_mut().zip(&mut received) {
        got.push(next_epoch(viewer).await);
        got.push(next_epoch(viewer).await);
    }
    frames.send(frame(6).into()).await.unwrap();
    for (viewer, got) in viewers.iter_mut().zip(&mut received) {
        got.push(next_epoch(viewer).await);
    }

    flood.stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        timeout(DEADLINE, poller)
            .await
            .expect("a poller stops")
            .unwrap();
    }
    for got in &received {
        assert_eq!(got, &[1, 2, 3, 4, 5, 6]);
    }
    // Not one answer let a poller keep its connection, and the pending places ran out: each
    // poller's connection waits POLL_EVERY before its first request, so most of them want one at
    // once, far more than the subscriber's 32 (half its reserve of 64).
    assert_eq!(flood.kept_alive.load(Ordering::Relaxed), 0);
    let refused = flood.refused.load(Ordering::Relaxed);
    assert!(refused >= DESCRIPTORS as u64, "{refused} refused");
    // The link came back: a new viewer still joins, and gets the newest epoch at once.
    let (mut late, _) = connect_async(format!("ws://{subscriber}/v1/streams/main/ws"))
        .await
        .expect("a viewer joins after the flood");
    assert_eq!(next_epoch(&mut late).await, 6);
    stop.send_replace(true);
    for role in roles {
        timeout(DEADLINE, role)
            .await
            .expect("the role stops in time")
            .unwrap()
            .unwrap();
    }
}

/// How often a client of [`poll_at_once`] asks.
const POLL_AT_ONCE_EVERY: Duration = Duration::from_millis(100);

/// One client polling `GET /healthz` as health checks do: asking as soon as it has connected, then
/// every [`POLL_AT_ONCE_EVERY`] on the same keep-alive connection for as long as it is kept, then
/// on a new one.
async fn poll_at_once(addr: SocketAddr, flood: Arc<Flood>) {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = [0u8; 1024];
    while !flood.stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = TcpStream::connect(addr).await else {
            tokio::time::sleep(POLL_AT_ONCE_EVERY).await;
            continue;
        };
        let mut answers = 0;
        while !flood.stop.load(Ordering::Relaxed) {
            if conn.write_all(request.as_bytes()).await.is_err() {
                break;
            }
            let n = match timeout(DEADLINE, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
            answers += 1;
            tokio::time::sleep(POLL_AT_ONCE_EVERY).await;
            if head.contains("\r\nconnection: close\r\n") {
                flood.closing.fetch_add(1, Ordering::Relaxed);
                break;
            }
            flood.kept_alive.fetch_add(1, Ordering::Relaxed);
        }
        if answers == 0 {
            flood.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(POLL_AT_ONCE_EVERY).await;
        }
    }
}

/// Review H1 at the main publisher (and so at a cluster publisher, which accepts the same way):
/// twice as many health checks polling `/healthz` on keep-alive connections as it has pending
/// places leave room for a lower tier's link reconnecting after a blip. Every answer but an
/// upgrade closes its connection, so no poller keeps a place between its polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pollers_of_the_main_publisher_leave_room_for_a_link() {
    // The main publisher's pending places: its own and what a subscriber would give viewers.
    const PLACES: usize = 8;
    let (stop, stopped) = watch::channel(false);
    let settings = emostream_broadcaster::Settings {
        max_pending: PLACES / 2,
        max_viewers: PLACES / 2,
        ..common::settings(16)
    };
    let (main_l, main) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let role = tokio::spawn(main_publisher(main_l, settings, frames_rx, until(&stopped)));
    frames.send(frame(1).into()).await.unwrap();

    let flood = Arc::new(Flood::default());
    let pollers: Vec<_> = (0..2 * PLACES)
        .map(|_| tokio::spawn(poll_at_once(main, Arc::clone(&flood))))
        .collect();
    // The flood at full strength: as many answers as two polls of every place.
    wait_for("the flood answered", DEADLINE, || async {
        let answered =
            flood.closing.load(Ordering::Relaxed) + flood.kept_alive.load(Ordering::Relaxed);
        (answered >= 2 * PLACES as u64).then_some(())
    })
    .await;
    // A cluster publisher's link reconnects (its connection attempts take up to 5 s each, and
    // its subscribers give up on it after 5 s without upstream): it finds a place and its ring.
    let url = format!("ws://{main}/internal/link");
    let mut link = wait_for(
        "the main publisher takes a link",
        Duration::from_secs(5),
        || async { connect_async(&url).await.ok().map(|(link, _)| link) },
    )
    .await;
    let all = r#"{"type":"subscribe","all":true}"#;
    link.send(Message::text(all)).await.unwrap();
    loop {
        let msg = timeout(DEADLINE, link.next())
            .await
            .expect("a frame in time")
            .expect("the link stays open")
            .unwrap();
        match msg {
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Text(text) => {
                assert_eq!(text.as_str(), frame(1));
                break;
            }
            other => panic!("expected the ring, got {other:?}"),
        }
    }

    flood.stop.store(true, Ordering::Relaxed);
    for poller in pollers {
        timeout(DEADLINE, poller)
            .await
            .expect("a poller stops")
            .unwrap();
    }
    assert_eq!(flood.kept_alive.load(Ordering::Relaxed), 0);
    drop(link);
    stop.send_replace(true);
    timeout(DEADLINE, role)
        .await
        .expect("the role stops in time")
        .unwrap()
        .unwrap();
}

/// Reads an HTTP answer's head (and whatever came with it) from `conn`.
async fn head(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(DEADLINE, conn.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before an answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// With one pending place and one seat: an SSE viewer, once admitted, gives its pending place up
/// (so the next connection is answered, not closed unanswered) and is told its own reconnection
/// delay; the next viewer is refused with 503, `Retry-After` and `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_sse_viewer_frees_its_pending_place_and_a_refusal_says_when_to_retry() {
    let (stop, stopped) = watch::channel(false);
    let (l, s) = listener().await;
    let (_, nobody) = listener().await;
    let settings = emostream_broadcaster::Settings {
        max_viewers: 1,
        max_pending: 1,
        ..common::settings(8)
    };
    let role = tokio::spawn(emostream_broadcaster::subscriber(
        l,
        "s".into(),
        nobody.to_string(),
        format!("ws://{s}"),
        settings,
        until(&stopped),
    ));

    let mut sse = TcpStream::connect(s).await.unwrap();
    sse.write_all(format!("GET /v1/streams/main/sse HTTP/1.1\r\nHost: {s}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = head(&mut sse).await;
    while !answer.contains("\n\n") {
        let mut chunk = [0u8; 256];
        let n = timeout(DEADLINE, sse.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{answer}");
        answer.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let retry_ms: u64 = answer
        .split("retry: ")
        .nth(1)
        .and_then(|rest| rest.split('\n').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no retry: in {answer}"));
    assert!((2_000..7_000).contains(&retry_ms), "{retry_ms}");

    let mut refused = TcpStream::connect(s).await.unwrap();
    refused
        .write_all(
            format!(
                "GET /v1/streams/main/ws HTTP/1.1\r\nHost: {s}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    timeout(DEADLINE, refused.read_to_end(&mut answer))
        .await
        .expect("the refusal closes the connection")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap().to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 503 service unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains("\r\nretry-after: 2\r\n"), "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"this subscriber is full (1 viewers); register again"}"#),
        "{answer}"
    );

    drop(sse);
    stop.send_replace(true);
    timeout(DEADLINE, role).await.unwrap().unwrap().unwrap();
}

/// What an SSE request's head is allowed, now that the subscriber reads it itself: the same as
/// hyper allows every other request. One that stops half-way (in its request line, before the
/// route can be told, or in its fields) is closed unanswered at the header-read timeout, and
/// the rest of the port is served meanwhile; one with too many fields or too many bytes is
/// answered 431, a malformed one 400, in JSON like every error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_request_head_gets_the_header_read_timeout_and_the_limits_hyper_applies() {
    let (stop, stopped) = watch::channel(false);
    let (l, s) = listener().await;
    let (_, nobody) = listener().await;
    let settings = emostream_broadcaster::Settings {
        header_read_timeout: Duration::from_secs(1),
        ..common::settings(8)
    };
    let role = tokio::spawn(emostream_broadcaster::subscriber(
        l,
        "s".into(),
        nobody.to_string(),
        format!("ws://{s}"),
        settings,
        until(&stopped),
    ));

    let stalled = |sent: &'static str| async move {
        let mut conn = TcpStream::connect(s).await.unwrap();
        let started = std::time::Instant::now();
        conn.write_all(sent.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        timeout(DEADLINE, conn.read_to_end(&mut answer))
            .await
            .expect("closed in time")
            .unwrap();
        (started.elapsed(), String::from_utf8(answer).unwrap())
    };
    let stalls = [
        tokio::spawn(stalled("GET /v1/streams/ma")),
        tokio::spawn(stalled("GET /v1/streams/main/sse HTTP/1.1\r\nHost: x\r\n")),
    ];
    // Served meanwhile.
    assert_eq!(
        common::http(s, "GET", "/healthz", "").await,
        Some((200, "ok".into()))
    );
    for stall in stalls {
        let (held, answer) = stall.await.unwrap();
        assert_eq!(answer, "", "closed unanswered");
        // 1 s, and far below what a stalled client would hold otherwise; the margin is what a
        // loaded machine may add.
        assert!(
            held >= Duration::from_millis(900) && held < Duration::from_secs(10),
            "closed after {held:?}"
        );
    }

    let refused = |head: String| async move {
        let mut conn = TcpStream::connect(s).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        timeout(DEADLINE, conn.read_to_end(&mut answer))
            .await
            .expect("answered and closed in time")
            .unwrap();
        String::from_utf8(answer).unwrap()
    };
    let request = "GET /v1/streams/main/sse HTTP/1.1\r\nHost: x\r\n";
    let too_large = |body: &str| {
        format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let body = r#"{"error":"the request header is too large"}"#;
    let many_fields = format!("{request}{}\r\n", "X-Field: 1\r\n".repeat(32));
    assert_eq!(refused(many_fields).await, too_large(body));
    let many_bytes = format!("{request}X-Big: {}\r\n\r\n", "b".repeat(16 * 1024));
    assert_eq!(refused(many_bytes).await, too_large(body));
    let body = r#"{"error":"the request header is malformed"}"#;
    assert_eq!(
        refused(format!("{request}no colon\r\n\r\n")).await,
        format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    );

    stop.send_replace(true);
    timeout(DEADLINE, role).await.unwrap().unwrap().unwrap();
}
