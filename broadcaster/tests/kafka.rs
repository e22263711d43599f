//! The main publisher against a real broker (started by `scripts/broker.sh` on its own port
//! and data folder): it starts the ring's span in time before the end of `emoji-epochs`, passes
//! every epoch once, and hands the lower tier its ring and then live epochs over
//! `/internal/link`, telling it of the epochs it may have missed before that span.

use emostream_broadcaster::{run, Role};
use emostream_testkit::{free_port, topic, Broker, Scratch};
use futures_util::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(30);

fn frame(epoch: u64) -> String {
    format!(
        r#"{{"type":"epoch", "stream":"main","epoch":{epoch},"total":{epoch},"late":0,"emojis":[]}}"#
    )
}

async fn produce(producer: &FutureProducer, epoch: u64) {
    let payload = frame(epoch);
    topic::send(
        producer,
        FutureRecord::to("emoji-epochs")
            .key("main")
            .payload(&payload),
    )
    .await;
}

/// The next text frame, pings aside; the deadline is on the frame, so pings (one a second) do
/// not extend it.
async fn next_text(link: &mut WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>) -> String {
    let next = async {
        loop {
            match link.next().await.unwrap().unwrap() {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    };
    timeout(DEADLINE, next).await.expect("a frame in time")
}

/// A main publisher on `config` (listening on `main_port`), and a link to it as a cluster
/// publisher would open: the sender that stops it, its task, and the link.
async fn main_and_link(
    config: emostream_protocol::Config,
    main_port: u16,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), emostream_broadcaster::Error>>,
    WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let main = tokio::spawn(run(
        config,
        Role::Main {
            listen: None,
            synthetic: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let url = format!("ws://127.0.0.1:{main_port}/internal/link");
    let link = timeout(DEADLINE, async {
        let mut retry = tokio::time::interval(Duration::from_millis(20));
        loop {
            retry.tick().await;
            if let Ok((link, _)) = connect_async(url.as_str()).await {
                return link;
            }
        }
    })
    .await
    .expect("the main publisher listens");
    (stop, main, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_publisher_reads_epochs_from_kafka() {
    let main_port = free_port();
    let dir = Scratch::new("broadcaster-kafka");
    let (_broker, config) = Broker::start(dir.path(), |broker| {
        format!(
            r#"
[kafka]
brokers = "{broker}"
epochs_partitions = 2
[gateway]
listen = "127.0.0.1:0"
[dataflow]
processes = ["127.0.0.1:0"]
[broadcaster]
main = "127.0.0.1:{main_port}"
ring_epochs = 4
[[broadcaster.clusters]]
name = "c0"
listen = "127.0.0.1:0"
subscribers = []
"#
        )
    });
    let producer = topic::producer(&config.kafka.brokers);

    // Written before the main publisher starts: a re-published epoch 2 among them.
    for epoch in [1, 2, 2, 3] {
        produce(&producer, epoch).await;
    }
    // Connected as a cluster publisher would: the ring and the live frames, in order, each once.
    let (stop, main, mut link) = main_and_link(config, main_port).await;
    // A link's first message says what it wants: a cluster asks for every stream, and has
    // nothing yet.
    let all = r#"{"type":"subscribe","all":true}"#;
    link.send(Message::text(all)).await.unwrap();
    for epoch in [1, 2, 3] {
        assert_eq!(next_text(&mut link).await, frame(epoch));
    }
    produce(&producer, 3).await;
    produce(&producer, 4).await;
    assert_eq!(next_text(&mut link).await, frame(4));

    stop.send(()).unwrap();
    timeout(DEADLINE, main)
        .await
        .expect("main stops in time")
        .unwrap()
        .unwrap();
}

/// An epoch frame of `stream` as the dataflow writes it, stamped with its epoch's end as the
/// dataflow stamps it (`dataflow/src/publish.rs`), the stamp the read-back goes by.
async fn produce_at(producer: &FutureProducer, stream: &str, epoch: u64, window_ms: u64) {
    let payload = format!(r#"{{"type":"epoch","stream":"{stream}","epoch":{epoch},"total":1}}"#);
    let end_ms = (epoch + 1) * window_ms;
    topic::send(
        producer,
        FutureRecord::to("emoji-epochs")
            .key(stream)
            .payload(&payload)
            .timestamp(end_ms as i64),
    )
    .await;
}

/// A main publisher (re)started after a long outage, with more streams on its one partition than
/// a read-back of `ring_epochs × 16` records covered: it refills every stream's ring, from the
/// records of the ring's span in time, and a cluster publisher that kept running tells it what it
/// has. A stream the cluster has only from before the outage is told of the gap before its next
/// epoch (the epochs published meanwhile are older than the read-back); one it has from within
/// the ring's span gets every epoch after it, and no gap. Nothing jumps silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_main_publisher_refills_every_ring_and_tells_of_what_it_missed() {
    const STREAMS: usize = 20;
    let main_port = free_port();
    let dir = Scratch::new("broadcaster-kafka-restart");
    let (_broker, config) = Broker::start(dir.path(), |broker| {
        format!(
            r#"
[kafka]
brokers = "{broker}"
epochs_partitions = 1
[gateway]
listen = "127.0.0.1:0"
[dataflow]
processes = ["127.0.0.1:0"]
[broadcaster]
main = "127.0.0.1:{main_port}"
ring_epochs = 2
[[broadcaster.clusters]]
name = "c0"
listen = "127.0.0.1:0"
subscribers = []
"#
        )
    });
    let window_ms = config.epochs.window_ms;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The newest epoch closed, and one closed long before main's ring's span (100 windows).
    let newest = now_ms / window_ms - 1;
    let long_ago = newest - 100;
    let producer = topic::producer(&config.kafka.brokers);
    let old = |i: usize| format!("old-{i}");
    let new = |i: usize| format!("new-{i}");
    // Before the outage the cluster got `long_ago` of the old streams; `long_ago + 1` came while
    // main was down and is past the read-back now.
    for i in 0..STREAMS {
        for epoch in [long_ago, long_ago + 1] {
            produce_at(&producer, &old(i), epoch, window_ms).await;
        }
    }
    for epoch in newest - 2..=newest {
        for i in 0..STREAMS {
            if epoch > newest - 2 {
                produce_at(&producer, &old(i), epoch, window_ms).await;
            }
            produce_at(&producer, &new(i), epoch, window_ms).await;
        }
    }

    let (stop, main, mut link) = main_and_link(config, main_port).await;
    let have: BTreeMap<String, u64> = (0..STREAMS)
        .flat_map(|i| [(old(i), long_ago), (new(i), newest - 2)])
        .collect();
    // The tag first, as a lower tier writes it: that is how a subscription is told from a
    // heartbeat.
    let have = serde_json::to_string(&have).unwrap();
    let all = format!(r#"{{"type":"subscribe","all":true,"have":{have}}}"#);
    link.send(Message::text(all)).await.unwrap();

    let frame = |stream: &str, epoch: u64| format!("{stream} {epoch}");
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..STREAMS {
        let (old, new) = (old(i), new(i));
        let gap = format!("{old} gap since {long_ago} oldest {}", newest - 1);
        want.insert(
            old.clone(),
            vec![gap, frame(&old, newest - 1), frame(&old, newest)],
        );
        want.insert(
            new.clone(),
            vec![frame(&new, newest - 1), frame(&new, newest)],
        );
    }
    // Every stream's messages, in the order they came, until as many came as are wanted or
    // none more comes.
    let total: usize = want.values().map(Vec::len).sum();
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..total {
        let Ok(text) = timeout(Duration::from_secs(5), next_text(&mut link)).await else {
            break;
        };
        let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
        let stream = msg["stream"].as_str().unwrap().to_string();
        let said = match msg["type"].as_str() {
            Some("gap") => format!(
                "{stream} gap since {} oldest {}",
                msg["since"], msg["oldest"]
            ),
            _ => frame(&stream, msg["epoch"].as_u64().unwrap()),
        };
        got.entry(stream).or_default().push(said);
    }
    assert_eq!(got, want);

    stop.send(()).unwrap();
    timeout(DEADLINE, main)
        .await
        .expect("main stops in time")
        .unwrap()
        .unwrap();
}
