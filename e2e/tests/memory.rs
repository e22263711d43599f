//! The cluster's memory, lost while it was down: two worker processes count a steady load and
//! stop; then either every progress record is deleted (what time retention does to a topic left
//! alone long enough) or an events partition loses the records from its resume offset on (events
//! retention shorter than the outage), both by DeleteRecords, which moves the log start as
//! retention does. The restarted cluster must refuse: the supervisor exits 4, process 0's log
//! says what happened and what to do, and `emoji-epochs` gets not one record more.

use emostream_e2e::trace;
use emostream_e2e::{System, Topology};
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::progress::Progress;
use emostream_testkit::{topic, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
const STREAMS: [&str; 2] = ["alpha", "beta"];

/// Runs a steady load until the cluster has written a few progress records, then stops
/// everything gracefully (the broker keeps running).
async fn counted_then_stopped() -> System {
    let mut system = System::start(Topology {
        window_ms: WINDOW_MS,
        ..Topology::default()
    })
    .await;
    let gateway = system.gateway().to_string();
    // 20 taps every 20 ms over two streams, for 5 s.
    trace::steady(
        &gateway,
        &STREAMS,
        20,
        Duration::from_millis(20),
        Duration::from_secs(5),
        7,
    )
    .await;
    let (brokers, progress) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.progress_topic.clone(),
    );
    wait_for("three progress records", Duration::from_secs(60), || {
        let (brokers, progress) = (brokers.clone(), progress.clone());
        async move {
            let high = blocking(move || topic::watermarks(&brokers, &progress)[&0].1).await;
            (high >= 3).then_some(())
        }
    })
    .await;
    for (name, status) in system.stop() {
        assert!(status.is_some(), "{name} stopped on SIGTERM");
    }
    system
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking task")
}

/// Deletes the records of `topic`'s `partition` below `before`, as retention would.
async fn delete_records(system: &System, topic: &str, partition: i32, before: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::from_iter(
        system
            .config
            .kafka
            .client_settings(ClientRole::EpochProducer),
    )
    .create()
    .expect("an admin client");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, Offset::Offset(before))
        .unwrap();
    let deleted = admin
        .delete_records(&offsets, &AdminOptions::new())
        .await
        .expect("DeleteRecords");
    assert_eq!(deleted.elements()[0].offset(), Offset::Offset(before));
}

/// Every partition's (low, high) watermark of the epochs topic.
async fn epochs_watermarks(system: &System) -> Vec<(i64, i64)> {
    let (brokers, epochs) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.epochs_topic.clone(),
    );
    blocking(move || topic::watermarks(&brokers, &epochs).into_values().collect()).await
}

/// Restarts the system and returns the workers' log once their supervisor has exited 4.
async fn refused_restart(system: &mut System) -> String {
    let published = epochs_watermarks(system).await;
    system.restart().await;
    let status = wait_for(
        "the workers' supervisor to exit",
        Duration::from_secs(60),
        || {
            let status = system.exited("workers");
            async move { status }
        },
    )
    .await;
    let log = system.log("workers.2");
    assert_eq!(status.code(), Some(4), "the supervisor's status:\n{log}");
    assert!(
        log.contains("refused to start (its error above says why and how to recover); stopping, not restarting"),
        "the supervisor says why it stopped:\n{log}"
    );
    assert_eq!(
        epochs_watermarks(system).await,
        published,
        "nothing published by the refused cluster"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_progress_topic_emptied_by_retention_is_refused() {
    let mut system = counted_then_stopped().await;
    let (brokers, progress) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.progress_topic.clone(),
    );
    let high = blocking(move || topic::watermarks(&brokers, &progress)[&0].1).await;
    let progress = system.config.kafka.progress_topic.clone();
    delete_records(&system, &progress, 0, high).await;

    let log = refused_restart(&mut system).await;
    let want = format!(
        "emostream-dataflow: worker 0: refusing to start: every record of emoji-progress is \
         deleted (offsets below {high}). Counting now would count retained events again and \
         re-publish epochs with other contents. Restore the progress topic's records, or start \
         over on new progress and epochs topics (docs/operations.md, \"The progress topic\")"
    );
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_events_partition_deleted_past_its_resume_offset_is_refused() {
    let mut system = counted_then_stopped().await;
    let (brokers, progress) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.progress_topic.clone(),
    );
    let newest = blocking(move || topic::read_to_end(&brokers, &progress))
        .await
        .pop()
        .expect("progress records");
    let newest: Progress = serde_json::from_slice(&newest.payload).expect("a progress record");
    let resume = newest.partition(0).expect("partition 0").resume_offset;

    // A batch arrives after the stop (not yet counted by anyone), and retention then deletes the
    // partition up to its end: everything from the resume offset on is gone.
    let events = system.config.kafka.events_topic.clone();
    let producer = topic::producer(&system.config.kafka.brokers);
    let (_, offset) = topic::send(
        &producer,
        FutureRecord::<(), _>::to(&events)
            .partition(0)
            .payload("{}"),
    )
    .await;
    assert!(
        offset >= resume,
        "the new batch is at or after the resume offset"
    );
    delete_records(&system, &events, 0, offset + 1).await;

    let log = refused_restart(&mut system).await;
    let want = format!(
        "emostream-dataflow: worker 0: refusing to start: emoji-events partition 0 starts at \
         offset {low}, but the progress record resumes it at offset {resume}: events of epochs \
         not yet published were deleted (its retention is shorter than the outage). Counting on \
         would publish those epochs without them. Raise emoji-events's retention above the \
         longest outage; to go on without the lost events, start over on new progress and \
         epochs topics (docs/operations.md, \"The progress topic\")",
        low = offset + 1
    );
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
}
