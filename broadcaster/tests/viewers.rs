//! The viewers' side on a network that is not instant: a slow reader's replay, admission control
//! under a flood of connections, and the notices and close codes a client acts on. All three
//! tiers run in this process on real loopback sockets; the main publisher is fed by a channel.

mod common;

use common::{http, listener, sample, sse_until, until};
use emostream_broadcaster::{
    cluster_publisher, main_publisher, subscriber, Error, Retention, Settings,
};
use emostream_protocol::wire::{Assignment, EmojiCount, EpochFrame, FrameType};
use emostream_testkit::netns::DelayProxy;
use emostream_testkit::wait_for;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, connect_async, MaybeTlsStream, WebSocketStream};

/// How long any one expected thing may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// The settings every role of this file runs with.
fn settings() -> Settings {
    common::settings(60)
}

/// An epoch frame the size of a busy stream's: 30 emojis, about 1.4 KiB.
fn realistic(epoch: u64) -> String {
    const EMOJIS: [&str; 30] = [
        "🔥", "❤️", "😂", "👍🏽", "🎉", "😮", "😢", "👏", "🙌🏿", "💯", "🤯", "😍", "🥳", "😡", "🤔",
        "👀", "💀", "🙏", "✨", "🚀", "⚽", "🏆", "🥅", "🟨", "🟥", "📣", "🎶", "🍿", "😴", "🤝",
    ];
    let frame = EpochFrame {
        kind: FrameType::Epoch,
        stream: "main".into(),
        epoch,
        start_ms: epoch * 2000,
        end_ms: epoch * 2000 + 2000,
        total: 30 * 1000,
        late: 0,
        emojis: EMOJIS
            .iter()
            .enumerate()
            .map(|(i, e)| EmojiCount {
                emoji: (*e).into(),
                count: 100_000 - i as u64 * 997,
                scaled: 100 - i as u64,
            })
            .collect(),
        other: None,
    };
    serde_json::to_string(&frame).unwrap()
}

