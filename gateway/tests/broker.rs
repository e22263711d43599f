//! The gateway against a real broker (started by `scripts/broker.sh` on a free port):
//! the seeds' clients' request shapes (their generator script and locustfile), the per-user
//! rate limit, 503 while the broker is down and recovery
//! when it returns, and SIGTERM under load. Every check counts the emojis in Kafka itself.

use emostream_protocol::wire::{Accepted, ClientTs, EmojiEvent, SeedAccepted};
use emostream_protocol::Config;
use emostream_testkit::broker::minimal_config;
use emostream_testkit::http::{self, Response};
use emostream_testkit::{topic, wait_for, wait_until, Broker, Scratch};
use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// A broker of this test's own and the configuration around it; stopped on drop, its folder
/// removed unless the test failed.
struct Kafka {
    broker: Broker,
    config: Config,
    /// Declared last, so it is removed after the broker has stopped.
    _dir: Scratch,
}

impl Kafka {
    /// A broker for a configuration with `gateway` lines in its `[gateway]` section.
    fn start(gateway: &str) -> Kafka {
        let dir = Scratch::new("gateway-test");
        let (broker, config) =
            Broker::start(dir.path(), |address| minimal_config(address, gateway));
        Kafka {
            broker,
            config,
            _dir: dir,
        }
    }

    /// (stream, user_id, emoji, client ts) of every event line on the events topic, read to
    /// the end of each partition.
    async fn events(&self) -> Vec<(String, String, String, Option<ClientTs>)> {
        let (brokers, events) = (
            self.config.kafka.brokers.clone(),
            self.config.kafka.events_topic.clone(),
        );
        let records = tokio::task::spawn_blocking(move || topic::payloads(&brokers, &events))
            .await
            .unwrap();
        records
            .iter()
            .flat_map(|payload| payload.split(|&b| b == b'\n'))
            .filter(|line| !line.is_empty())
            .map(|line| {
                let e: EmojiEvent = serde_json::from_slice(line).unwrap();
                (e.stream.into(), e.user_id.into(), e.emoji.into(), e.ts)
            })
            .collect()
    }
}

/// The gateway in this process, on a port-0 listener; `stop` triggers its graceful shutdown.
struct Gateway {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), emostream_gateway::StartError>>,
}

