//! What a worker refuses at start, against a real broker: an events topic whose partition count
//! is not `kafka.events_partitions`, a progress topic of more than one partition, and a progress
//! record counted with other settings; and what it still accepts: a record written before the
//! settings were recorded.

use emostream_dataflow::metrics::Metrics;
use emostream_dataflow::run_worker;
use emostream_protocol::Config;
use emostream_testkit::broker::minimal_config_with;
use emostream_testkit::{topic, Broker, Scratch};
use rdkafka::producer::FutureRecord;
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

/// Appends `payload` to the progress topic (partition 0, as the workers write it).
fn write_progress(config: &Config, payload: &str) {
    let producer = topic::producer(&config.kafka.brokers);
    let record = FutureRecord::<(), _>::to(&config.kafka.progress_topic)
        .partition(0)
        .payload(payload);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(topic::send(&producer, record));
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
    two_partition_progress.kafka.progress_topic = config.kafka.epochs_topic.clone();
    assert_eq!(
        run(&two_partition_progress),
        Err(
            "topic emoji-epochs has 2 partitions on the brokers; the configuration needs 1"
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