/// A small epoch frame.
fn frame(epoch: u64) -> String {
    format!(r#"{{"type":"epoch","stream":"main","epoch":{epoch},"total":{epoch}}}"#)
}

type Role = JoinHandle<Result<(), Error>>;

/// A main publisher fed by the returned sender, and cluster publisher `c0`, until `stopped`.
async fn upper_tiers(
    settings: &Settings,
    stopped: &watch::Receiver<bool>,
) -> (
    mpsc::Sender<axum::extract::ws::Utf8Bytes>,
    SocketAddr,
    SocketAddr,
    Vec<Role>,
) {
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (frames, frames_rx) = mpsc::channel(256);
    let roles = vec![
        tokio::spawn(main_publisher(
            main_l,
            settings.clone(),
            frames_rx,
            until(stopped),
        )),
        tokio::spawn(cluster_publisher(
            cluster_l,
            "c0".into(),
            main.to_string(),
            settings.clone(),
            until(stopped),
        )),
    ];
    (frames, main, cluster, roles)
}

/// Subscriber `name` linked to `cluster`, until `stopped`.
async fn spawn_subscriber(
    name: &str,
    cluster: SocketAddr,
    settings: Settings,
    stopped: &watch::Receiver<bool>,
) -> (SocketAddr, Role) {
    let (l, addr) = listener().await;
    let role = tokio::spawn(subscriber(
        l,
        name.into(),
        cluster.to_string(),
        format!("ws://{addr}"),
        settings,
        until(stopped),
    ));
    (addr, role)
}

async fn stop_all(stop: watch::Sender<bool>, roles: Vec<Role>) {
    stop.send_replace(true);
    for role in roles {
        timeout(DEADLINE, role)
            .await
            .expect("the role stops in time")
            .unwrap()
            .unwrap();
    }
}

type Viewer = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn watch_stream(subscriber: SocketAddr, query: &str) -> Viewer {
    let url = format!("ws://{subscriber}/v1/streams/main/ws{query}");
    timeout(DEADLINE, connect_async(url))
        .await
        .expect("the upgrade answers")
        .unwrap()
        .0
}

/// The next message a viewer gets, pings aside.
async fn next<S>(viewer: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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

/// Reads `viewer` until its Close, which must be 1012 for a lost upstream; how long after
/// `lost_at` it came.
async fn closed_for_lost_upstream(viewer: &mut Viewer, lost_at: Instant) -> Duration {
    let close = match next(viewer).await {
        Message::Close(Some(close)) => close,
        other => panic!("nothing flows without an upstream; expected a Close, got {other:?}"),
    };
    assert_eq!(close.code, CloseCode::Restart);
    assert_eq!(close.reason.as_str(), "upstream lost; register again");
    lost_at.elapsed()
}

fn epoch_of(text: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(value["type"], "epoch", "only epochs expected: {text}");
    value["epoch"].as_u64().unwrap()
}

/// The topology's entry for subscriber `name`, as JSON.
async fn member(main: SocketAddr, name: &str) -> Option<serde_json::Value> {
    let (_, body) = http(main, "GET", "/v1/topology", "").await?;
    let topology: serde_json::Value = serde_json::from_str(&body).ok()?;
    topology["clusters"]
        .as_array()?
        .iter()
        .flat_map(|c| c["subscribers"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == name)
}

/// A viewer on a slow link joins with `since` over a full ring of 1.4 KiB frames (85 KiB, more
/// than its 64 KiB lag budget) while live frames arrive: it gets every epoch once, in order, and
/// no lag notice. Its socket takes 8 KiB at a time (a small receive buffer), it reads one message
/// every 15 ms (about 95 KiB/s), and the subscriber's socket holds at most 16 KiB unsent
/// (`TCP_NOTSENT_LOWAT`), so the replay waits in the viewer's outlet while live frames come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_viewer_gets_its_whole_replay_and_every_live_epoch_once() {
    const RING: u64 = 60;
    const LIVE: u64 = 20;
    let (stop, stopped) = watch::channel(false);
    let settings = settings();
    let (frames, _main, cluster, mut roles) = upper_tiers(&settings, &stopped).await;
    let (s0, role) = spawn_subscriber("c0-s0", cluster, settings, &stopped).await;
    roles.push(role);
    for e in 1..=RING {
        frames.send(realistic(e).into()).await.unwrap();
    }
    assert!(realistic(1).len() > 1024, "{}", realistic(1).len());
    // The cluster holds the whole ring before any viewer joins: a subscriber syncs a newly
    // watched stream from what its cluster holds, so the fast viewer's ring comes as a replay.
    let cluster_frames = r#"emostream_broadcaster_frames_in_total{tier="cluster"}"#;
    wait_for("the cluster to hold the ring", DEADLINE, || async {
        let metrics = http(cluster, "GET", "/metrics", "").await?.1;
        (sample(&metrics, cluster_frames)? == RING as f64).then_some(())
    })
    .await;
    // A fast viewer first, so the subscriber holds the whole ring when the slow one joins.
    let mut fast = watch_stream(s0, "?since=0").await;
    for e in 1..=RING {
        let msg = next(&mut fast).await;
        let Message::Text(text) = msg else {
            panic!("a text frame, got {msg:?}")
        };
        assert_eq!(epoch_of(&text), e);
    }

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(s0).await.unwrap();
    let (mut slow, _) = client_async(format!("ws://{s0}/v1/streams/main/ws?since=0"), tcp)
        .await
        .unwrap();
    // Live frames are published as the slow viewer reads its replay: three while epochs 11..60
    // of the replay still wait for it (which a conflating outbox of four would have cut), the
    // rest once it has caught up, each after the one before has reached it.
    let published = Arc::new(AtomicU64::new(RING));
    let publish = |e: u64| {
        let (frames, published) = (frames.clone(), Arc::clone(&published));
        async move {
            frames.send(realistic(e).into()).await.unwrap();
            published.store(e, Ordering::Relaxed);
        }
    };
    let mut pace = tokio::time::interval(Duration::from_millis(15));
    let mut got = Vec::new();
    let mut live_during_replay = 0;
    while got.len() < (RING + LIVE) as usize {
        pace.tick().await;
        let Message::Text(text) = next(&mut slow).await else {
            panic!("a text frame")
        };
        let epoch = epoch_of(&text);
        got.push(epoch);
        if epoch <= RING {
            if epoch.is_multiple_of(10) && epoch <= 30 {
                publish(RING + epoch / 10).await;
            }
            if epoch == RING {
                live_during_replay = published.load(Ordering::Relaxed) - RING;
            }
        } else if (RING + 3..RING + LIVE).contains(&epoch) {
            publish(epoch + 1).await;
        }
    }
    assert_eq!(got, (1..=RING + LIVE).collect::<Vec<_>>());
    assert_eq!(live_during_replay, 3);
    drop(slow);
    stop_all(stop, roles).await;
}

/// More viewers than `max_viewers` and a slowloris client: the viewers already in keep getting
/// every frame, the newcomers get 503 before any upgrade, the slowloris is cut off at the
/// header-read timeout, and `/register` sends nobody to a full subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_leaves_the_viewers_in_intact_and_placement_skips_full_subscribers() {
    const MAX: usize = 10;
    const FLOOD: usize = 100;
    const EPOCHS: u64 = 20;
    let (stop, stopped) = watch::channel(false);
    let settings = Settings {
        max_viewers: MAX,
        header_read_timeout: Duration::from_secs(1),
        ..settings()
    };
    let (frames, main, cluster, mut roles) = upper_tiers(&settings, &stopped).await;
    let (s0, role) = spawn_subscriber("c0-s0", cluster, settings.clone(), &stopped).await;
    roles.push(role);
    let (s1, role) = spawn_subscriber("c0-s1", cluster, settings, &stopped).await;
    roles.push(role);
    wait_for("both subscribers in the topology", DEADLINE, || async {
        let both = member(main, "c0-s0").await.is_some() && member(main, "c0-s1").await.is_some();
        both.then_some(())
    })
    .await;

    let mut inside = Vec::new();
    for _ in 0..MAX {
        inside.push(watch_stream(s0, "").await);
    }
    wait_for("c0-s0 reported full", DEADLINE, || async {
        let m = member(main, "c0-s0").await?;
        (m["viewers"] == MAX && m["room"] == 0).then_some(())
    })
    .await;
    for user in 0..5 {
        let body = format!(r#"{{"user_id":"u{user}"}}"#);
        let (status, body) = http(main, "POST", "/register", &body).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let assignment: Assignment = serde_json::from_str(&body).unwrap();
        assert_eq!(assignment.subscriber_name, "c0-s1");
    }

    // The slowloris: a request header one byte every 100 ms, for up to 30 s; and a connection
    // that says nothing at all.
    let slowloris = tokio::spawn(async move {
        let mut conn = TcpStream::connect(s0).await.unwrap();
        let started = Instant::now();
        let header = "GET /v1/streams/main/ws HTTP/1.1\r\nHost: x\r\n".to_owned()
            + &"X-Slow: 1\r\n".repeat(30);
        for byte in header.bytes() {
            if conn.write_all(&[byte]).await.is_err() {
                return started.elapsed();
            }
            let mut buf = [0u8; 64];
            let read = timeout(Duration::from_millis(100), conn.read(&mut buf)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return started.elapsed();
            }
        }
        panic!("the slowloris sent its whole header over 30 s unhindered");
    });
    let silent = tokio::spawn(async move {
        let mut conn = TcpStream::connect(s0).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = timeout(Duration::from_secs(30), conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a silent connection is closed: {read:?}"
        );
        started.elapsed()
    });

    // Frames flow while the flood knocks.
    let publishing = tokio::spawn(async move {
        for e in 1..=EPOCHS {
            frames.send(frame(e).into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        frames
    });
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            tokio::spawn(async move {
                match connect_async(format!("ws://{s0}/v1/streams/main/ws")).await {
                    Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
                        response.status().as_u16(),
                        String::from_utf8(response.body().clone().unwrap_or_default()).unwrap(),
                    ),
                    other => panic!("expected a refusal, got {other:?}"),
                }
            })
        })
        .collect();
    for refused in flood {
        assert_eq!(
            refused.await.unwrap(),
            (
                503,
                format!(r#"{{"error":"this subscriber is full ({MAX} viewers); register again"}}"#)
            )
        );
    }
    for viewer in &mut inside {
        for e in 1..=EPOCHS {
            let Message::Text(text) = next(viewer).await else {
                panic!("a text frame")
            };
            assert_eq!(epoch_of(&text), e);
        }
    }
    let frames = publishing.await.unwrap();
    // hyper's timeout is on the whole header: the slowloris's trickle does not extend it. The
    // margin: both closed 1.0 s in here; 10 s is what a loaded machine may add, and far below
    // the 30 s the clients would otherwise hold their descriptors.
    for (what, client) in [("slowloris", slowloris), ("silent", silent)] {
        let held = client.await.unwrap();
        eprintln!("the {what} client was closed after {held:?}");
        assert!(
            held >= Duration::from_millis(900) && held < Duration::from_secs(10),
            "the {what} client was closed after {held:?}"
        );
    }

    // Full everywhere: placement refuses rather than sending viewers to be refused.
    for _ in 0..MAX {
        inside.push(watch_stream(s1, "").await);
    }
    wait_for("c0-s1 reported full", DEADLINE, || async {
        let m = member(main, "c0-s1").await?;
        (m["room"] == 0).then_some(())
    })
    .await;
    assert_eq!(
        http(main, "POST", "/register", r#"{"user_id":"late"}"#)
            .await
            .unwrap(),
        (
            503,
            r#"{"error":"every live subscriber is full; retry later"}"#.to_owned()
        )
    );
    let metrics = http(s0, "GET", "/metrics", "").await.unwrap().1;
    assert_eq!(
        sample(
            &metrics,
            r#"emostream_broadcaster_viewers_refused_total{tier="subscriber"}"#
        ),
        Some(FLOOD as f64),
        "{metrics}"
    );
    drop((inside, frames));
    stop_all(stop, roles).await;
}

/// `since` older than the ring is announced before the replay, over WebSocket and SSE; a
/// subscriber that loses its upstream closes its viewers with 1012 (SSE: a `closing` event) and
/// refuses new ones with 503 until the upstream is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_told_of_gaps_and_of_a_lost_upstream() {
    let (stop, stopped) = watch::channel(false);
    let (cluster_stop, cluster_stopped) = watch::channel(false);
    let settings = Settings {
        retention: Retention::ring(4),
        ..settings()
    };
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let mut roles = vec![tokio::spawn(main_publisher(
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
    let (s0, role) = spawn_subscriber("c0-s0", cluster, settings.clone(), &stopped).await;
    roles.push(role);
    wait_for("the subscriber in the topology", DEADLINE, || async {
        member(main, "c0-s0").await.map(|_| ())
    })
    .await;
    for e in 1..=8 {
        frames.send(frame(e).into()).await.unwrap();
    }
    // Once a first viewer has epoch 8, the subscriber's ring holds 5..=8.
    let mut first = watch_stream(s0, "").await;
    loop {
        let Message::Text(text) = next(&mut first).await else {
            panic!("a text frame")
        };
        if epoch_of(&text) == 8 {
            break;
        }
    }
    drop(first);
    // A viewer that has epoch 2 missed 3 and 4, and is told so first.
    let mut viewer = watch_stream(s0, "?since=2").await;
    let Message::Text(notice) = next(&mut viewer).await else {
        panic!("a text frame")
    };
    assert_eq!(notice.as_str(), r#"{"type":"gap","since":2,"oldest":5}"#);
    for e in 5..=8 {
        let Message::Text(text) = next(&mut viewer).await else {
            panic!("a text frame")
        };
        assert_eq!(epoch_of(&text), e);
    }
    let mut sse = TcpStream::connect(s0).await.unwrap();
    sse.write_all(
        format!("GET /v1/streams/main/sse?since=2 HTTP/1.1\r\nHost: {s0}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let gap = "event: gap\ndata: {\"type\":\"gap\",\"since\":2,\"oldest\":5}\n\n";
    let seen = sse_until(&mut sse, &format!("id: 8\ndata: {}\n\n", frame(8))).await;
    assert!(
        seen.find(gap).unwrap() < seen.find("id: 5\n").unwrap(),
        "{seen}"
    );

    // The cluster publisher goes away; the subscriber's link retries and fails.
    cluster_stop.send_replace(true);
    let lost_at = Instant::now();
    timeout(DEADLINE, first_cluster)
        .await
        .expect("the cluster stops in time")
        .unwrap()
        .unwrap();
    let closed_after = closed_for_lost_upstream(&mut viewer, lost_at).await;
    // 5 s after the last heartbeat went up, which was at most 1 s before the cluster left.
    assert!(
        closed_after >= Duration::from_secs(4),
        "closed after {closed_after:?}"
    );
    sse_until(
        &mut sse,
        "event: closing\ndata: {\"type\":\"closing\",\"code\":1012,\"reason\":\"upstream lost; register again\"}\n\n",
    )
    .await;
    match connect_async(format!("ws://{s0}/v1/streams/main/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(
                response.body().as_deref(),
                Some(&br#"{"error":"this subscriber has lost its upstream; register again"}"#[..])
            );
        }
        other => panic!("expected 503, got {other:?}"),
    }

    // Back on the same address: viewers are taken again.
    let cluster_l = TcpListener::bind(cluster).await.unwrap();
    roles.push(tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        settings,
        until(&stopped),
    )));
    let mut back = wait_for("viewers taken again", DEADLINE, || async {
        let url = format!("ws://{s0}/v1/streams/main/ws?since=7");
        connect_async(url).await.ok().map(|(viewer, _)| viewer)
    })
    .await;
    let Message::Text(text) = next(&mut back).await else {
        panic!("a text frame")
    };
    assert_eq!(epoch_of(&text), 8);
    let metrics = http(s0, "GET", "/metrics", "").await.unwrap().1;
    assert_eq!(
        sample(
            &metrics,
            r#"emostream_broadcaster_upstream_lost_closes_total{tier="subscriber"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    stop_all(stop, roles).await;
}

/// "Upstream lost" goes all the way down: a cluster publisher whose main publisher has gone
/// cuts its subscribers' links (1012) and refuses them (503), so their viewers are closed with
/// 1012 too and register again where frames flow, within the documented bound (docs/broadcaster.md:
/// the cluster's 5 s, the subscriber's 5 s, the viewers' 5 s spread, and a heartbeat each). Once
/// the main publisher is back, the same subscriber takes viewers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_cut_from_main_tells_its_subscribers_and_their_viewers() {
    let (stop, stopped) = watch::channel(false);
    let (main_stop, main_stopped) = watch::channel(false);
    let settings = settings();
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let first_main = tokio::spawn(main_publisher(
        main_l,
        settings.clone(),
        frames_rx,
        until(&main_stopped),
    ));
    let mut roles = vec![tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        settings.clone(),
        until(&stopped),
    ))];
    let (s0, role) = spawn_subscriber("c0-s0", cluster, settings.clone(), &stopped).await;
    roles.push(role);
    wait_for("the subscriber in the topology", DEADLINE, || async {
        member(main, "c0-s0").await.map(|_| ())
    })
    .await;
    let mut viewer = watch_stream(s0, "").await;
    frames.send(frame(1).into()).await.unwrap();
    let Message::Text(text) = next(&mut viewer).await else {
        panic!("a text frame")
    };
    assert_eq!(epoch_of(&text), 1);

    main_stop.send_replace(true);
    let lost_at = Instant::now();
    timeout(DEADLINE, first_main)
        .await
        .expect("the main publisher stops in time")
        .unwrap()
        .unwrap();
    // `next` waits DEADLINE (20 s) at most, past the bound.
    let closed_after = closed_for_lost_upstream(&mut viewer, lost_at).await;
    // Two hops of UPSTREAM_LOST_AFTER (5 s) after heartbeats at most 1 s old, at most the spread
    // (5 s) and a heartbeat more; the main publisher said goodbye, so no silence is waited out.
    assert!(
        closed_after >= Duration::from_secs(8) && closed_after <= Duration::from_secs(17),
        "closed after {closed_after:?}"
    );
    match connect_async(format!("ws://{cluster}/internal/link")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(
                response.body().as_deref(),
                Some(
                    &br#"{"error":"this tier has lost its own upstream; it serves no frames until it is back"}"#[..]
                )
            );
        }
        other => panic!("expected 503 from the cluster, got {other:?}"),
    }
    match connect_async(format!("ws://{s0}/v1/streams/main/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503 from the subscriber, got {other:?}"),
    }

    // Back on the same address: the cluster takes its subscriber again, which takes viewers.
    let (frames, frames_rx) = mpsc::channel(64);
    roles.push(tokio::spawn(main_publisher(
        TcpListener::bind(main).await.unwrap(),
        settings,
        frames_rx,
        until(&stopped),
    )));
    let mut back = wait_for("viewers taken again", DEADLINE, || async {
        let url = format!("ws://{s0}/v1/streams/main/ws?since=1");
        connect_async(url).await.ok().map(|(viewer, _)| viewer)
    })
    .await;
    frames.send(frame(2).into()).await.unwrap();
    let Message::Text(text) = next(&mut back).await else {
        panic!("a text frame")
    };
    assert_eq!(epoch_of(&text), 2);
    stop_all(stop, roles).await;
}

/// A hole in a stream's epochs above a tier reaches its viewers: a cluster publisher cut from
/// the main publisher while the main publisher's ring (4 epochs) moved past what the cluster had
/// is told of the hole when its link is back, and passes it on, so the subscriber's live viewer
/// gets `gap` before the epochs after the hole, and a viewer joining from before the hole is told
/// of it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_above_reaches_live_and_joining_viewers_as_a_gap_notice() {
    let (stop, stopped) = watch::channel(false);
    let settings = Settings {
        retention: Retention::ring(4),
        ..settings()
    };
    let (main_l, main) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let mut roles = vec![tokio::spawn(main_publisher(
        main_l,
        settings.clone(),
        frames_rx,
        until(&stopped),
    ))];
    // The cluster reaches the main publisher through a proxy, which the test cuts.
    let (proxy_l, proxy) = listener().await;
    let cut = DelayProxy::start(proxy_l, main, None, Duration::ZERO);
    let (cluster_l, cluster) = listener().await;
    roles.push(tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        proxy.to_string(),
        settings.clone(),
        until(&stopped),
    )));
    let (s0, role) = spawn_subscriber("c0-s0", cluster, settings, &stopped).await;
    roles.push(role);
    wait_for("the subscriber in the topology", DEADLINE, || async {
        member(main, "c0-s0").await.map(|_| ())
    })
    .await;
    let mut live = watch_stream(s0, "").await;
    frames.send(frame(1).into()).await.unwrap();
    assert_eq!(epoch_of(&text_of(next(&mut live).await)), 1);

    drop(cut);
    wait_for("the cluster gone from the topology", DEADLINE, || async {
        let (_, body) = http(main, "GET", "/v1/topology", "").await?;
        (!body.contains("c0-s0")).then_some(())
    })
    .await;
    // Epochs 2 to 6 leave the main publisher's ring of 4 while the cluster cannot get them.
    for e in 2..=10 {
        frames.send(frame(e).into()).await.unwrap();
    }
    let _back = DelayProxy::start(
        TcpListener::bind(proxy).await.unwrap(),
        main,
        None,
        Duration::ZERO,
    );
    let gap = r#"{"type":"gap","stream":"main","since":1,"oldest":7}"#;
    assert_eq!(text_of(next(&mut live).await), gap);
    for e in 7..=10 {
        assert_eq!(epoch_of(&text_of(next(&mut live).await)), e);
    }
    let mut joiner = watch_stream(s0, "?since=1").await;
    assert_eq!(
        text_of(next(&mut joiner).await),
        r#"{"type":"gap","since":1,"oldest":7}"#
    );
    for e in 7..=10 {
        assert_eq!(epoch_of(&text_of(next(&mut joiner).await)), e);
    }
    stop_all(stop, roles).await;
}

/// A flood of new stream names (a frame each, as fast as the main publisher takes them) keeps
/// every tier within its `max_held_bytes` at every sample, while a viewer of a stream that goes
/// on publishing gets every epoch of it, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_streams_keeps_every_tier_within_its_bound_and_a_watched_stream_flowing() {
    const BOUND: usize = 1 << 20;
    const FLOOD: u64 = 30_000;
    let (stop, stopped) = watch::channel(false);
    let settings = Settings {
        retention: Retention {
            ring_epochs: 8,
            // Each tier's held gauges are set by its sweep, every second at this idle time.
            idle: Duration::from_secs(4),
            max_bytes: BOUND,
        },
        ..settings()
    };
    let (frames, main, cluster, mut roles) = upper_tiers(&settings, &stopped).await;
    let (s0, role) = spawn_subscriber("c0-s0", cluster, settings, &stopped).await;
    roles.push(role);
    wait_for("the subscriber in the topology", DEADLINE, || async {
        member(main, "c0-s0").await.map(|_| ())
    })
    .await;
    let mut viewer = watch_stream(s0, "").await;
    frames.send(frame(1).into()).await.unwrap();
    assert_eq!(epoch_of(&text_of(next(&mut viewer).await)), 1);

    let held = |addr: SocketAddr, tier: &'static str| async move {
        let (_, metrics) = http(addr, "GET", "/metrics", "").await?;
        sample(
            &metrics,
            &format!("emostream_broadcaster_held_bytes{{tier=\"{tier}\"}}"),
        )
    };
    // The largest each upper tier reports while the flood lasts, sampled every 100 ms.
    let most = Arc::new(std::sync::Mutex::new([0.0f64; 2]));
    let (flooding, mut flood_over) = watch::channel(true);
    let sampler = {
        let most = Arc::clone(&most);
        tokio::spawn(async move {
            while *flood_over.borrow_and_update() {
                for (i, (addr, tier)) in [(main, "main"), (cluster, "cluster")]
                    .into_iter()
                    .enumerate()
                {
                    if let Some(bytes) = held(addr, tier).await {
                        let mut most = most.lock().unwrap();
                        most[i] = most[i].max(bytes);
                    }
                }
                let _ = timeout(Duration::from_millis(100), flood_over.changed()).await;
            }
        })
    };
    let mut epoch = 1;
    for n in 0..FLOOD {
        let flood = format!(
            r#"{{"type":"epoch","stream":"flood-{n}","epoch":1,"total":1,"late":0,"emojis":[]}}"#
        );
        frames.send(flood.into()).await.unwrap();
        if n % 1_000 == 999 {
            epoch += 1;
            frames.send(frame(epoch).into()).await.unwrap();
        }
    }
    for e in 2..=epoch {
        assert_eq!(epoch_of(&text_of(next(&mut viewer).await)), e);
    }
    // Sampling goes on until each tier's sweep (every second) has reported what it holds.
    wait_for(
        "both upper tiers to report what they hold",
        DEADLINE,
        || async {
            let most = *most.lock().unwrap();
            (most[0] > 0.0 && most[1] > 0.0).then_some(())
        },
    )
    .await;
    flooding.send_replace(false);
    sampler.await.unwrap();
    let most = *most.lock().unwrap();
    eprintln!("the most main and cluster held: {most:?} bytes (bound {BOUND})");
    for (i, tier) in ["main", "cluster"].into_iter().enumerate() {
        // Each flood stream costs about 580 bytes: the flood was 17 MB, 16 times the bound.
        assert!(most[i] > 0.0, "{tier} reported what it holds");
        assert!(most[i] <= BOUND as f64, "{tier} held {} bytes", most[i]);
    }
    stop_all(stop, roles).await;
}

