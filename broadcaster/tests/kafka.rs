//! The main publisher against a real broker (started by `scripts/broker.sh` on its own port
//! and data folder): it starts a little before the end of `emoji-epochs`, passes every epoch
//! once, and hands the lower tier its ring and then live epochs over `/internal/link`.

use emostream_broadcaster::{run, Role};
use emostream_protocol::Config;
use futures_util::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(30);

/// A broker of this test's own, stopped and deleted however the test ends.
struct Broker {
    data: PathBuf,
    port: u16,
}

impl Broker {
    fn start(config: &str) -> Self {
        let port = free_port();
        let data = std::env::temp_dir().join(format!(
            "emostream-broadcaster-kafka-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&data).unwrap();
        let config_path = data.join("cluster.toml");
        std::fs::write(
            &config_path,
            config.replace("{broker}", &format!("127.0.0.1:{port}")),
        )
        .unwrap();
        let broker = Self { data, port };
        let status = broker
            .script("start")
            .arg("--config")
            .arg(&config_path)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/broker.sh start failed");
        broker
    }

    fn script(&self, command: &str) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/broker.sh");
        let mut cmd = Command::new(script);
        cmd.arg(command)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--data")
            .arg(&self.data);
        cmd
    }

    fn config(&self) -> PathBuf {
        self.data.join("cluster.toml")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.script("stop").status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

use emostream_e2e::free_port;

fn frame(epoch: u64) -> String {
    format!(
        r#"{{"type":"epoch", "stream":"main","epoch":{epoch},"total":{epoch},"late":0,"emojis":[]}}"#
    )
}

async fn produce(producer: &FutureProducer, epoch: u64) {
    let payload = frame(epoch);
    let record = FutureRecord::to("emoji-epochs")
        .key("main")
        .payload(&payload);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

async fn next_text(link: &mut WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>) -> String {
    loop {
        let msg = timeout(DEADLINE, link.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        match msg {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_publisher_reads_epochs_from_kafka() {
    let main_port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let broker = Broker::start(&format!(
        r#"
[kafka]
brokers = "{{broker}}"
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
    ));
    let config = Config::load(&broker.config()).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();

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
    // A link's first message says what it wants: a cluster's heartbeat asks for every stream.
    let heartbeat = r#"{"type":"cluster","name":"c0","subscribers":[]}"#;
    link.send(Message::text(heartbeat)).await.unwrap();
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
