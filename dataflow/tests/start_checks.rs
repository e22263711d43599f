//! What a worker refuses at start, against a real broker: an events topic whose partition count
//! is not `kafka.events_partitions`, a progress topic of more than one partition, and a progress
//! record counted with other settings; and what it still accepts: a record written before the
//! settings were recorded. And the cluster's memory: a progress topic that can delete records,
//! one emptied or truncated beside published epochs and events deleted below a resume offset are
//! refused (exit status 4), and so is an events partition ending below one (the topic made again,
//! or a leader's passing answer), with a status the supervisor restarts on (2); a missing
//! progress topic is created keeping every record.

use emostream_dataflow::memory::KEEP_EVERYTHING;
use emostream_dataflow::metrics::Metrics;
use emostream_dataflow::run_worker;
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::Config;
use emostream_testkit::broker::minimal_config_with;
use emostream_testkit::{topic, Broker, Scratch};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Runs one worker on `config`, already told to stop, and returns how it ended.
fn run(config: &Config) -> Result<(), String> {
    let config = config.clone();
    let mut results = timely::execute(timely::Config::thread(), move |worker| {
        let stop = Arc::new(AtomicBool::new(true));
        run_worker(worker, &config, stop, Arc::new(Metrics::default())).map_err(|e| e.to_string())
    })
    .expect("timely starts")
    .join();
    results.pop().expect("one worker").and_then(|r| r)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// Appends `payload` to partition `partition` of `topic`; returns its offset.
fn append(config: &Config, topic: &str, partition: i32, payload: &str) -> i64 {
    let producer = topic::producer(&config.kafka.brokers);
    let record = FutureRecord::<(), _>::to(topic)
        .partition(partition)
        .payload(payload);
    block_on(topic::send(&producer, record)).1
}

/// Appends `payload` to the progress topic (partition 0, as the workers write it).
fn write_progress(config: &Config, payload: &str) {
    append(config, &config.kafka.progress_topic, 0, payload);
}

fn admin(config: &Config) -> AdminClient<DefaultClientContext> {
    ClientConfig::from_iter(config.kafka.client_settings(ClientRole::EpochProducer))
        .create()
        .expect("an admin client")
}

fn create_topic(config: &Config, name: &str, partitions: i32, settings: &[(&str, &str)]) {
    let new = settings.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
        |new, (key, value)| new.set(key, value),
    );
    let created = block_on(admin(config).create_topics([&new], &AdminOptions::new())).unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}

/// Deletes the records of `topic`'s `partition` below `before`, as retention would.
fn delete_records(config: &Config, topic: &str, partition: i32, before: i64) {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, Offset::Offset(before))
        .unwrap();
    let deleted = block_on(admin(config).delete_records(&offsets, &AdminOptions::new())).unwrap();
    assert_eq!(
        deleted.elements()[0].offset(),
        Offset::Offset(before),
        "the new log start of {topic}/{partition}"
    );
}

#[test]
fn a_worker_refuses_topics_and_progress_that_do_not_match_its_configuration() {
    let dir = Scratch::new("dataflow-start-checks");
    let (broker, config) = Broker::start(dir.path(), |address| {
        minimal_config_with(address, "events_partitions = 2", "")
    });
    assert_eq!(
        run(&config),
        Ok(()),
        "the configuration the topics were made for"
    );

    let mut more = config.clone();
    more.kafka.events_partitions = 3;
    assert_eq!(
        run(&more),
        Err(
            "topic emoji-events has 2 partitions on the brokers; the configuration needs 3"
                .to_string()
        )
    );
    let mut two_partition_progress = config.clone();
    two_partition_progress.kafka.progress_topic = "two-partition-progress".to_string();
    create_topic(&config, "two-partition-progress", 2, &KEEP_EVERYTHING);
    assert_eq!(
        run(&two_partition_progress),
        Err(
            "topic two-partition-progress has 2 partitions on the brokers; the configuration \
             needs 1"
                .to_string()
        )
    );

    // A record from before the settings were recorded: accepted with any window and divisor.
    let old = r#"{"epoch":5,"partitions":[{"partition":0,"resume_offset":0,"skip_before":0,"hold_until":0},{"partition":1,"resume_offset":0,"skip_before":0,"hold_until":0}]}"#;
    write_progress(&config, old);
    let mut other_window = config.clone();
    other_window.epochs.window_ms = 1000;
    assert_eq!(run(&other_window), Ok(()));
    // Its partition list still tells the partition count (and is checked first).
    assert_eq!(
        run(&more),
        Err(
            "kafka.events_partitions is 3, but the epochs recorded on emoji-progress were \
             counted with 2: restarting with another value would renumber or recount epochs \
             already published. Restore kafka.events_partitions = 2, or start on new progress \
             and epochs topics"
                .to_string()
        )
    );

    let recorded = r#"{"epoch":6,"counting":{"window_ms":2000,"divisor":1000,"events_partitions":2},"partitions":[{"partition":0,"resume_offset":0,"skip_before":0,"hold_until":0},{"partition":1,"resume_offset":0,"skip_before":0,"hold_until":0}]}"#;
    write_progress(&config, recorded);
    assert_eq!(run(&config), Ok(()));
    assert_eq!(
        run(&other_window),
        Err(
            "epochs.window_ms is 1000, but the epochs recorded on emoji-progress were counted \
             with 2000: restarting with another value would renumber or recount epochs already \
             published. Restore epochs.window_ms = 2000, or start on new progress and epochs \
             topics"
                .to_string()
        )
    );
    drop(broker);
}

