//! All three tiers in one process on real sockets: a main publisher fed by a channel instead of
//! Kafka, one cluster publisher, two subscribers, and WebSocket viewers.

use emostream_broadcaster::{cluster_publisher, main_publisher, subscriber, Error};
use emostream_protocol::wire::{Assignment, ErrorBody};
use futures_util::StreamExt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// How long any one expected thing may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
const RING_EPOCHS: usize = 8;

type Viewer = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An epoch frame as the dataflow writes it. The odd spacing is deliberate: the tiers must pass
/// these exact bytes on, never a re-serialization.
fn frame(stream: &str, epoch: u64) -> String {
    format!(
        r#"{{"type":"epoch", "stream":"{stream}","epoch":{epoch},"start_ms":{},"end_ms":{},"total":{epoch},"late":0,"emojis":[{{"emoji":"🔥","count":{epoch},"scaled":1}}]}}"#,
        epoch * 2000,
        epoch * 2000 + 2000
    )
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn until(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// One HTTP/1.1 request on its own connection: the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    timeout(DEADLINE, conn.read_to_string(&mut response))
        .await
        .expect("an HTTP answer")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Polls `probe` until it yields, failing the test after [`DEADLINE`].
async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

async fn watch_stream(subscriber: SocketAddr, stream: &str, query: &str) -> Viewer {
    let url = format!("ws://{subscriber}/v1/streams/{stream}/ws{query}");
    timeout(DEADLINE, connect_async(url))
        .await
        .expect("the upgrade answers")
        .unwrap()
        .0
}

/// The next message a viewer gets, pings aside.
async fn next(viewer: &mut Viewer) -> Message {
    loop {
        let msg = timeout(DEADLINE, viewer.next())
            .await
            .expect("a message in time");
        match msg.expect("the socket stays open").unwrap() {
            Message::Ping(_) | Message::Pong(_) => continue,
            msg => return msg,
        }
    }
}

async fn next_text(viewer: &mut Viewer) -> String {
    match next(viewer).await {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_flow_through_every_tier_exactly_once() {
    let (stop, stopped) = watch::channel(false);
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (s0_l, s0) = listener().await;
    let (s1_l, s1) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let mut roles: Vec<JoinHandle<Result<(), Error>>> = vec![tokio::spawn(main_publisher(
        main_l,
        RING_EPOCHS,
        frames_rx,
        until(&stopped),
    ))];

    // Before any cluster links, the main publisher has nobody to assign.
    assert_eq!(
        http(main, "GET", "/healthz", "").await,
        (200, "ok".to_owned())
    );
    let register = r#"{"user_id":"u1","group_id":"g1"}"#;
    assert_eq!(
        http(main, "POST", "/register", register).await,
        (503, r#"{"error":"no live subscriber"}"#.to_owned())
    );
    assert_eq!(
        http(main, "POST", "/unregister", register).await,
        (200, r#"{"ok":true}"#.to_owned())
    );
    assert_eq!(
        http(main, "GET", "/nowhere", "").await,
        (404, r#"{"error":"not found"}"#.to_owned())
    );
    let (status, body) = http(main, "POST", "/v1/viewers", r#"{"group_id":"g1"}"#).await;
    let body: ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 422);
    assert!(body.error.contains("missing field `user_id`"), "{body:?}");

    roles.push(tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        RING_EPOCHS,
        until(&stopped),
    )));
    for (l, addr, name) in [(s0_l, s0, "c0-s0"), (s1_l, s1, "c0-s1")] {
        let url = format!("ws://{addr}");
        let serving = subscriber(
            l,
            name.into(),
            cluster.to_string(),
            url,
            RING_EPOCHS,
            until(&stopped),
        );
        roles.push(tokio::spawn(serving));
    }

    // Heartbeats travel subscriber → cluster → main; registration works once one has arrived.
    let assignment: Assignment = eventually("a live subscriber", || async {
        let (status, body) = http(main, "POST", "/register", register).await;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    })
    .await;
    let known = [
        ("c0-s0", format!("ws://{s0}")),
        ("c0-s1", format!("ws://{s1}")),
    ];
    assert_eq!(assignment.cluster, "c0");
    assert!(
        known.iter().any(|(name, url)| assignment.subscriber_name == *name && assignment.subscriber == *url),
        "{assignment:?}"
    );
    let both_idle = format!(
        r#"{{"clusters":[{{"name":"c0","subscribers":[{{"name":"c0-s0","url":"ws://{s0}","viewers":0}},{{"name":"c0-s1","url":"ws://{s1}","viewers":0}}]}}]}}"#
    );
    eventually("both subscribers in the topology", || async {
        (http(main, "GET", "/v1/topology", "").await == (200, both_idle.clone())).then_some(())
    })
    .await;

    // A viewer that joins before the first frame gets it live; a duplicate epoch, an older one and
    // another stream's frame never reach it.
    let mut v1 = watch_stream(s0, "main", "").await;
    frames.send(frame("main", 10).into()).await.unwrap();
    assert_eq!(next_text(&mut v1).await, frame("main", 10));
    for (stream, epoch) in [
        ("main", 10),
        ("main", 11),
        ("main", 11),
        ("main", 9),
        ("football", 5),
        ("main", 12),
    ] {
        frames.send(frame(stream, epoch).into()).await.unwrap();
    }
    assert_eq!(next_text(&mut v1).await, frame("main", 11));
    assert_eq!(next_text(&mut v1).await, frame("main", 12));

    // s0 has epoch 12 (v1 got it from there), so a viewer joining s0 gets it at once, alone.
    let mut v2 = watch_stream(s0, "main", "").await;
    assert_eq!(next_text(&mut v2).await, frame("main", 12));
    // Resuming with since replays everything after it, in order, then continues live.
    let mut v3 = watch_stream(s1, "main", "?since=10").await;
    assert_eq!(next_text(&mut v3).await, frame("main", 11));
    assert_eq!(next_text(&mut v3).await, frame("main", 12));
    let mut football = watch_stream(s0, "football", "?since=0").await;
    assert_eq!(next_text(&mut football).await, frame("football", 5));

    // Epoch 13 is the next thing every main viewer sees: nothing was sent twice.
    frames.send(frame("main", 13).into()).await.unwrap();
    for viewer in [&mut v1, &mut v2, &mut v3] {
        assert_eq!(next_text(viewer).await, frame("main", 13));
    }

    // s0 holds three viewers and s1 one, so s1 is the least loaded once the counts arrive.
    let loaded = format!(
        r#"{{"clusters":[{{"name":"c0","subscribers":[{{"name":"c0-s0","url":"ws://{s0}","viewers":3}},{{"name":"c0-s1","url":"ws://{s1}","viewers":1}}]}}]}}"#
    );
    eventually("the viewer counts in the topology", || async {
        (http(main, "GET", "/v1/topology", "").await == (200, loaded.clone())).then_some(())
    })
    .await;
    let (status, body) = http(main, "POST", "/v1/viewers", register).await;
    assert_eq!(
        (status, serde_json::from_str::<Assignment>(&body).unwrap()),
        (
            200,
            Assignment {
                cluster: "c0".into(),
                subscriber: format!("ws://{s1}"),
                subscriber_name: "c0-s1".into(),
            }
        )
    );

    // Shutdown closes every viewer with a Close frame, and every role returns cleanly.
    stop.send_replace(true);
    for viewer in [&mut v1, &mut v2, &mut v3, &mut football] {
        match next(viewer).await {
            Message::Close(Some(close)) => assert_eq!(close.code, CloseCode::Away),
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
    for role in roles {
        timeout(DEADLINE, role)
            .await
            .expect("the role stops in time")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_publisher_heals_the_gap_from_the_ring() {
    let (stop, stopped) = watch::channel(false);
    let (stop_cluster, cluster_stopped) = watch::channel(false);
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (s0_l, s0) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let main_role = tokio::spawn(main_publisher(
        main_l,
        RING_EPOCHS,
        frames_rx,
        until(&stopped),
    ));
    let first_cluster = tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        RING_EPOCHS,
        until(&cluster_stopped),
    ));
    let s0_role = tokio::spawn(subscriber(
        s0_l,
        "c0-s0".into(),
        cluster.to_string(),
        format!("ws://{s0}"),
        RING_EPOCHS,
        until(&stopped),
    ));

    let mut viewer = watch_stream(s0, "main", "").await;
    frames.send(frame("main", 1).into()).await.unwrap();
    assert_eq!(next_text(&mut viewer).await, frame("main", 1));

    // While the cluster publisher is down, epochs 2 and 3 reach only the main publisher's ring.
    stop_cluster.send_replace(true);
    timeout(DEADLINE, first_cluster)
        .await
        .expect("the cluster stops in time")
        .unwrap()
        .unwrap();
    frames.send(frame("main", 2).into()).await.unwrap();
    frames.send(frame("main", 3).into()).await.unwrap();

    // Back on the same address, it refills from the main publisher's ring, the subscriber
    // reconnects and refills from it, and the viewer (still connected) sees the gap in order.
    let cluster_l = TcpListener::bind(cluster).await.unwrap();
    let second_cluster = tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        RING_EPOCHS,
        until(&stopped),
    ));
    assert_eq!(next_text(&mut viewer).await, frame("main", 2));
    assert_eq!(next_text(&mut viewer).await, frame("main", 3));
    frames.send(frame("main", 4).into()).await.unwrap();
    assert_eq!(next_text(&mut viewer).await, frame("main", 4));

    stop.send_replace(true);
    for role in [main_role, second_cluster, s0_role] {
        timeout(DEADLINE, role)
            .await
            .expect("the role stops in time")
            .unwrap()
            .unwrap();
    }
}
