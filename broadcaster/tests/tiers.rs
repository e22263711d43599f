//! All three tiers in one process on real sockets: a main publisher fed by a channel instead of
//! Kafka, one cluster publisher, two subscribers, and WebSocket viewers.

mod common;

use common::{http, listener, sse_until, until};
use emostream_broadcaster::{
    cluster_publisher, main_publisher, subscriber, Error, RegistrationLimit, Settings,
};
use emostream_protocol::wire::{Assignment, ErrorBody};
use emostream_testkit::wait_for;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// How long any one expected thing may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// The settings every role of this file runs with.
fn settings() -> Settings {
    common::settings(8)
}

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

/// Subscriber `name`, listening on `l` (which is `addr`) and linked to the cluster publisher at
/// `cluster`, until `stopped`.
fn spawn_subscriber(
    (l, addr): (TcpListener, SocketAddr),
    name: &str,
    cluster: SocketAddr,
    settings: Settings,
    stopped: &watch::Receiver<bool>,
) -> JoinHandle<Result<(), Error>> {
    tokio::spawn(subscriber(
        l,
        name.into(),
        cluster.to_string(),
        format!("ws://{addr}"),
        settings,
        until(stopped),
    ))
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
        settings(),
        frames_rx,
        until(&stopped),
    ))];

    // Before any cluster links, the main publisher has nobody to assign.
    assert_eq!(
        http(main, "GET", "/healthz", "")
            .await
            .expect("an HTTP answer"),
        (200, "ok".to_owned())
    );
    let register = r#"{"user_id":"u1","group_id":"g1"}"#;
    assert_eq!(
        http(main, "POST", "/register", register)
            .await
            .expect("an HTTP answer"),
        (503, r#"{"error":"no live subscriber"}"#.to_owned())
    );
    assert_eq!(
        http(main, "POST", "/unregister", register)
            .await
            .expect("an HTTP answer"),
        (200, r#"{"ok":true}"#.to_owned())
    );
    assert_eq!(
        http(main, "GET", "/nowhere", "")
            .await
            .expect("an HTTP answer"),
        (404, r#"{"error":"not found"}"#.to_owned())
    );
    let (status, body) = http(main, "POST", "/v1/viewers", r#"{"group_id":"g1"}"#)
        .await
        .expect("an HTTP answer");
    let body: ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 422);
    assert!(body.error.contains("missing field `user_id`"), "{body:?}");
    // A user id is bounded as the gateway bounds it: 128 characters, whatever their bytes.
    let register_as = |user_id: &str| format!(r#"{{"user_id":"{user_id}"}}"#);
    let too_long = (
        422,
        r#"{"error":"user_id must be at most 128 characters","field":"user_id"}"#.to_owned(),
    );
    for user_id in ["u".repeat(1 << 20), "é".repeat(129)] {
        let answer = http(main, "POST", "/v1/viewers", &register_as(&user_id)).await;
        assert_eq!(answer.expect("an HTTP answer"), too_long);
    }
    assert_eq!(
        http(main, "POST", "/v1/viewers", &register_as(&"é".repeat(128)))
            .await
            .expect("an HTTP answer")
            .0,
        503,
        "taken, and placed nowhere yet"
    );

    roles.push(tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        settings(),
        until(&stopped),
    )));
    for (l, addr, name) in [(s0_l, s0, "c0-s0"), (s1_l, s1, "c0-s1")] {
        roles.push(spawn_subscriber(
            (l, addr),
            name,
            cluster,
            settings(),
            &stopped,
        ));
    }

    // Heartbeats travel subscriber → cluster → main; registration works once one has arrived.
    let assignment: Assignment = wait_for("a live subscriber", DEADLINE, || async {
        let (status, body) = http(main, "POST", "/register", register)
            .await
            .expect("an HTTP answer");
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
        r#"{{"viewers":0,"clusters":[{{"name":"c0","viewers":0,"subscribers":[{{"name":"c0-s0","url":"ws://{s0}","viewers":0,"room":1000,"stream_room":64}},{{"name":"c0-s1","url":"ws://{s1}","viewers":0,"room":1000,"stream_room":64}}]}}]}}"#
    );
    wait_for("both subscribers in the topology", DEADLINE, || async {
        (http(main, "GET", "/v1/topology", "")
            .await
            .expect("an HTTP answer")
            == (200, both_idle.clone()))
            .then_some(())
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

    // s0 holds three viewers (of two streams) and s1 one, so s1 is the least loaded once the
    // counts arrive.
    let loaded = format!(
        r#"{{"viewers":4,"clusters":[{{"name":"c0","viewers":4,"subscribers":[{{"name":"c0-s0","url":"ws://{s0}","viewers":3,"room":997,"stream_room":62}},{{"name":"c0-s1","url":"ws://{s1}","viewers":1,"room":999,"stream_room":63}}]}}]}}"#
    );
    wait_for("the viewer counts in the topology", DEADLINE, || async {
        (http(main, "GET", "/v1/topology", "")
            .await
            .expect("an HTTP answer")
            == (200, loaded.clone()))
            .then_some(())
    })
    .await;
    let (status, body) = http(main, "POST", "/v1/viewers", register)
        .await
        .expect("an HTTP answer");
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
        settings(),
        frames_rx,
        until(&stopped),
    ));
    let first_cluster = tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        settings(),
        until(&cluster_stopped),
    ));
    let s0_role = spawn_subscriber((s0_l, s0), "c0-s0", cluster, settings(), &stopped);

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
        settings(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_on_a_non_loopback_address_needs_the_link_secret() {
    let (stop, stopped) = watch::channel(false);
    // 0.0.0.0 takes connections from every host, as any non-loopback address does.
    let open = || async { TcpListener::bind("0.0.0.0:0").await.unwrap() };
    let secretless = [Some(String::new()), None];
    for link_secret in secretless {
        let settings = Settings {
            link_secret,
            ..settings()
        };
        let (_frames, frames_rx) = mpsc::channel(1);
        let main = main_publisher(open().await, settings.clone(), frames_rx, until(&stopped));
        let cluster = cluster_publisher(
            open().await,
            "c0".into(),
            "127.0.0.1:9".into(),
            settings.clone(),
            until(&stopped),
        );
        let sub = subscriber(
            open().await,
            "c0-s0".into(),
            "127.0.0.1:9".into(),
            "ws://h:1".into(),
            settings,
            until(&stopped),
        );
        for refused in [
            timeout(DEADLINE, main).await.unwrap(),
            timeout(DEADLINE, cluster).await.unwrap(),
            timeout(DEADLINE, sub).await.unwrap(),
        ] {
            let message = refused.unwrap_err().to_string();
            assert!(
                message.starts_with("listening on 0.0.0.0:")
                    && message.ends_with(
                        ", which is not a loopback address, needs broadcaster.link_secret (or \
                         EMOSTREAM_BROADCASTER__LINK_SECRET): without it any host that reaches \
                         this port could link to this tier"
                    ),
                "{message}"
            );
        }
    }
    // With a secret it serves, until told to stop.
    let settings = Settings {
        link_secret: Some("tier-secret".into()),
        ..settings()
    };
    let (_frames, frames_rx) = mpsc::channel(1);
    let main = tokio::spawn(main_publisher(
        open().await,
        settings,
        frames_rx,
        until(&stopped),
    ));
    stop.send_replace(true);
    timeout(DEADLINE, main).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_secrets_sse_resume_and_clear_errors() {
    use emostream_broadcaster::TokenKey;
    use emostream_protocol::wire::Admission;
    use std::time::SystemTime;

    let (stop, stopped) = watch::channel(false);
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (s0_l, s0) = listener().await;
    let ttl = Duration::from_secs(60);
    let settings = Settings {
        tokens: Some(TokenKey::new("viewer-key", ttl)),
        link_secret: Some("tier-secret".into()),
        ..settings()
    };
    let (frames, frames_rx) = mpsc::channel(64);
    let mut roles: Vec<JoinHandle<Result<(), Error>>> = vec![tokio::spawn(main_publisher(
        main_l,
        settings.clone(),
        frames_rx,
        until(&stopped),
    ))];
    roles.push(tokio::spawn(cluster_publisher(
        cluster_l,
        "c0".into(),
        main.to_string(),
        settings.clone(),
        until(&stopped),
    )));
    roles.push(spawn_subscriber(
        (s0_l, s0),
        "c0-s0",
        cluster,
        settings,
        &stopped,
    ));

    // A tier without the shared secret, or with another, is turned away.
    for header in [None, Some("Bearer wrong")] {
        let mut request = format!("ws://{cluster}/internal/link")
            .into_client_request()
            .unwrap();
        if let Some(h) = header {
            request
                .headers_mut()
                .insert("authorization", h.parse().unwrap());
        }
        match connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401)
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }

    // With the right secret the tiers link, and registration hands out a signed token.
    let admission: Admission = wait_for("a live subscriber", DEADLINE, || async {
        let (status, body) = http(main, "POST", "/v1/viewers", r#"{"user_id":"u1"}"#)
            .await
            .expect("an HTTP answer");
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    })
    .await;
    let token = admission.token.expect("a token when viewer auth is on");
    assert!(admission.token_expires_s.is_some());
    for e in 1..=3 {
        frames.send(frame("main", e).into()).await.unwrap();
    }

    // No token, a forged one, an expired one: 401 with a JSON reason; nothing upgrades.
    let expired = TokenKey::new("viewer-key", ttl)
        .issue("u1", "main", SystemTime::now() - Duration::from_secs(3600))
        .0;
    let forged = TokenKey::new("not-the-key", ttl)
        .issue("u1", "main", SystemTime::now())
        .0;
    let football = TokenKey::new("viewer-key", ttl)
        .issue("u1", "football", SystemTime::now())
        .0;
    for (query, why) in [
        (
            String::new(),
            "a viewer token is required: register at the main publisher",
        ),
        (
            format!("?token={forged}"),
            "the viewer token's signature does not match",
        ),
        (
            format!("?token={expired}"),
            "the viewer token has expired: register again",
        ),
        ("?token=garbage".into(), "the viewer token is malformed"),
        (
            format!("?token={football}"),
            "the viewer token is for another stream: register for this one",
        ),
    ] {
        let want = (401, format!(r#"{{"error":"{why}"}}"#));
        for route in ["ws", "sse"] {
            let path = format!("/v1/streams/main/{route}{query}");
            assert_eq!(
                http(s0, "GET", &path, "").await.expect("an HTTP answer"),
                want,
                "{path}"
            );
        }
        let url = format!("ws://{s0}/v1/streams/main/ws{query}");
        assert!(connect_async(url).await.is_err());
    }

    // The real token works, as a query parameter for WebSocket…
    let mut viewer = watch_stream(s0, "main", &format!("?token={token}&since=1")).await;
    assert_eq!(next_text(&mut viewer).await, frame("main", 2));
    assert_eq!(next_text(&mut viewer).await, frame("main", 3));

    // …and as a bearer header for SSE, resuming after Last-Event-ID: epochs 2 and 3, then live.
    let mut sse = TcpStream::connect(s0).await.unwrap();
    let request = format!(
        "GET /v1/streams/main/sse HTTP/1.1\r\nHost: {s0}\r\nAuthorization: Bearer {token}\r\n\
         Last-Event-ID: 1\r\n\r\n"
    );
    sse.write_all(request.as_bytes()).await.unwrap();
    let event = |e: u64| format!("id: {e}\ndata: {}\n\n", frame("main", e));
    let seen = sse_until(&mut sse, &event(3)).await;
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
    assert!(
        seen.contains("content-type: text/event-stream\r\n"),
        "{seen}"
    );
    assert!(!seen.contains("id: 1\n"), "{seen}");
    assert!(
        seen.find(&event(2)).unwrap() < seen.find(&event(3)).unwrap(),
        "{seen}"
    );
    frames.send(frame("main", 4).into()).await.unwrap();
    sse_until(&mut sse, &event(4)).await;
    assert_eq!(next_text(&mut viewer).await, frame("main", 4));

    // A token that expires while its viewer watches ends the connection: 1008 on WebSocket, a
    // `closing` event on SSE. Valid for 2 to 3 s (expiry is in whole Unix seconds).
    let brief = TokenKey::new("viewer-key", Duration::from_secs(3))
        .issue("u2", "main", SystemTime::now())
        .0;
    let mut expiring = watch_stream(s0, "main", &format!("?token={brief}")).await;
    let mut expiring_sse = TcpStream::connect(s0).await.unwrap();
    let request = format!(
        "GET /v1/streams/main/sse?token={brief} HTTP/1.1\r\nHost: {s0}\r\nConnection: close\r\n\r\n"
    );
    expiring_sse.write_all(request.as_bytes()).await.unwrap();
    loop {
        match next(&mut expiring).await {
            Message::Text(_) => continue,
            Message::Close(Some(close)) => {
                assert_eq!(close.code, CloseCode::Policy);
                assert_eq!(close.reason.as_str(), "token expired; register again");
                break;
            }
            other => panic!("expected the Close, got {other:?}"),
        }
    }
    let closing = r#"event: closing
data: {"type":"closing","code":1008,"reason":"token expired; register again"}

"#;
    let seen = sse_until(&mut expiring_sse, closing).await;
    assert!(seen.contains(&event(4)), "{seen}");

    // Clear errors for what cannot be served.
    let bad_id = format!(
        "GET /v1/streams/main/sse HTTP/1.1\r\nHost: {s0}\r\nAuthorization: Bearer {token}\r\n\
         Last-Event-ID: yesterday\r\nConnection: close\r\n\r\n"
    );
    let mut conn = TcpStream::connect(s0).await.unwrap();
    conn.write_all(bad_id.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.ends_with(
        r#"{"error":"Last-Event-ID must be an epoch (a whole number)","field":"Last-Event-ID"}"#
    ));
    assert_eq!(
        http(
            s0,
            "GET",
            &format!("/v1/streams/Main!/ws?token={token}"),
            ""
        )
        .await
        .expect("an HTTP answer"),
        (
            422,
            r#"{"error":"a stream id is 1 to 64 of [a-z0-9_-]","field":"stream"}"#.into()
        )
    );
    assert_eq!(
        http(s0, "GET", "/v2/anything", "")
            .await
            .expect("an HTTP answer"),
        (404, r#"{"error":"not found"}"#.into())
    );
    assert_eq!(
        http(s0, "POST", "/metrics", "")
            .await
            .expect("an HTTP answer"),
        (405, r#"{"error":"method not allowed"}"#.into())
    );
    let (status, metrics) = http(s0, "GET", "/metrics", "")
        .await
        .expect("an HTTP answer");
    assert_eq!(status, 200);
    for line in [
        r#"emostream_broadcaster_unauthorized_total{tier="subscriber"} 15"#,
        r#"emostream_broadcaster_token_expiry_closes_total{tier="subscriber"} 2"#,
        r#"emostream_broadcaster_resume_hits_total{tier="subscriber"} 2"#,
        r#"emostream_broadcaster_connections{tier="subscriber",conn="sse"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    stop.send_replace(true);
    for role in roles {
        timeout(DEADLINE, role)
            .await
            .expect("the role stops in time")
            .unwrap()
            .unwrap();
    }
}

/// Trend frames as the dataflow writes them, spaced oddly like [`frame`] so that a
/// re-serialization would show. `n` stands for the content.
fn trending(stream: &str, epoch: u64, n: u64) -> String {
    format!(
        r#"{{"type":"trending", "stream":"{stream}","epoch":{epoch},"start_ms":{},"end_ms":{},"window_epochs":15,"emojis":[{{"emoji":"🔥","count":{n}}}]}}"#,
        epoch.saturating_sub(14) * 2000,
        epoch * 2000 + 2000
    )
}

fn sentiment(stream: &str, epoch: u64, index: &str) -> String {
    format!(
        r#"{{"type":"sentiment", "stream":"{stream}","epoch":{epoch},"start_ms":{},"end_ms":{},"window_epochs":15,"this_epoch":{{"index":null,"scored":0,"taps":2}},"window":{{"index":{index},"scored":10,"taps":12}}}}"#,
        epoch.saturating_sub(14) * 2000,
        epoch * 2000 + 2000
    )
}

fn popular(epoch: u64, taps: u64) -> String {
    format!(
        r#"{{"type":"popular", "stream":"*","epoch":{epoch},"start_ms":{},"end_ms":{},"window_epochs":15,"streams":[{{"stream":"main","taps":{taps},"taps_per_epoch":2.0}}]}}"#,
        epoch.saturating_sub(14) * 2000,
        epoch * 2000 + 2000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trend_frames_reach_the_viewers_of_their_stream_newest_first_at_join() {
    let (stop, stopped) = watch::channel(false);
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (s0_l, s0) = listener().await;
    let (s1_l, s1) = listener().await;
    let (frames, frames_rx) = mpsc::channel(64);
    let mut roles: Vec<JoinHandle<Result<(), Error>>> = vec![
        tokio::spawn(main_publisher(
            main_l,
            settings(),
            frames_rx,
            until(&stopped),
        )),
        tokio::spawn(cluster_publisher(
            cluster_l,
            "c0".into(),
            main.to_string(),
            settings(),
            until(&stopped),
        )),
    ];
    for (l, addr, name) in [(s0_l, s0, "c0-s0"), (s1_l, s1, "c0-s1")] {
        roles.push(spawn_subscriber(
            (l, addr),
            name,
            cluster,
            settings(),
            &stopped,
        ));
    }
    let send = |text: String| {
        let frames = frames.clone();
        async move { frames.send(text.into()).await.unwrap() }
    };

    // Each viewer's first epoch frame proves it joined: everything after reaches it live.
    let mut vm = watch_stream(s0, "main", "").await;
    let mut vf = watch_stream(s0, "football", "").await;
    send(frame("main", 10)).await;
    send(frame("football", 10)).await;
    assert_eq!(next_text(&mut vm).await, frame("main", 10));
    assert_eq!(next_text(&mut vf).await, frame("football", 10));

    // Trend frames carry the epochs of epoch frames, and each kind has its own "newest": none of
    // these is a duplicate of another. One frame at a time, each awaited where it must arrive:
    // a viewer's outbox conflates past 4 frames, and this test is about routing, not bursts.
    for (text, to_main, to_football) in [
        (trending("main", 10, 5), true, false),
        (sentiment("main", 10, "0.220923"), true, false),
        (trending("football", 10, 7), false, true),
        (popular(10, 30), true, true),
        (frame("main", 11), true, false),
        (trending("main", 11, 6), true, false),
    ] {
        send(text.clone()).await;
        if to_main {
            assert_eq!(next_text(&mut vm).await, text);
        }
        if to_football {
            assert_eq!(next_text(&mut vf).await, text);
        }
    }

    // An older trend epoch and a repeat are dropped; the same epoch with new content (a
    // re-publication after a restart) replaces the stored one; epoch frames are unaffected.
    for text in [
        trending("main", 9, 99),
        sentiment("main", 10, "0.220923"),
        popular(9, 1),
        sentiment("main", 10, "-0.5"),
        frame("main", 12),
    ] {
        send(text).await;
    }
    assert_eq!(next_text(&mut vm).await, sentiment("main", 10, "-0.5"));
    assert_eq!(next_text(&mut vm).await, frame("main", 12));

    // A viewer joining gets the epoch replay, then the newest of each trend frame it sees: from
    // s0's own hub, and from s1, new to the stream, through the cluster's backlog.
    let latest = [
        trending("main", 11, 6),
        sentiment("main", 10, "-0.5"),
        popular(10, 30),
    ];
    let mut joiners = vec![
        (watch_stream(s0, "main", "").await, vec![frame("main", 12)]),
        (
            watch_stream(s1, "main", "?since=10").await,
            vec![frame("main", 11), frame("main", 12)],
        ),
    ];
    for (viewer, epochs) in &mut joiners {
        for want in epochs.iter().chain(&latest) {
            assert_eq!(&next_text(viewer).await, want);
        }
    }
    let mut fresh = watch_stream(s1, "football", "").await;
    assert_eq!(next_text(&mut fresh).await, frame("football", 10));
    assert_eq!(next_text(&mut fresh).await, trending("football", 10, 7));
    assert_eq!(next_text(&mut fresh).await, popular(10, 30));

    // SSE: trend frames are events without an id, so Last-Event-ID stays an epoch.
    let mut sse = TcpStream::connect(s1).await.unwrap();
    let request =
        format!("GET /v1/streams/main/sse HTTP/1.1\r\nHost: {s1}\r\nLast-Event-ID: 11\r\n\r\n");
    sse.write_all(request.as_bytes()).await.unwrap();
    let seen = sse_until(&mut sse, &format!("data: {}\n\n", popular(10, 30))).await;
    // Each event whole, in this order.
    let at: Vec<usize> = [
        format!("id: 12\ndata: {}\n\n", frame("main", 12)),
        format!("data: {}\n\n", latest[0]),
        format!("data: {}\n\n", latest[1]),
        format!("data: {}\n\n", latest[2]),
    ]
    .iter()
    .map(|event| {
        seen.find(event)
            .unwrap_or_else(|| panic!("{event:?} in {seen}"))
    })
    .collect();
    assert!(at.is_sorted(), "{seen}");
    assert_eq!(seen.matches("id: ").count(), 1, "{seen}");

    // The next frame every viewer of a stream gets is the next one published: nothing was sent
    // twice, and no other stream's trend frame came in between.
    send(trending("football", 13, 8)).await;
    send(popular(13, 31)).await;
    for viewer in [&mut vf, &mut fresh] {
        assert_eq!(next_text(viewer).await, trending("football", 13, 8));
        assert_eq!(next_text(viewer).await, popular(13, 31));
    }
    for viewer in std::iter::once(&mut vm).chain(joiners.iter_mut().map(|(v, _)| v)) {
        assert_eq!(next_text(viewer).await, popular(13, 31));
    }
    sse_until(&mut sse, &format!("data: {}\n\n", popular(13, 31))).await;

    stop.send_replace(true);
    for role in roles {
        timeout(DEADLINE, role)
            .await
            .expect("the role stops in time")
            .unwrap()
            .unwrap();
    }
}

/// The next message, skipping the subscriber's own pings (each viewer gets its first at its own
/// offset, which may fall inside a test).
async fn past_pings(
    viewer: &mut Viewer,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    loop {
        match timeout(DEADLINE, viewer.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => continue,
            other => return other,
        }
    }
}

/// A raw WebSocket handshake on its own connection; returns the socket once the 101 is read,
/// after checking the accept key the way RFC 6455 says a client must.
async fn raw_upgrade(subscriber: SocketAddr, stream: &str) -> TcpStream {
    let mut conn = TcpStream::connect(subscriber).await.unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET /v1/streams/{stream}/ws HTTP/1.1\r\nHost: {subscriber}\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let head = common::response_head(&mut conn, DEADLINE)
        .await
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The RFC's own example key and accept value.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    conn
}

/// Everything the subscriber sends until it closes the connection.
async fn read_to_close(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(DEADLINE, conn.read_to_end(&mut got))
        .await
        .expect("the subscriber closes in time")
        .unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_speak_websocket_and_a_broken_client_gets_its_close_code() {
    let (stop, stopped) = watch::channel(false);
    let (s_l, s) = listener().await;
    // No tier above: viewers join after the sync wait with an empty ring, which is all this
    // test needs.
    let (_, nobody) = listener().await;
    let role = spawn_subscriber((s_l, s), "s", nobody, settings(), &stopped);

    // A well-behaved client: its ping is answered with the same payload, its Close is echoed.
    let mut viewer = watch_stream(s, "main", "").await;
    use futures_util::SinkExt;
    viewer
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match past_pings(&mut viewer).await {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }
    viewer.close(None).await.unwrap();
    match past_pings(&mut viewer).await {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::Normal),
        other => panic!("expected the Close echoed, got {other:?}"),
    }

    // Unmasked client frames fail the connection with 1002; a message over 4 KiB with 1009.
    let mut unmasked = raw_upgrade(s, "main").await;
    unmasked.write_all(b"\x81\x02hi").await.unwrap();
    assert_eq!(read_to_close(&mut unmasked).await, b"\x88\x02\x03\xea");
    let mut oversized = raw_upgrade(s, "main").await;
    oversized
        .write_all(&[0x81, 0x80 | 126, 0x13, 0x88, 1, 2, 3, 4])
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut oversized).await, b"\x88\x02\x03\xf1");
    // RSV bits without an extension: 1002.
    let mut rsv = raw_upgrade(s, "main").await;
    rsv.write_all(&[0xC1, 0x80, 1, 2, 3, 4]).await.unwrap();
    assert_eq!(read_to_close(&mut rsv).await, b"\x88\x02\x03\xea");
    // A Close with a code no peer may send (1005 is for reporting "no code" locally) is not
    // echoed: 1002. A registered one (4000, the application's) is.
    let mut reserved = raw_upgrade(s, "main").await;
    reserved
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xed])
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut reserved).await, b"\x88\x02\x03\xea");
    let mut own = raw_upgrade(s, "main").await;
    own.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x0f, 0xa0])
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut own).await, b"\x88\x02\x0f\xa0");

    // A key that is not 16 bytes of base64: 400 before any upgrade.
    let mut conn = TcpStream::connect(s).await.unwrap();
    conn.write_all(
        format!(
            "GET /v1/streams/main/ws HTTP/1.1\r\nHost: {s}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: not-a-key\r\nSec-WebSocket-Version: 13\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = String::from_utf8(read_to_close(&mut conn).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"`Sec-WebSocket-Key` is not 16 bytes in base64"}"#),
        "{answer}"
    );

    // A plain GET on the WebSocket route: a clear 400, not a hang or a 200.
    let (status, body) = http(s, "GET", "/v1/streams/main/ws", "")
        .await
        .expect("an HTTP answer");
    assert_eq!(status, 400);
    let error: ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(error.error, "Connection header did not include 'upgrade'");

    stop.send_replace(true);
    timeout(DEADLINE, role).await.unwrap().unwrap().unwrap();
}

/// The main publisher's `/register` limit with a burst of 3 and 1 a second, believing the
/// forwarding headers of `trusted_proxies`: a fourth registration within a second of the first
/// cannot pass, and waits 1 s for its token.
fn three_registrations_a_second(trusted_proxies: &[&str]) -> Settings {
    Settings {
        registrations: RegistrationLimit {
            per_s: 1,
            burst: 3,
            ..common::registrations(trusted_proxies)
        },
        ..settings()
    }
}

/// `POST /register` as a load balancer passes it on for `client`.
async fn register_for(main: SocketAddr, client: &str) -> emostream_testkit::http::Response {
    emostream_testkit::http::post_json_with(
        &main.to_string(),
        "/register",
        &[("X-Forwarded-For", client)],
        r#"{"user_id":"u1"}"#,
    )
    .await
    .expect("an HTTP answer")
}

/// One client past its registration burst is refused with 429 and `Retry-After`, and counted;
/// another client behind the same trusted proxy still registers: every assignment holds room
/// at its subscriber for a few seconds, so one client's flood would otherwise fill placement
/// for every viewer (review M8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_registration_burst_gets_429_and_another_still_registers() {
    let (stop, stopped) = watch::channel(false);
    let (main_l, main) = listener().await;
    let (cluster_l, cluster) = listener().await;
    let (s0_l, s0) = listener().await;
    let (_frames, frames_rx) = mpsc::channel(1);
    let roles = vec![
        tokio::spawn(main_publisher(
            main_l,
            three_registrations_a_second(&["127.0.0.1"]),
            frames_rx,
            until(&stopped),
        )),
        tokio::spawn(cluster_publisher(
            cluster_l,
            "c0".into(),
            main.to_string(),
            settings(),
            until(&stopped),
        )),
        spawn_subscriber((s0_l, s0), "c0-s0", cluster, settings(), &stopped),
    ];
    // Waited for on /v1/topology, which takes no registration.
    wait_for("a live subscriber", DEADLINE, || async {
        let (_, topology) = http(main, "GET", "/v1/topology", "")
            .await
            .expect("an HTTP answer");
        topology.contains(r#""name":"c0-s0""#).then_some(())
    })
    .await;

    let placed = Assignment {
        cluster: "c0".into(),
        subscriber: format!("ws://{s0}"),
        subscriber_name: "c0-s0".into(),
    };
    for _ in 0..3 {
        let answer = register_for(main, "203.0.113.1").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json::<Assignment>(), placed);
    }
    let refused = register_for(main, "203.0.113.1").await;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (
            429,
            r#"{"error":"too many registrations from this address, slow down"}"#
        )
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Another address the proxy forwards has its own bucket.
    let other = register_for(main, "203.0.113.2").await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(other.json::<Assignment>(), placed);

    let (_, metrics) = http(main, "GET", "/metrics", "")
        .await
        .expect("an HTTP answer");
    assert_eq!(
        common::sample(
            &metrics,
            "emostream_broadcaster_registrations_limited_total{tier=\"main\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    stop.send_replace(true);
    for role in roles {
        timeout(DEADLINE, role).await.unwrap().unwrap().unwrap();
    }
}

/// A peer that is not a trusted proxy is its own client whatever its `X-Forwarded-For` says:
/// four registrations naming four addresses all count under the peer, so the fourth is refused.
/// Each counts whatever its answer (here 503: no subscriber is live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_forwarded_address_is_not_believed() {
    let (stop, stopped) = watch::channel(false);
    let (main_l, main) = listener().await;
    let (_frames, frames_rx) = mpsc::channel(1);
    let role = tokio::spawn(main_publisher(
        main_l,
        three_registrations_a_second(&["10.0.0.0/8"]),
        frames_rx,
        until(&stopped),
    ));
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let answer = register_for(main, client).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (503, r#"{"error":"no live subscriber"}"#)
        );
    }
    let refused = register_for(main, "203.0.113.4").await;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (
            429,
            r#"{"error":"too many registrations from this address, slow down"}"#
        )
    );
    assert_eq!(refused.header("retry-after"), Some("1"));

    stop.send_replace(true);
    timeout(DEADLINE, role).await.unwrap().unwrap().unwrap();
}