#[test]
fn a_worker_refuses_to_start_when_the_clusters_memory_can_be_or_was_lost() {
    let dir = Scratch::new("dataflow-memory-checks");
    let (broker, config) = Broker::start(dir.path(), |address| {
        minimal_config_with(address, "events_partitions = 2", "")
    });
    let refused = |what: &str| {
        Err(format!(
            "refusing to start: {what}. Counting now would count retained events again and \
             re-publish epochs with other contents. Restore the progress topic's records, or \
             start over on new progress and epochs topics (docs/operations.md, \"The progress \
             topic\")"
        ))
    };

    // A missing progress topic is made keeping every record.
    let mut made = config.clone();
    made.kafka.progress_topic = "made-by-the-worker".to_string();
    assert_eq!(run(&made), Ok(()));
    let described = block_on(admin(&config).describe_configs(
        [&ResourceSpecifier::Topic("made-by-the-worker")],
        &AdminOptions::new(),
    ))
    .unwrap();
    let entries = &described[0].as_ref().unwrap().entries;
    for (key, value) in KEEP_EVERYTHING {
        let set = entries
            .iter()
            .find(|e| e.name == key)
            .map(|e| e.value.as_deref());
        assert_eq!(set, Some(Some(value)), "{key} of the topic the worker made");
    }

    // One made without settings takes the broker's default retention.
    create_topic(&config, "loose-progress", 1, &[]);
    let mut loose = config.clone();
    loose.kafka.progress_topic = "loose-progress".to_string();
    assert_eq!(
        run(&loose),
        Err(
            "refusing to start: loose-progress can lose records (retention.ms is not set on it, \
             so the broker's default (7 days on Kafka and Nisshi) deletes its records). It is \
             the cluster's memory: with its newest record deleted a restart would count \
             retained events again. Keep every record: kafka-configs.sh --alter --entity-type \
             topics --entity-name loose-progress --add-config \
             retention.ms=-1,retention.bytes=-1, then start again"
                .to_string()
        )
    );

    // Published epochs beside an empty progress topic, then beside a record two behind.
    let frame = |epoch: u64| format!(r#"{{"type":"epoch","stream":"main","epoch":{epoch}}}"#);
    append(&config, &config.kafka.epochs_topic, 1, &frame(99));
    append(&config, &config.kafka.epochs_topic, 1, &frame(100));
    append(&config, &config.kafka.epochs_topic, 0, &frame(98));
    assert_eq!(
        run(&config),
        refused("emoji-epochs holds epoch 100, but emoji-progress holds no progress record")
    );
    let record = |epoch: u64, resume: i64| {
        format!(
            r#"{{"epoch":{epoch},"counting":{{"window_ms":2000,"divisor":1000,"events_partitions":2}},"partitions":[{{"partition":0,"resume_offset":0,"skip_before":0,"hold_until":0}},{{"partition":1,"resume_offset":{resume},"skip_before":{resume},"hold_until":{resume}}}]}}"#
        )
    };
    write_progress(&config, &record(98, 0));
    assert_eq!(
        run(&config),
        refused(
            "emoji-epochs holds epoch 100, but the newest progress record on emoji-progress is \
             for epoch 98 and reproduces epochs up to 99: the records after it are gone"
        )
    );
    for payload in ["a", "b", "c"] {
        append(&config, &config.kafka.events_topic, 1, payload);
    }
    write_progress(&config, &record(99, 1));
    assert_eq!(
        run(&config),
        Ok(()),
        "epoch 100 may be out ahead of record 99"
    );

    // Partition 1 resumes at offset 1; retention took offsets 0 and 1.
    delete_records(&config, &config.kafka.events_topic, 1, 2);
    assert_eq!(
        run(&config),
        Err(
            "refusing to start: emoji-events partition 1 starts at offset 2, but the progress \
             record resumes it at offset 1: events of epochs not yet published were deleted \
             (its retention is shorter than the outage). Counting on would publish those epochs \
             without them. Raise emoji-events's retention above the longest outage; to go on \
             without the lost events, start over on new progress and epochs topics \
             (docs/operations.md, \"The progress topic\")"
                .to_string()
        )
    );

    // Every progress record deleted.
    delete_records(&config, &config.kafka.progress_topic, 0, 2);
    assert_eq!(
        run(&config),
        refused("every record of emoji-progress is deleted (offsets below 2)")
    );

    // A record resuming partition 1 past its end (offset 3): the topic was made again.
    write_progress(&config, &record(99, 10));
    assert_eq!(
        run(&config),
        Err(
            "refusing to start: emoji-events partition 1 ends at offset 3, below the offset 10 \
             the progress record resumes it at. A broker whose leader just changed may say so \
             briefly (the supervisor restarts this process); if it persists, the topic was \
             deleted and made again (or its log truncated), its offsets no longer name the \
             events the progress record counted, and replaying would skip new taps as counted \
             ones: start over on new progress and epochs topics (docs/operations.md, \"The \
             progress topic\")"
                .to_string()
        )
    );
    drop(broker);
}