/// With `[auth]` on, `/register` hands a viewer token only to a signed-in user, and only for
/// themselves: no token or a forged one is 401 (`WWW-Authenticate: Bearer`), another user's
/// `user_id` 403, the token's own user is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_register_takes_only_a_valid_user_token_for_its_own_user() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let (stop, stopped) = watch::channel(false);
    let auth = emostream_protocol::config::AuthConfig {
        enabled: true,
        hs256_secret: Some("platform-secret".into()),
        audience: "emostream".into(),
        ..Default::default()
    };
    let settings = Settings {
        user_tokens: emostream_protocol::auth::UserTokens::from_config(&auth)
            .unwrap()
            .map(Arc::new),
        ..settings()
    };
    let (_frames, main, cluster, mut roles) = upper_tiers(&settings, &stopped).await;
    let (_s0, role) = spawn_subscriber("c0-s0", cluster, settings, &stopped).await;
    roles.push(role);
    wait_for("the subscriber in the topology", DEADLINE, || async {
        member(main, "c0-s0").await.map(|_| ())
    })
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let bearer = |secret: &str| {
        let claims = serde_json::json!({"sub": "u1", "aud": "emostream", "exp": exp});
        let jwt = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Authorization: Bearer {jwt}\r\n")
    };
    let register = |headers: String, user: &'static str| async move {
        let body = format!(r#"{{"user_id":"{user}","stream":"main"}}"#);
        let mut conn = TcpStream::connect(main).await.unwrap();
        let request = format!(
            "POST /register HTTP/1.1\r\nHost: main\r\nConnection: close\r\n\
             Content-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        emostream_testkit::http::parse(&raw).expect("an HTTP answer")
    };
    let missing = register(String::new(), "u1").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (
            401,
            r#"{"error":"a user token is required (Authorization: Bearer)"}"#
        )
    );
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let forged = register(bearer("guessed"), "u1").await;
    assert_eq!(
        (forged.status, forged.body.as_str()),
        (
            401,
            r#"{"error":"the user token is not valid: its signature does not match"}"#
        )
    );
    let other = register(bearer("platform-secret"), "u2").await;
    assert_eq!(
        (other.status, other.body.as_str()),
        (
            403,
            r#"{"error":"the user token is for another user than user_id"}"#
        )
    );
    let placed = register(bearer("platform-secret"), "u1").await;
    assert_eq!(placed.status, 200, "{}", placed.body);
    let assignment: Assignment = serde_json::from_str(&placed.body).unwrap();
    assert_eq!(assignment.subscriber_name, "c0-s0");
    stop_all(stop, roles).await;
}