impl Gateway {
    async fn start(config: Config) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(emostream_gateway::run(config, listener, async {
            let _ = stopped.await;
        }));
        wait_ready(&addr).await;
        Gateway {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn wait_ready(addr: &str) {
    wait_until(
        "the gateway to be ready",
        Duration::from_secs(30),
        || async {
            http::get(addr, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
}

/// The answer of a `/v1` route.
fn accepted(r: &Response) -> Accepted {
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()
}

/// The answer of the seeds' route: 200, their `status` field first, then ours, byte for byte.
fn seed_accepted(r: &Response) -> SeedAccepted {
    assert_eq!(r.status, 200, "{}", r.body);
    let a: SeedAccepted = r.json();
    assert_eq!(
        r.body,
        format!(
            r#"{{"status":"accepted","accepted":1,"epoch":{}}}"#,
            a.epoch
        )
    );
    a
}

#[tokio::test]
async fn the_seeds_generator_and_locustfile_shapes_get_200_and_are_all_counted() {
    let kafka = Kafka::start("");
    let gw = Gateway::start(kafka.config.clone()).await;
    // (body exactly as the client's `requests.post(json=...)` / locust's `client.post(json=...)`
    // sends it: Python's json.dumps, ", " and ": " separators, non-ASCII escaped; user id as
    // stored; client timestamp as stored; emoji as stored).
    let shapes = [
        // The generator script: integer user id, integer Unix seconds.
        (
            r#"{"user_id": 42, "emoji_type": "\u2764\ufe0f", "timestamp": 1764540000}"#,
            "42",
            ClientTs::Millis(1_764_540_000_000),
            "❤️",
        ),
        // The same with `time.time()`: a float.
        (
            r#"{"user_id": 43, "emoji_type": "\ud83d\udd25", "timestamp": 1764540000.123456}"#,
            "43",
            ClientTs::Millis(1_764_540_000_123),
            "🔥",
        ),
        // The locustfile: a string user id, `datetime.now().isoformat()` (no zone).
        (
            r#"{"user_id": "user_7", "emoji_type": "\ud83d\ude02", "timestamp": "2026-11-30T22:00:00.123456"}"#,
            "user_7",
            ClientTs::Iso("2026-11-30T22:00:00.123456".into()),
            "😂",
        ),
        // `datetime.now(timezone.utc).isoformat()`, and a skin tone.
        (
            r#"{"user_id": 44, "emoji_type": "\ud83d\udc4d\ud83c\udffd", "timestamp": "2026-11-30T22:00:00.123456+00:00"}"#,
            "44",
            ClientTs::Iso("2026-11-30T22:00:00.123456+00:00".into()),
            "👍🏽",
        ),
        // Milliseconds from `time.time() * 1000`, and the unqualified heart, stored as ❤️.
        (
            r#"{"user_id": 45, "emoji_type": "\u2764", "timestamp": 1764540000123.0}"#,
            "45",
            ClientTs::Millis(1_764_540_000_123),
            "❤️",
        ),
    ];
    for (body, ..) in &shapes {
        let a = seed_accepted(
            &http::post_json(&gw.addr, "/send_emoji", body)
                .await
                .unwrap(),
        );
        assert_eq!((a.status.as_str(), a.accepted), ("accepted", 1));
    }
    gw.stop().await;

    // Every one of them is counted, once, in stream `main`.
    let mut events = kafka.events().await;
    events.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected: Vec<_> = shapes
        .iter()
        .map(|(_, user, ts, emoji)| {
            (
                "main".to_string(),
                user.to_string(),
                emoji.to_string(),
                Some(ts.clone()),
            )
        })
        .collect();
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(events, expected);
}

#[tokio::test]
async fn seeds_shape_lands_unchanged_and_a_user_past_the_limit_gets_429() {
    let kafka = Kafka::start("user_taps_per_s = 1\nuser_burst_taps = 5");
    let gw = Gateway::start(kafka.config.clone()).await;

    // The seeds' exact body: user_id, emoji_type, ISO timestamp; stream `main`.
    let seed =
        r#"{"user_id":"seed-user","emoji_type":"🔥","timestamp":"2024-11-05T10:00:00.123Z"}"#;
    for _ in 0..5 {
        seed_accepted(
            &http::post_json(&gw.addr, "/send_emoji", seed)
                .await
                .unwrap(),
        );
    }
    let r = http::post_json(&gw.addr, "/send_emoji", seed)
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.json::<emostream_protocol::wire::ErrorBody>()
            .field
            .as_deref(),
        Some("user_id")
    );

    let batch = |users: &[&str]| {
        let items: Vec<String> = users
            .iter()
            .map(|u| format!(r#"{{"user_id":"{u}","emoji":"👍🏽","timestamp":1730800000000}}"#))
            .collect();
        format!("[{}]", items.join(","))
    };
    let a = accepted(
        &http::post_json(&gw.addr, "/v1/streams/cricket/emojis", &batch(&["b"; 5]))
            .await
            .unwrap(),
    );
    assert_eq!(a.accepted, 5);
    let r = http::post_json(&gw.addr, "/v1/streams/cricket/emojis", &batch(&["c", "b"]))
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(
        r.json::<emostream_protocol::wire::ErrorBody>()
            .field
            .as_deref(),
        Some("items[1].user_id")
    );
    let metrics = http::get(&gw.addr, "/metrics").await.unwrap().body;
    for line in [
        "emostream_gateway_emojis_accepted_total 10",
        r#"emostream_gateway_rejections_total{reason="rate_limited_user"} 2"#,
        r#"emostream_gateway_requests_total{route="/send_emoji",status="200"} 5"#,
        "emostream_gateway_broker_reachable 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}:\n{metrics}"
        );
    }
    let acks: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("emostream_gateway_broker_ack_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=6).contains(&acks),
        "6 answered requests, {acks} acknowledged records"
    );
    gw.stop().await;

    // Exactly the ten acknowledged taps, as sent.
    let mut events = kafka.events().await;
    events.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(events.len(), 10, "{events:?}");
    for e in &events[..5] {
        assert_eq!(
            e,
            &(
                "cricket".into(),
                "b".into(),
                "👍🏽".into(),
                Some(ClientTs::Millis(1730800000000))
            )
        );
    }
    for e in &events[5..] {
        assert_eq!(
            e,
            &(
                "main".into(),
                "seed-user".into(),
                "🔥".into(),
                Some(ClientTs::Iso("2024-11-05T10:00:00.123Z".into()))
            )
        );
    }
}

#[tokio::test]
async fn broker_down_is_503_at_once_and_ingest_recovers_when_it_returns() {
    let kafka = Kafka::start("delivery_timeout_ms = 3000\nrequest_timeout_ms = 6000");
    let gw = Gateway::start(kafka.config.clone()).await;
    // One tap from a new user each time, so Kafka's content can be matched tap by tap.
    let next = std::sync::atomic::AtomicU64::new(0);
    let tap = || {
        let user = format!(
            "u{}",
            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let addr = gw.addr.clone();
        async move {
            let body = format!(r#"{{"user_id":"{user}","emoji_type":"🎉"}}"#);
            (
                http::post_json(&addr, "/send_emoji", &body).await.unwrap(),
                user,
            )
        }
    };
    let acked = Mutex::new(HashSet::new());
    let ack = |(r, user): (Response, String)| {
        seed_accepted(&r);
        acked.lock().unwrap().insert(user);
    };
    for _ in 0..3 {
        ack(tap().await);
    }

    kafka.broker.stop();
    let refused = wait_for(
        "a 503 with the broker down",
        Duration::from_secs(20),
        || async {
            match tap().await {
                (r, _) if r.status == 503 => Some(r),
                (r, user) => {
                    // Sent before the gateway noticed: acknowledged only if it truly landed.
                    if r.status == 200 {
                        acked.lock().unwrap().insert(user);
                    }
                    None
                }
            }
        },
    )
    .await;
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Once the gateway knows, it refuses at once rather than after the delivery timeout (3 s
    // here): a refusal takes milliseconds, and half the timeout leaves a loaded machine 1.5 s.
    let started = std::time::Instant::now();
    let (r, _) = tap().await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(http::get(&gw.addr, "/readyz").await.unwrap().status, 503);

    kafka.broker.start_again();
    wait_until(
        "a 200 after the broker returns",
        Duration::from_secs(30),
        || async {
            let (r, user) = tap().await;
            if r.status == 200 {
                acked.lock().unwrap().insert(user);
            }
            r.status == 200
        },
    )
    .await;
    // A record queued while the broker was away may still fail after it returns, which marks
    // the broker down again until the next probe: so each further tap waits for its 200.
    for i in 0..3 {
        wait_until(
            &format!("tap {i} after recovery"),
            Duration::from_secs(10),
            || async {
                let (r, user) = tap().await;
                if r.status == 200 {
                    acked.lock().unwrap().insert(user);
                }
                r.status == 200
            },
        )
        .await;
    }
    let acked = acked.into_inner().unwrap();
    wait_ready(&gw.addr).await;
    gw.stop().await;

    // Every acknowledged tap is in Kafka, once.
    let events = kafka.events().await;
    let users: Vec<&String> = events.iter().map(|e| &e.1).collect();
    let unique: HashSet<&String> = users.iter().copied().collect();
    assert_eq!(unique.len(), users.len(), "duplicates in {users:?}");
    for user in &acked {
        assert!(
            unique.contains(user),
            "{user} was acknowledged but is not in Kafka"
        );
    }
}

#[tokio::test]
async fn after_sigterm_under_load_every_acknowledged_emoji_is_in_kafka() {
    const CLIENTS: usize = 64;
    const SIGTERM_AFTER: u64 = 3000;
    let kafka = Kafka::start("");
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_emostream-gateway"))
        .arg("--config")
        .arg(kafka.broker.config_path())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("the gateway binary starts");
    let addr = kafka.config.gateway.listen.clone();
    wait_ready(&addr).await;

    // Every tap has its own user id, so Kafka's content can be matched tap by tap.
    let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (addr, acked, sent) = (addr.clone(), Arc::clone(&acked), Arc::clone(&sent));
        clients.push(tokio::spawn(async move {
            for seq in 0.. {
                let users: Vec<String> = if seq % 2 == 0 {
                    vec![format!("c{c}-{seq}")]
                } else {
                    (0..10).map(|j| format!("c{c}-{seq}-{j}")).collect()
                };
                let result = if users.len() == 1 {
                    let body = format!(
                        r#"{{"user_id":"{}","emoji_type":"🔥","timestamp":"2024-11-05T10:00:00Z"}}"#,
                        users[0]
                    );
                    http::post_json(&addr, "/send_emoji", &body).await
                } else {
                    let items: Vec<String> = users
                        .iter()
                        .map(|u| format!(r#"{{"user_id":"{u}","emoji":"😂"}}"#))
                        .collect();
                    http::post_json(&addr, "/v1/streams/load/emojis", &format!("[{}]", items.join(",")))
                        .await
                };
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match result {
                    // 200 on the seeds' route, 202 on the batch route.
                    Ok(r) if r.status == 200 || r.status == 202 => {
                        assert_eq!(r.json::<Accepted>().accepted, users.len() as u64);
                        acked.lock().unwrap().extend(users);
                    }
                    // A request caught by the shutdown may be refused; it is simply not acked.
                    Ok(r) => assert_eq!(r.status, 503, "{}", r.body),
                    // The listener is gone: the gateway is stopping.
                    Err(_) => return,
                }
            }
        }));
    }
    wait_until("load to be acknowledged", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len() as u64;
        async move { n >= SIGTERM_AFTER }
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for("the gateway to exit", Duration::from_secs(30), || {
        let exited = gateway.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(exit.success(), "the gateway exited with {exit}");
    for client in clients {
        client.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let events = kafka.events().await;
    let in_kafka: HashSet<&String> = events.iter().map(|e| &e.1).collect();
    assert_eq!(in_kafka.len(), events.len(), "an event landed twice");
    let missing: Vec<&String> = acked.iter().filter(|u| !in_kafka.contains(u)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged emojis are not in Kafka: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "SIGTERM under load: {} requests sent, {} emojis acknowledged, {} in Kafka, all acknowledged ones present",
        sent.load(std::sync::atomic::Ordering::Relaxed),
        acked.len(),
        events.len()
    );
}

/// A connection to `addr` from `ip` (any of 127.0.0.0/8 on loopback), so one test can be
/// many clients.
async fn connect_from(ip: &str, addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// One tap of `user` posted from `ip`.
async fn tap_from(ip: &str, addr: &str, user: &str) -> Response {
    let body = format!(r#"{{"user_id":"{user}","emoji":"🔥"}}"#);
    http::request_on(
        connect_from(ip, addr).await,
        addr,
        "POST",
        "/v1/streams/main/emojis",
        Some("application/json"),
        body.as_bytes(),
    )
    .await
    .unwrap()
}

/// The value of an unlabelled gauge on `/metrics`.
async fn gauge(addr: &str, name: &str) -> usize {
    let metrics = http::get(addr, "/metrics").await.unwrap().body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse::<usize>().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// A request head declaring a 1 MiB JSON body.
const DECLARES_1_MIB: &str = "POST /v1/streams/main/emojis HTTP/1.1\r\nHost: gateway\r\n\
    Connection: close\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";

#[tokio::test]
async fn one_address_declaring_bodies_it_never_sends_holds_only_its_share_of_the_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MIB: usize = 1 << 20;
    // The defaults: a 128 MiB budget, 16 MiB of it per address. The declared bodies below wait
    // for the test, not for the pace or a slow client's deadline.
    let kafka = Kafka::start("request_timeout_ms = 120000\nbody_grace_ms = 120000");
    let gateway = Gateway::start(kafka.config.clone()).await;
    let addr = gateway.addr.clone();
    // 128 connections from one address declare 1 MiB each and send nothing of them.
    let mut held = Vec::new();
    let mut answered = Vec::new();
    for _ in 0..128 {
        let mut stream = connect_from("127.0.0.2", &addr).await;
        stream.write_all(DECLARES_1_MIB.as_bytes()).await.unwrap();
        let (mut read, write) = stream.into_split();
        answered.push(tokio::spawn(async move {
            let mut raw = Vec::new();
            let _ = read.read_to_end(&mut raw).await;
            http::parse(&raw)
        }));
        held.push(write);
    }
    wait_until(
        "the address to hold its share",
        Duration::from_secs(30),
        || async {
            gauge(&addr, "emostream_gateway_in_flight_bytes").await == 16 * MIB
                && answered.iter().filter(|a| a.is_finished()).count() == 112
        },
    )
    .await;
    assert_eq!(gauge(&addr, "emostream_gateway_in_flight_clients").await, 1);
    // Everyone else still finds the rest of the budget, at once.
    for (i, ip) in ["127.0.0.3", "127.0.0.4"].into_iter().enumerate() {
        let started = std::time::Instant::now();
        let r = tap_from(ip, &addr, &format!("other{i}")).await;
        assert_eq!(accepted(&r).accepted, 1);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // The first 16 declared bodies hold a reservation; each of the others was refused at once.
    let mut refused = 0;
    let mut waiting = Vec::new();
    for (answer, write) in answered.into_iter().zip(held) {
        if answer.is_finished() {
            let r = answer.await.unwrap().expect("an HTTP answer");
            assert_eq!(
                (r.status, r.body.as_str(), r.header("retry-after")),
                (
                    429,
                    r#"{"error":"this address holds its share of the ingest budget, retry shortly"}"#,
                    Some("1")
                )
            );
            refused += 1;
        } else {
            waiting.push((answer, write));
        }
    }
    assert_eq!((refused, waiting.len()), (112, 16));
    // Each held request's body: one tap padded with JSON whitespace to the declared length.
    let mut taken = 0;
    for (i, (answer, mut write)) in waiting.into_iter().enumerate() {
        let mut body = format!(r#"[{{"user_id":"held{i}","emoji":"🔥"}}"#).into_bytes();
        body.resize(MIB - 1, b' ');
        body.push(b']');
        write.write_all(&body).await.unwrap();
        let r = answer.await.unwrap().expect("an HTTP answer");
        taken += accepted(&r).accepted;
    }
    assert_eq!(taken, 16);
    wait_until(
        "the budget to be free again",
        Duration::from_secs(30),
        || async { gauge(&addr, "emostream_gateway_in_flight_bytes").await == 0 },
    )
    .await;
    assert_eq!(gauge(&addr, "emostream_gateway_in_flight_clients").await, 0);
    gateway.stop().await;
    let mut users: Vec<String> = kafka.events().await.into_iter().map(|e| e.1).collect();
    users.sort();
    let mut expected: Vec<String> = (0..16).map(|i| format!("held{i}")).collect();
    expected.extend(["other0".into(), "other1".into()]);
    expected.sort();
    assert_eq!(users, expected);
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_is_cut_with_408_and_gives_its_bytes_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kafka = Kafka::start(
        "request_timeout_ms = 120000\nbody_grace_ms = 500\nmin_body_bytes_per_s = 1024",
    );
    let gateway = Gateway::start(kafka.config.clone()).await;
    let mut stream = connect_from("127.0.0.2", &gateway.addr).await;
    let started = std::time::Instant::now();
    stream.write_all(DECLARES_1_MIB.as_bytes()).await.unwrap();
    // 100 bytes keep the pace for about 100 ms past the grace; then nothing more comes.
    stream.write_all(&[b' '; 100]).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let cut_after = started.elapsed();
    let r = http::parse(&raw).expect("an HTTP answer");
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            408,
            r#"{"error":"request body arrived slower than 1024 bytes/s"}"#
        )
    );
    // Cut at the pace (0.6 s), long before the 120 s deadline; 10 s is a loaded machine's margin.
    assert!(cut_after < Duration::from_secs(10), "{cut_after:?}");
    assert_eq!(
        gauge(&gateway.addr, "emostream_gateway_in_flight_bytes").await,
        0
    );
    gateway.stop().await;
    assert_eq!(kafka.events().await.len(), 0);
}

/// A client that pipelines `GET /healthz` without ever reading an answer, through a small
/// receive window: it writes until the gateway closes the connection, and returns how long
/// before that its last write went through.
async fn pipelines_and_never_reads(ip: &str, addr: &str) -> Duration {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let requests = "GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n".repeat(100);
    let mut last_write = std::time::Instant::now();
    while stream.write_all(requests.as_bytes()).await.is_ok() {
        last_write = std::time::Instant::now();
    }
    last_write.elapsed()
}

#[tokio::test]
async fn a_client_that_pipelines_and_never_reads_is_closed_within_the_write_timeout() {
    // One connection per address, so a new one from the same address is taken only once the
    // stuck one's slot is free.
    let kafka = Kafka::start("write_timeout_ms = 1000\nmax_connections_per_ip = 1");
    let gateway = Gateway::start(kafka.config.clone()).await;
    let stuck = tokio::spawn({
        let addr = gateway.addr.clone();
        async move { pipelines_and_never_reads("127.0.0.2", &addr).await }
    });
    // Without the write timeout the client would write until the test's own limit.
    let stalled_for = tokio::time::timeout(Duration::from_secs(60), stuck)
        .await
        .expect("the gateway closed the connection")
        .unwrap();
    // 1 s of timeout and 4 s of margin for a loaded 2-core machine.
    assert!(stalled_for < Duration::from_secs(5), "{stalled_for:?}");
    let r = wait_for(
        "the address's slot to be free",
        Duration::from_secs(10),
        || async {
            Some(tap_from("127.0.0.2", &gateway.addr, "after").await).filter(|r| r.status != 429)
        },
    )
    .await;
    assert_eq!(accepted(&r).accepted, 1);
    gateway.stop().await;
    assert_eq!(kafka.events().await.len(), 1);
}

#[tokio::test]
async fn sigterm_with_stuck_clients_exits_within_the_drain_timeout_and_keeps_every_acknowledged_tap(
) {
    use tokio::io::AsyncWriteExt;
    // Stuck for the whole test: no write timeout, pace or deadline frees them before the drain.
    let kafka = Kafka::start(
        "drain_timeout_ms = 8000\nwrite_timeout_ms = 600000\nbody_grace_ms = 600000\n\
         request_timeout_ms = 600000",
    );
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_emostream-gateway"))
        .arg("--config")
        .arg(kafka.broker.config_path())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("the gateway binary starts");
    let addr = kafka.config.gateway.listen.clone();
    wait_ready(&addr).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let user = format!("before{i}");
        accepted(&tap_from("127.0.0.3", &addr, &user).await);
        acked.push(user);
    }
    let open = || async { gauge(&addr, "emostream_gateway_open_connections").await };
    let _stuck_reader = tokio::spawn({
        let addr = addr.clone();
        async move { pipelines_and_never_reads("127.0.0.2", &addr).await }
    });
    let mut declared = connect_from("127.0.0.4", &addr).await;
    declared.write_all(DECLARES_1_MIB.as_bytes()).await.unwrap();
    // Both stuck connections, and the one asking.
    wait_until(
        "the stuck clients to be connected",
        Duration::from_secs(30),
        || async { open().await == 3 },
    )
    .await;
    let stopped = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for("the gateway to exit", Duration::from_secs(60), || {
        let exited = gateway.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let took = stopped.elapsed();
    assert!(exit.success(), "the gateway exited with {exit}");
    // The 8 s drain and 4 s of margin for a loaded machine; without the deadline it would
    // wait for the stuck clients as long as they stay.
    assert!(took < Duration::from_secs(12), "{took:?}");
    let mut users: Vec<String> = kafka.events().await.into_iter().map(|e| e.1).collect();
    users.sort();
    assert_eq!(users, acked);
}

/// A JSON POST with an `Idempotency-Key` header of exactly `key`.
async fn post_with_key(addr: &str, path: &str, key: &str, body: &str) -> Response {
    post_with(addr, path, &format!("Idempotency-Key: {key}\r\n"), body).await
}

#[tokio::test]
async fn an_idempotency_key_is_carried_into_every_record_of_its_request() {
    let kafka = Kafka::start("");
    let gw = Gateway::start(kafka.config.clone()).await;
    let seed = post_with_key(
        &gw.addr,
        "/send_emoji",
        r#""retry-7f3a""#,
        r#"{"user_id": 1, "emoji_type": "🔥"}"#,
    )
    .await;
    seed_accepted(&seed);
    let batch = post_with_key(
        &gw.addr,
        "/v1/streams/main/emojis",
        "batch-9",
        r#"[{"user_id":"b1","emoji":"🎉"},{"user_id":"b2","emoji":"🎉"}]"#,
    )
    .await;
    assert_eq!(accepted(&batch).accepted, 2);
    let plain = http::post_json(
        &gw.addr,
        "/v1/streams/main/emojis",
        r#"{"user_id":"p","emoji":"🎉"}"#,
    )
    .await
    .unwrap();
    accepted(&plain);
    let long = "k".repeat(129);
    for bad in ["", "\"\"", "two words", "q\"uote", &long] {
        let refused = post_with_key(
            &gw.addr,
            "/v1/streams/main/emojis",
            bad,
            r#"{"user_id":"never","emoji":"🎉"}"#,
        )
        .await;
        assert_eq!(
            (refused.status, refused.body.as_str()),
            (
                400,
                r#"{"error":"Idempotency-Key must be 1 to 128 visible ASCII characters (no quote or backslash), optionally in double quotes","field":"idempotency-key"}"#
            ),
            "key {bad:?}"
        );
    }
    gw.stop().await;

    let (brokers, events) = (
        kafka.config.kafka.brokers.clone(),
        kafka.config.kafka.events_topic.clone(),
    );
    let records = tokio::task::spawn_blocking(move || topic::payloads(&brokers, &events))
        .await
        .unwrap();
    let mut attempts = std::collections::BTreeMap::new();
    let mut keys: Vec<(String, Option<String>)> = records
        .iter()
        .flat_map(|payload| payload.split(|&b| b == b'\n'))
        .filter(|line| !line.is_empty())
        .map(|line| {
            let e: EmojiEvent = serde_json::from_slice(line).unwrap();
            attempts.insert(e.user_id.to_string(), e.attempt);
            (e.user_id.into(), e.request_id.map(String::from))
        })
        .collect();
    keys.sort();
    // One attempt number per keyed request, on each of its taps; none without a key.
    assert_eq!(attempts["b1"], attempts["b2"]);
    assert!(attempts["b1"].is_some() && attempts["1"].is_some());
    assert_ne!(attempts["1"], attempts["b1"]);
    assert_eq!(attempts["p"], None);
    assert_eq!(
        keys,
        [
            ("1".to_string(), Some("retry-7f3a".to_string())),
            ("b1".into(), Some("batch-9".into())),
            ("b2".into(), Some("batch-9".into())),
            ("p".into(), None),
        ]
    );
}

/// The reason the gateway gives for refusing to start with `config`. The start-up checks are a
/// metadata request and a DescribeConfigs; 30 s leaves a loaded machine a wide margin, and a
/// gateway that started serving instead would hold the test until then.
async fn refused_at_start(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        emostream_gateway::run(config, listener, std::future::pending()),
    )
    .await
    .expect("the gateway refuses to start instead of serving")
    .unwrap_err()
    .to_string()
}

#[tokio::test]
async fn a_topic_with_another_partition_count_is_refused_at_start() {
    let kafka = Kafka::start("");
    let mut config = kafka.config.clone();
    let found = config.kafka.events_partitions;
    config.kafka.events_partitions = found + 1;
    assert_eq!(
        refused_at_start(config.clone()).await,
        format!(
            "topic {} has {found} partitions, kafka.events_partitions says {}",
            config.kafka.events_topic,
            found + 1
        )
    );
}

#[tokio::test]
async fn a_fatal_producer_error_drains_with_503_and_exits_with_the_reason() {
    let kafka = Kafka::start("");
    let metrics = Arc::new(emostream_gateway::Metrics::default());
    let (batcher, handle) =
        emostream_gateway::Batcher::start(&kafka.config, Arc::clone(&metrics)).unwrap();
    let trigger = handle.health();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(emostream_gateway::serve(
        kafka.config.clone(),
        listener,
        std::future::pending(),
        (batcher, handle),
        metrics,
    ));
    wait_ready(&addr).await;
    // Taps from one client the whole time: each is answered 200 (and then is in Kafka) or 503
    // with the drain's reason, or finds the listener closed; none hangs or gets anything else.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let oks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let (addr, stop, oks) = (addr.clone(), Arc::clone(&stop), Arc::clone(&oks));
        tokio::spawn(async move {
            let (mut acked, mut refused, mut closed) = (Vec::new(), 0, 0);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let user = format!("f{i}");
                i += 1;
                let body = format!(r#"{{"user_id":"{user}","emoji_type":"🎉"}}"#);
                match http::post_json(&addr, "/send_emoji", &body).await {
                    Ok(r) if r.status == 200 => {
                        acked.push(user);
                        oks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => {
                        assert_eq!(
                            (r.status, r.body.as_str(), r.header("retry-after")),
                            (
                                503,
                                r#"{"error":"the Kafka producer failed for good; the gateway is restarting, retry shortly"}"#,
                                Some("1")
                            )
                        );
                        refused += 1;
                    }
                    Err(_) => closed += 1,
                }
            }
            (acked, refused, closed)
        })
    };
    wait_until(
        "a first tap acknowledged",
        Duration::from_secs(30),
        || async { oks.load(std::sync::atomic::Ordering::Relaxed) > 0 || client.is_finished() },
    )
    .await;
    trigger.raise_fatal_error_for_test("fenced by the test");
    // The drain waits at most for the records already sent (bounded by the delivery timeout,
    // 5 s by default): 30 s leaves a loaded machine a wide margin.
    let exited = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the gateway exits after a fatal producer error")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        exited.to_string(),
        "the Kafka producer failed for good, exiting to be restarted: \
         OutOfOrderSequenceNumber: test_fatal_error: fenced by the test"
    );
    assert_eq!(
        trigger.not_ready().as_deref(),
        Some(
            "the Kafka producer failed for good \
             (OutOfOrderSequenceNumber: test_fatal_error: fenced by the test); \
             the gateway is exiting to be restarted"
        )
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, _refused, _closed) = client.await.unwrap();
    assert!(!acked.is_empty());
    let landed: HashSet<String> = kafka.events().await.into_iter().map(|e| e.1).collect();
    for user in &acked {
        assert!(landed.contains(user), "{user} got 200 but is not in Kafka");
    }
}

#[tokio::test]
async fn a_topic_whose_records_must_be_smaller_than_the_gateways_is_refused_at_start() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let kafka = Kafka::start("");
    let mut config = kafka.config.clone();
    config.kafka.events_topic = "small-records".into();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    let topic = NewTopic::new(
        &config.kafka.events_topic,
        config.kafka.events_partitions as i32,
        TopicReplication::Fixed(1),
    )
    .set("max.message.bytes", "1048576");
    let created = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    assert_eq!(
        refused_at_start(config).await,
        "topic small-records has max.message.bytes = 1048576, the gateway's records reach \
         16777216 bytes (twice its flush threshold): raise max.message.bytes on the topic"
    );
}

/// A connection that sends a request's header one byte every 100 ms and never finishes it.
/// `connected` counts it once it is connected.
async fn slowloris(
    addr: String,
    connected: Arc<std::sync::atomic::AtomicUsize>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let header = b"POST /v1/streams/main/emojis HTTP/1.1\r\nhost: gateway\r\nx-slow: ";
    for byte in header.iter().chain(std::iter::repeat(&b'a')) {
        if stream.write_all(&[*byte]).await.is_err() {
            return Ok(());
        }
        // Closed by the gateway: the read sees the end (or a reset) instead of timing out.
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return Ok(());
        }
    }
    Ok(())
}

#[tokio::test]
async fn slowloris_connections_do_not_stop_another_clients_taps() {
    // Every slot taken by a client sending its header byte by byte: the header-read timeout
    // (2 s here) closes them, so another client waits at most that long in the backlog.
    let kafka = Kafka::start("max_connections = 40\nheader_read_timeout_ms = 2000");
    let gw = Gateway::start(kafka.config.clone()).await;
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow: Vec<_> = (0..40)
        .map(|_| tokio::spawn(slowloris(gw.addr.clone(), Arc::clone(&connected))))
        .collect();
    // Connected before the other client: the kernel's accept queue is first come, first
    // served, so the gateway gives them every slot first.
    wait_until(
        "40 slow connections open",
        Duration::from_secs(30),
        || async { connected.load(std::sync::atomic::Ordering::Relaxed) == 40 },
    )
    .await;
    let started = std::time::Instant::now();
    let r = http::post_json(
        &gw.addr,
        "/v1/streams/main/emojis",
        r#"{"user_id":"honest","emoji":"🔥"}"#,
    )
    .await
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(accepted(&r).accepted, 1);
    // The 2 s timeout plus 8 s for a loaded 2-core machine; without the timeout the tap
    // would wait as long as the slow clients keep going.
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    for t in slow {
        // Each was closed by the gateway (none runs to the test's end by itself).
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("the gateway closed the slow connection")
            .unwrap()
            .unwrap();
    }
    gw.stop().await;
    assert_eq!(kafka.events().await.len(), 1);
}

#[tokio::test]
async fn a_client_ip_past_its_connection_cap_is_answered_429_and_closed() {
    use tokio::io::AsyncReadExt;
    let kafka = Kafka::start("max_connections_per_ip = 3\nheader_read_timeout_ms = 60000");
    let gw = Gateway::start(kafka.config.clone()).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(tokio::net::TcpStream::connect(&gw.addr).await.unwrap());
    }
    // The fourth from the same address is answered and closed at once.
    let mut fourth = tokio::net::TcpStream::connect(&gw.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), fourth.read_to_string(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    assert_eq!(
        answer,
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         content-length: 55\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
         {\"error\":\"too many open connections from this address\"}"
    );
    // The three open ones (the fourth was refused after them) and the one asking, from another
    // address: not the permit the listener holds while it waits for the next.
    let metrics = http::request_on(
        connect_from("127.0.0.2", &gw.addr).await,
        &gw.addr,
        "GET",
        "/metrics",
        None,
        b"",
    )
    .await
    .unwrap()
    .body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "emostream_gateway_open_connections 4"),
        "{metrics}"
    );
    // Once one closes, the address may connect again.
    drop(open.pop());
    let r = wait_for(
        "a tap after a slot freed",
        Duration::from_secs(10),
        || async {
            http::post_json(
                &gw.addr,
                "/v1/streams/main/emojis",
                r#"{"user_id":"capped","emoji":"🔥"}"#,
            )
            .await
            .ok()
            .filter(|r| r.status != 429)
        },
    )
    .await;
    assert_eq!(accepted(&r).accepted, 1);
    drop(open);
    gw.stop().await;
}

/// The whole answer to `raw`, sent as it is on its own connection.
async fn raw_exchange(addr: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn requests_hyper_cannot_parse_are_refused_in_json_too() {
    let kafka = Kafka::start("");
    let gw = Gateway::start(kafka.config.clone()).await;
    let bad_header = raw_exchange(&gw.addr, b"GET /healthz HTTP/1.1\r\nbad header\r\n\r\n").await;
    assert_eq!(
        bad_header,
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 34\r\n\
         connection: close\r\n\r\n{\"error\":\"malformed HTTP request\"}"
    );
    // A head past the 8 KiB read buffer.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: gateway\r\nx-pad: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let too_large = raw_exchange(&gw.addr, huge.as_bytes()).await;
    assert_eq!(
        too_large,
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
         content-length: 66\r\nconnection: close\r\n\r\n\
         {\"error\":\"request header too large (8 KiB and 32 fields at most)\"}"
    );
    let mut many = "GET /healthz HTTP/1.1\r\nHost: gateway\r\n".to_string();
    for i in 0..40 {
        many.push_str(&format!("x-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw_exchange(&gw.addr, many.as_bytes()).await, too_large);
    gw.stop().await;
}

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix(" kB"))
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

/// A request at its costliest for the connection: a head of about 8 KiB (the most the gateway
/// takes) declaring a 4 KiB body, and 2 KiB of the body, the rest never sent.
fn costliest_request() -> Vec<u8> {
    let head = "POST /send_emoji HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
        Content-Length: 4096\r\nx-pad: ";
    let mut raw = head.as_bytes().to_vec();
    raw.resize(8 * 1024 - 200, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    raw.extend_from_slice(&[b' '; 2048]);
    raw
}

#[tokio::test]
async fn a_connection_holds_at_most_its_32_kib_of_the_budget_whatever_its_client_sends() {
    use emostream_protocol::config::CONNECTION_BYTES;
    use tokio::io::AsyncWriteExt;
    const CONNECTIONS: usize = 1000;
    const BODY: usize = 4096;
    // The bodies wait for the test, not for the pace or the deadline.
    let kafka = Kafka::start("request_timeout_ms = 120000\nbody_grace_ms = 120000");
    let g = &kafka.config.gateway;
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_emostream-gateway"))
        .arg("--config")
        .arg(kafka.broker.config_path())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("the gateway binary starts");
    let addr = g.listen.clone();
    wait_ready(&addr).await;
    // The connections' part of the budget is set aside at start.
    assert_eq!(
        gauge(&addr, "emostream_gateway_in_flight_budget_bytes").await,
        g.max_in_flight_bytes - g.max_connections * CONNECTION_BYTES
    );
    // `n` more connections at their costliest, `first` being held already.
    async fn hold(addr: &str, first: usize, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut streams = Vec::new();
        for i in first..first + n {
            // Four addresses: each stays under its 1,000 connections and 16 MiB share.
            let mut stream = connect_from(&format!("127.0.0.{}", 2 + i % 4), addr).await;
            stream.write_all(&costliest_request()).await.unwrap();
            streams.push(stream);
        }
        wait_until(
            "every request to wait for the rest of its body",
            Duration::from_secs(30),
            || async {
                gauge(addr, "emostream_gateway_in_flight_bytes").await == (first + n) * BODY
            },
        )
        .await;
        streams
    }
    // 500 first, so the runtime's and the allocator's own pools have grown already; then what
    // 1,000 more add, all held at once, so none reuses another's memory.
    let warm = hold(&addr, 0, 500).await;
    let before = resident_bytes(gateway.id());
    let more = hold(&addr, 500, CONNECTIONS).await;
    let grown = resident_bytes(gateway.id()).saturating_sub(before);
    // What each holds besides its body (which reserves its own declared 4 KiB).
    let per_connection = grown.saturating_sub(CONNECTIONS * BODY) / CONNECTIONS;
    assert!(
        per_connection < CONNECTION_BYTES,
        "{per_connection} bytes a connection ({grown} grown for {CONNECTIONS})"
    );
    eprintln!("{per_connection} bytes a connection at its costliest");
    drop((warm, more));
    let _ = gateway.kill();
    let _ = gateway.wait();
}

/// `taps` taps of fresh users posted from `ip` with the extra header lines `headers`.
async fn taps_from(ip: &str, addr: &str, headers: &str, taps: usize) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let items: Vec<String> = (0..taps)
        .map(|_| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!(r#"{{"user_id":"p{n}","emoji":"🔥"}}"#)
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    let mut stream = connect_from(ip, addr).await;
    let request = format!(
        "POST /v1/streams/main/emojis HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    http::parse(&raw).expect("an HTTP answer")
}

#[tokio::test]
async fn behind_a_trusted_proxy_limits_apply_per_forwarded_address_and_a_forged_header_changes_nothing(
) {
    // Three taps per address, refilled at one a second: a second request of three within 3 s
    // is refused. Two connections per address, which the proxy's do not count against.
    let kafka = Kafka::start(
        "trusted_proxies = [\"127.0.0.2/32\"]\nip_taps_per_s = 1\nip_burst_taps = 3\n\
         max_connections_per_ip = 2",
    );
    let gw = Gateway::start(kafka.config.clone()).await;
    let addr = gw.addr.clone();
    let _proxy_idle = [
        connect_from("127.0.0.2", &addr).await,
        connect_from("127.0.0.2", &addr).await,
    ];
    let limited = |r: &Response| {
        assert_eq!(
            (r.status, r.body.as_str()),
            (
                429,
                r#"{"error":"too many requests from this address, slow down"}"#
            )
        );
    };
    let taken = |r: &Response| assert_eq!(accepted(r).accepted, 3);
    let via_proxy = |headers: &'static str| taps_from("127.0.0.2", &addr, headers, 3);
    // Each forwarded address has its own bucket; what a client wrote left of the address the
    // proxy appended is not believed.
    taken(&via_proxy("X-Forwarded-For: 198.51.100.1\r\n").await);
    limited(&via_proxy("X-Forwarded-For: 198.51.100.1\r\n").await);
    taken(&via_proxy("X-Forwarded-For: 198.51.100.1, 198.51.100.2\r\n").await);
    limited(&via_proxy("X-Forwarded-For: 198.51.100.2\r\n").await);
    // RFC 7239, and an IPv6 client counted by its /64.
    taken(&via_proxy("Forwarded: for=\"[2001:db8:1:2::1]:4711\"\r\n").await);
    limited(&via_proxy("Forwarded: for=\"[2001:db8:1:2::99]\"\r\n").await);
    // From anyone else the headers are ignored: a new forged address buys nothing, and the
    // address it named was not charged.
    let forged = |headers: &'static str| taps_from("127.0.0.3", &addr, headers, 3);
    taken(&forged("X-Forwarded-For: 198.51.100.3\r\n").await);
    limited(&forged("X-Forwarded-For: 198.51.100.4\r\n").await);
    limited(&forged("Forwarded: for=198.51.100.5\r\n").await);
    taken(&via_proxy("X-Forwarded-For: 198.51.100.3\r\n").await);
    gw.stop().await;
    assert_eq!(kafka.events().await.len(), 5 * 3);
}

/// One tap of a fresh user for `stream`, posted from `ip`.
async fn tap_stream_from(ip: &str, addr: &str, stream: &str) -> Response {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = format!(r#"{{"user_id":"s{n}","emoji":"🔥"}}"#);
    http::request_on(
        connect_from(ip, addr).await,
        addr,
        "POST",
        &format!("/v1/streams/{stream}/emojis"),
        Some("application/json"),
        body.as_bytes(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn live_streams_are_a_bounded_set_opened_at_each_clients_rate_and_a_refusal_counts_nothing() {
    // Three live streams at most; an address opens two at once, then one a second.
    let kafka = Kafka::start(
        "max_live_streams = 3\nip_new_streams_per_s = 1\nip_burst_new_streams = 2\n\
         stream_idle_s = 3600",
    );
    let gw = Gateway::start(kafka.config.clone()).await;
    let addr = gw.addr.clone();
    let taken = |r: &Response| assert_eq!(accepted(r).accepted, 1);
    taken(&tap_stream_from("127.0.0.1", &addr, "a").await);
    taken(&tap_stream_from("127.0.0.1", &addr, "b").await);
    // A third new stream from the same address at once: its rate, not the set, refuses it.
    let too_many = tap_stream_from("127.0.0.1", &addr, "c").await;
    assert_eq!(too_many.status, 429);
    assert_eq!(too_many.header("retry-after"), Some("1"));
    assert_eq!(
        too_many.body,
        r#"{"error":"this address opened too many new streams, slow down; taps for streams already live are taken","field":"stream"}"#
    );
    // Streams already live take taps from anyone, that address included.
    taken(&tap_stream_from("127.0.0.1", &addr, "a").await);
    taken(&tap_stream_from("127.0.0.2", &addr, "c").await);
    // The set is full: a fourth stream is refused whoever asks, with a JSON reason.
    let full = tap_stream_from("127.0.0.3", &addr, "d").await;
    assert_eq!(full.status, 503);
    assert_eq!(full.header("retry-after"), Some("30"));
    assert_eq!(
        full.body,
        r#"{"error":"this stream is not live and the most live streams (3) are: it cannot open now, nothing was counted; retry later","field":"stream"}"#
    );
    taken(&tap_stream_from("127.0.0.3", &addr, "b").await);
    assert_eq!(gauge(&addr, "emostream_gateway_live_streams").await, 3);
    gw.stop().await;
    // Exactly the acknowledged taps, none of the refused ones.
    let mut streams: Vec<String> = kafka
        .events()
        .await
        .into_iter()
        .map(|(stream, ..)| stream)
        .collect();
    streams.sort();
    assert_eq!(streams, ["a", "a", "b", "b", "c"]);
}

/// A POST of `body` (JSON) to `path` with the extra header lines `headers`.
async fn post_with(addr: &str, path: &str, headers: &str, body: &str) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    http::parse(&raw).expect("an HTTP answer")
}

#[tokio::test]
async fn with_auth_on_only_a_valid_token_taps_and_only_for_its_own_user() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let kafka = Kafka::start("");
    let mut config = kafka.config.clone();
    config.auth = emostream_protocol::config::AuthConfig {
        enabled: true,
        hs256_secret: Some("platform-secret".into()),
        leeway_s: 0,
        ..Default::default()
    };
    config.auth.audience = "emostream".into();
    let gw = Gateway::start(config).await;
    let addr = gw.addr.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |secret: &str, claims: serde_json::Value| {
        let jwt = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Authorization: Bearer {jwt}\r\n")
    };
    let u1 = token(
        "platform-secret",
        serde_json::json!({"sub": "u1", "aud": "emostream", "exp": now + 300}),
    );
    let tap = |user: &str| format!(r#"{{"user_id":"{user}","emoji":"🔥"}}"#);
    let path = "/v1/streams/main/emojis";
    let unauthenticated = |r: &Response, why: &str| {
        assert_eq!((r.status, r.body.as_str()), (401, why), "{r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    };
    unauthenticated(
        &post_with(&addr, path, "", &tap("u1")).await,
        r#"{"error":"a user token is required (Authorization: Bearer)"}"#,
    );
    let expired = token(
        "platform-secret",
        serde_json::json!({"sub": "u1", "aud": "emostream", "exp": now - 5}),
    );
    unauthenticated(
        &post_with(&addr, path, &expired, &tap("u1")).await,
        r#"{"error":"the user token is not valid: expired"}"#,
    );
    let forged = token(
        "guessed",
        serde_json::json!({"sub": "u1", "aud": "emostream", "exp": now + 300}),
    );
    unauthenticated(
        &post_with(&addr, path, &forged, &tap("u1")).await,
        r#"{"error":"the user token is not valid: its signature does not match"}"#,
    );
    let elsewhere = token(
        "platform-secret",
        serde_json::json!({"sub": "u1", "aud": "another-app", "exp": now + 300}),
    );
    unauthenticated(
        &post_with(&addr, path, &elsewhere, &tap("u1")).await,
        r#"{"error":"the user token is not valid: for another audience"}"#,
    );
    // Another user's id in the body, alone or in a batch.
    let other = post_with(&addr, path, &u1, &tap("u2")).await;
    assert_eq!(
        (other.status, other.body.as_str()),
        (
            403,
            r#"{"error":"the user token is for another user than this tap's user_id","field":"user_id"}"#
        )
    );
    let batch = format!("[{},{}]", tap("u1"), tap("u2"));
    let other = post_with(&addr, path, &u1, &batch).await;
    assert_eq!(other.status, 403);
    assert!(
        other.body.contains(r#""field":"items[1].user_id""#),
        "{}",
        other.body
    );
    // The token's own user: taken, on both routes.
    assert_eq!(
        accepted(&post_with(&addr, path, &u1, &tap("u1")).await).accepted,
        1
    );
    let seed = r#"{"user_id":"u1","emoji_type":"🔥","timestamp":1764540000}"#;
    let seed = post_with(&addr, "/send_emoji", &u1, seed).await;
    assert_eq!(seed.status, 200, "{}", seed.body);
    gw.stop().await;
    let users: Vec<String> = kafka
        .events()
        .await
        .into_iter()
        .map(|(_, user, ..)| user)
        .collect();
    assert_eq!(users, ["u1", "u1"]);
}

/// The packer task gone (a panic) leaves a gateway that can take no tap: it drains and `serve`
/// returns the reason, so the process exits for its supervisor to restart it, instead of
/// answering 503 "ingest queue full" for ever while `/readyz` says ready.
#[tokio::test]
async fn a_stopped_batcher_ends_the_gateway_with_the_reason() {
    let kafka = Kafka::start("");
    let metrics = Arc::new(emostream_gateway::Metrics::default());
    let (batcher, handle) =
        emostream_gateway::Batcher::start(&kafka.config, Arc::clone(&metrics)).unwrap();
    let packer = batcher.packer_for_test();
    let health = handle.health();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(emostream_gateway::serve(
        kafka.config.clone(),
        listener,
        std::future::pending(),
        (batcher, handle),
        metrics,
    ));
    wait_ready(&addr).await;
    accepted(
        &http::post_json(
            &addr,
            "/v1/streams/main/emojis",
            r#"{"user_id":"u","emoji":"🔥"}"#,
        )
        .await
        .unwrap(),
    );
    packer.abort();
    let exited = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the gateway exits once its batcher has stopped")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        exited.to_string(),
        "the gateway's batcher stopped, exiting to be restarted: the packer task was cancelled"
    );
    assert_eq!(
        health.not_ready().as_deref(),
        Some("the gateway's batcher stopped; the gateway is exiting to be restarted")
    );
}
