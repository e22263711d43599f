//! What Emostream relies on from its Kafka broker, checked against the development broker that
//! `scripts/broker.sh` runs, with the clients built from the one `[kafka]` configuration:
//! idempotent acks=all produce with CreateTime kept, exact high watermarks, `assign` with
//! end-of-partition events, committed offsets (lag monitoring), and acknowledged records kept
//! across a broker stop and a SIGKILL.

use emostream_protocol::kafka::ClientRole;
use emostream_protocol::Config;
use emostream_testkit::broker::minimal_config;
use emostream_testkit::{binary, http, procfs, wait_until, Broker, Scratch};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Records per partition, different for each so that a watermark off by any amount shows.
const WRITTEN: [i64; 4] = [50, 120, 7, 0];
const BASE_TS: i64 = 1_730_000_000_000;

fn reader(config: &Config, group: &str, partition_eof: bool) -> BaseConsumer {
    ClientConfig::from_iter(config.kafka.client_settings(ClientRole::AssignedReader {
        group,
        fetch_wait_ms: 20,
        partition_eof,
    }))
    .create()
    .expect("a consumer")
}

/// Writes `WRITTEN[p]` records to each partition `p` of the events topic, every one awaited:
/// payload `p/i`, key `k{i}`, timestamp `BASE_TS + i`, at offsets `round * WRITTEN[p] + i`.
async fn write(config: &Config, round: i64) {
    let producer: FutureProducer =
        ClientConfig::from_iter(config.kafka.client_settings(ClientRole::BatchProducer {
            delivery_timeout_ms: 10_000,
            max_message_bytes: 1 << 20,
        }))
        .create()
        .expect("a producer");
    let topic = &config.kafka.events_topic;
    for (p, n) in WRITTEN.iter().enumerate() {
        let sends: Vec<_> = (round * n..(round + 1) * n)
            .map(|i| {
                let payload = format!("{p}/{i}");
                let key = format!("k{i}");
                let record = FutureRecord::to(topic)
                    .partition(p as i32)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(BASE_TS + i);
                producer.send_result(record).expect("queued")
            })
            .collect();
        for (i, delivery) in (round * n..).zip(sends) {
            let delivered = delivery
                .await
                .expect("not cancelled")
                .unwrap_or_else(|(e, _)| panic!("record {p}/{i}: {e}"));
            assert_eq!(
                (delivered.partition, delivered.offset),
                (p as i32, i),
                "acknowledged in order"
            );
        }
    }
}

/// Every record of partition `p` from `from`, then the end-of-partition event's position.
fn read_partition(
    consumer: &BaseConsumer,
    topic: &str,
    p: i32,
    from: i64,
) -> Vec<(i64, String, String, i64)> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, p, Offset::Offset(from))
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no end of partition {p} in 30 s");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let ts = match m.timestamp() {
                    Timestamp::CreateTime(t) => t,
                    other => panic!("{p}/{}: {other:?}, not CreateTime", m.offset()),
                };
                out.push((
                    m.offset(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    ts,
                ));
            }
            Some(Err(KafkaError::PartitionEOF(eof))) => {
                assert_eq!(eof, p);
                return out;
            }
            Some(Err(e)) => panic!("reading {p}: {e}"),
            None => {}
        }
    }
}

/// What `rounds` rounds of `write` leave in partition `p`, from offset `from`.
fn expected(p: usize, from: i64, rounds: i64) -> Vec<(i64, String, String, i64)> {
    (from..rounds * WRITTEN[p])
        .map(|i| (i, format!("k{i}"), format!("{p}/{i}"), BASE_TS + i))
        .collect()
}