/// SSE viewers are served on the raw socket, beside hyper on the same port. A viewer resuming
/// with `Last-Event-ID` (which wins over `since`) gets exactly the answer's head, its `retry:`,
/// the epochs after the one it has and every live one, each event as it is and nothing between
/// them but pings (no chunk framing); its leaving is noticed; at shutdown it is told why and the
/// connection is closed, not reset. The health check, the page, a WebSocket upgrade, a POST to
/// the SSE path and a GET of it as an absolute URL are still answered by hyper, and a bad stream
/// id by the native path, in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_viewers_get_exact_events_on_the_raw_socket_and_hyper_keeps_every_other_route() {
    let (stop, stopped) = watch::channel(false);
    let settings = Settings {
        page: Some(emostream_web::Page {
            gateway: "http://127.0.0.1:9".into(),
            main: None,
        }),
        ..settings()
    };
    let (frames, _, cluster, mut roles) = upper_tiers(&settings, &stopped).await;
    let (s0, role) = spawn_subscriber("c0-s0", cluster, settings, &stopped).await;
    roles.push(role);
    let mut ws = watch_stream(s0, "").await;
    for e in 1..=4 {
        frames.send(frame(e).into()).await.unwrap();
    }
    while epoch_of(&text_of(next(&mut ws).await)) != 4 {}

    let mut sse = TcpStream::connect(s0).await.unwrap();
    sse.write_all(
        format!(
            "GET /v1/streams/main/sse?since=1 HTTP/1.1\r\nHost: {s0}\r\nLast-Event-ID: 2\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let event = |e: u64| format!("id: {e}\ndata: {}\n\n", frame(e));
    let mut seen = sse_until(&mut sse, &event(4)).await;
    frames.send(frame(5).into()).await.unwrap();
    seen += &sse_until(&mut sse, &event(5)).await;
    let (head, body) = seen.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         connection: close"
    );
    // Pings are comments, whole events of their own, wherever they fall.
    let body = body.replace(": ping\n\n", "");
    let retry = body
        .strip_prefix("retry: ")
        .and_then(|rest| rest.split_once("\n\n"))
        .map(|(ms, _)| ms.parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("no retry: first in {body:?}"));
    assert!((2_000..7_000).contains(&retry), "{retry}");
    assert_eq!(
        body,
        format!("retry: {retry}\n\n{}{}{}", event(3), event(4), event(5))
    );
    assert_eq!(epoch_of(&text_of(next(&mut ws).await)), 5);

    // hyper's routes, on the same port.
    assert_eq!(
        http(s0, "GET", "/healthz", "").await,
        Some((200, "ok".into()))
    );
    let (status, page) = http(s0, "GET", "/", "").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    assert_eq!(
        http(s0, "GET", "/config.json", "").await,
        Some((
            200,
            r#"{"gateway":"http://127.0.0.1:9","main":null}"#.into()
        ))
    );
    assert_eq!(
        http(s0, "POST", "/v1/streams/main/sse", "").await,
        Some((405, r#"{"error":"method not allowed"}"#.into()))
    );
    assert_eq!(
        http(s0, "GET", "/v1/streams/Main!/sse", "").await,
        Some((
            422,
            r#"{"error":"a stream id is 1 to 64 of [a-z0-9_-]","field":"stream"}"#.into()
        ))
    );
    assert_eq!(
        http(s0, "GET", &format!("http://{s0}/v1/streams/main/sse"), "").await,
        Some((
            400,
            r#"{"error":"an SSE request's target is its path, not an absolute URL"}"#.into()
        ))
    );
    let mut upgraded = watch_stream(s0, "?since=4").await;
    assert_eq!(epoch_of(&text_of(next(&mut upgraded).await)), 5);

    // The viewer leaves: its connection is gone from the count without a frame to write.
    let open_sse = r#"emostream_broadcaster_connections{tier="subscriber",conn="sse"}"#;
    let metrics = http(s0, "GET", "/metrics", "").await.unwrap().1;
    assert_eq!(sample(&metrics, open_sse), Some(1.0));
    drop(sse);
    wait_for("the SSE viewer's leaving noticed", DEADLINE, || async {
        let metrics = http(s0, "GET", "/metrics", "").await?.1;
        (sample(&metrics, open_sse)? == 0.0).then_some(())
    })
    .await;

    // At shutdown a viewer is told why, then the connection ends cleanly.
    let mut sse = TcpStream::connect(s0).await.unwrap();
    sse.write_all(format!("GET /v1/streams/main/sse HTTP/1.1\r\nHost: {s0}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    sse_until(&mut sse, &event(5)).await;
    let ending = tokio::spawn(async move {
        let mut rest = Vec::new();
        timeout(DEADLINE, sse.read_to_end(&mut rest))
            .await
            .expect("the connection ends")
            .expect("closed, not reset");
        String::from_utf8(rest).unwrap()
    });
    stop_all(stop, roles).await;
    let rest = ending.await.unwrap().replace(": ping\n\n", "");
    assert_eq!(
        rest,
        "event: closing\ndata: {\"type\":\"closing\",\"code\":1001,\"reason\":\"shutting down\"}\n\n"
    );
}

fn text_of(message: Message) -> String {
    match message {
        Message::Text(text) => text.to_string(),
        other => panic!("a text frame, not {other:?}"),
    }
}
