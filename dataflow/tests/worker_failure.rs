//! One worker thread's failure ends the whole `emostream-dataflow` process, promptly and with a
//! failure status, so the supervisor (`run_workers.sh`) acts on it at once: here worker 0 of
//! two refuses to start (the progress topic has two partitions, a check only worker 0 makes)
//! while worker 1 has started its dataflow and would wait on worker 0 forever.

use emostream_dataflow::memory::KEEP_EVERYTHING;
use emostream_protocol::kafka::ClientRole;
use emostream_testkit::broker::minimal_config_with;
use emostream_testkit::{binary, Broker, Process, Scratch};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// The process reads its configuration, asks the broker for metadata a few times and fails:
/// well under a second on a loaded 2-core machine; 30 s is the margin against a hang.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_worker_that_fails_ends_the_process() {
    let dir = Scratch::new("dataflow-worker-failure");
    let (broker, config) = Broker::start(dir.path(), |address| {
        minimal_config_with(address, "events_partitions = 2", "")
    });
    // A progress topic that keeps every record, as it must, but has two partitions.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::from_iter(config.kafka.client_settings(ClientRole::EpochProducer))
            .create()
            .unwrap();
    let topic = KEEP_EVERYTHING.iter().fold(
        NewTopic::new("two-partition-progress", 2, TopicReplication::Fixed(1)),
        |topic, (key, value)| topic.set(key, value),
    );
    let created = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let mut process = Process::spawn(
        "dataflow",
        Command::new(binary("emostream-dataflow"))
            .arg("--config")
            .arg(broker.config_path())
            .args(["-w", "2"])
            .env("EMOSTREAM_KAFKA__PROGRESS_TOPIC", "two-partition-progress"),
        &dir.join("dataflow.log"),
    );
    let started = Instant::now();
    let status = process.wait_until(started + EXIT_WITHIN);
    let log = std::fs::read_to_string(dir.join("dataflow.log")).unwrap();
    eprintln!("exited after {:?}", started.elapsed());
    let status = status.unwrap_or_else(|| panic!("still running after {EXIT_WITHIN:?}:\n{log}"));
    // A partition count the brokers contradict is a configuration error: the status tells
    // the supervisor not to restart into it.
    assert_eq!(
        (status.code(), status.signal()),
        (Some(emostream_protocol::exit::CONFIG), None),
        "{log}"
    );
    assert!(
        log.contains(
            "emostream-dataflow: worker 0: topic two-partition-progress has 2 partitions on the \
             brokers; the configuration needs 1"
        ),
        "{log}"
    );
    drop(broker);
}
