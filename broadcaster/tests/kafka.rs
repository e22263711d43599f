//! The main publisher against a real broker (started by `scripts/broker.sh` on its own port
//! and data folder): it starts a little before the end of `emoji-epochs`, passes every epoch
//! once, and hands the lower tier its ring and then live epochs over `/internal/link`.

use emostream_broadcaster::{run, Role};
use emostream_testkit::{free_port, topic, Broker, Scratch};
use futures_util::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
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

    // Connected as a cluster publisher would: the ring and the live frames, in order, each once.
    let url = format!("ws://127.0.0.1:{main_port}/internal/link");
    let mut link = timeout(DEADLINE, async {
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