/// Watermarks equal what `rounds` rounds wrote, and every record reads back as it was sent.
fn assert_all_there(config: &Config, rounds: i64) {
    let topic = &config.kafka.events_topic;
    let consumer = reader(config, "emostream-contract", true);
    for (p, n) in WRITTEN.iter().enumerate() {
        let marks = consumer
            .fetch_watermarks(topic, p as i32, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(marks, (0, rounds * n), "watermarks of partition {p}");
        assert_eq!(
            read_partition(&consumer, topic, p as i32, 0),
            expected(p, 0, rounds),
            "partition {p}"
        );
    }
}

#[tokio::test]
async fn produce_watermarks_end_of_partition_and_commits_behave_as_the_tiers_need() {
    let dir = Scratch::new("broker-contract");
    let (_broker, config) = Broker::start(dir.path(), |address| minimal_config(address, ""));
    write(&config, 0).await;
    assert_all_there(&config, 1);

    // `assign` at an offset inside the log reads from there, then says the partition ended.
    let topic = &config.kafka.events_topic;
    let consumer = reader(&config, "emostream-contract", true);
    assert_eq!(
        read_partition(&consumer, topic, 1, 100),
        expected(1, 100, 1)
    );
    // An empty partition ends at once.
    assert_eq!(read_partition(&consumer, topic, 3, 0), expected(3, 0, 1));

    // The dataflow commits its read positions for lag monitoring; they read back.
    let mut positions = TopicPartitionList::new();
    positions
        .add_partition_offset(topic, 0, Offset::Offset(42))
        .unwrap();
    positions
        .add_partition_offset(topic, 1, Offset::Offset(120))
        .unwrap();
    consumer
        .commit(&positions, CommitMode::Sync)
        .expect("a synchronous commit");
    let mut asked = TopicPartitionList::new();
    asked.add_partition(topic, 0);
    asked.add_partition(topic, 1);
    let committed = consumer
        .committed_offsets(asked, Duration::from_secs(10))
        .expect("committed offsets");
    let got: Vec<(i32, Offset)> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    assert_eq!(got, vec![(0, Offset::Offset(42)), (1, Offset::Offset(120))]);
}

#[tokio::test]
async fn acknowledged_records_survive_a_broker_stop_and_a_sigkill() {
    let dir = Scratch::new("broker-restart");
    let (broker, config) = Broker::start(dir.path(), |address| minimal_config(address, ""));
    write(&config, 0).await;

    broker.stop();
    broker.start_again();
    assert_all_there(&config, 1);

    // Records acknowledged just before the broker dies, with no clean stop to flush anything.
    write(&config, 1).await;
    let pid = broker.pid().expect("a running broker");
    broker.kill();
    // Gone, or a zombie its parent has not reaped yet.
    let state = procfs::state(pid);
    assert!(
        matches!(state, None | Some('Z')),
        "the broker still runs after kill: {state:?}"
    );
    broker.start_again();
    assert_all_there(&config, 2);
}

/// A self-signed certificate for 127.0.0.1 and its key, made with the openssl command.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// TLS by configuration alone: the broker listens only for TLS, and the gateway — a tier, as
/// its own process — reaches it through `[kafka.client]` with nothing else changed.
#[tokio::test]
async fn a_tier_reaches_a_tls_broker_through_the_pass_through() {
    let dir = Scratch::new("broker-tls");
    let (cert, key) = certificate(dir.path());
    let client = format!(
        "[kafka.client]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"",
        cert.display()
    );
    let (_broker, config) = Broker::start_with_flags(
        dir.path(),
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        |address| minimal_config(address, "") + &client,
    );
    // Without the pass-through, the same client cannot read the brokers' metadata.
    let plain: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    assert!(plain.fetch_metadata(None, Duration::from_secs(3)).is_err());
    // The broker's own command-line client speaks plaintext only, so the script cannot create
    // the topics of a TLS-only broker; an admin client built from the same settings does.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::from_iter(config.kafka.client_settings(ClientRole::EpochProducer))
            .create()
            .expect("an admin client");
    let topic = NewTopic::new(
        &config.kafka.events_topic,
        config.kafka.events_partitions as i32,
        TopicReplication::Fixed(1),
    );
    let created = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("CreateTopics over TLS");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let mut gateway = std::process::Command::new(binary("emostream-gateway"))
        .arg("--config")
        .arg(dir.join("cluster.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap())
        .spawn()
        .expect("the gateway starts");
    let addr = config.gateway.listen.clone();
    wait_until(
        "the gateway to be ready over TLS",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move {
                http::get(&addr, "/readyz")
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        },
    )
    .await;
    let r = http::post_json(
        &addr,
        "/v1/streams/tls/emojis",
        r#"{"user_id":"over-tls","emoji":"🔒"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // SAFETY: kill(2) on the gateway this test spawned.
    unsafe { libc::kill(gateway.id() as libc::pid_t, libc::SIGTERM) };
    assert!(
        gateway.wait().unwrap().success(),
        "the gateway stops cleanly"
    );

    let topic = config.kafka.events_topic.clone();
    let lines: Vec<String> = {
        let consumer = reader(&config, "emostream-contract", true);
        (0..config.kafka.events_partitions as i32)
            .flat_map(|p| read_partition(&consumer, &topic, p, 0))
            .flat_map(|(_, _, payload, _)| payload.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(r#""user_id":"over-tls""#), "{}", lines[0]);
}
