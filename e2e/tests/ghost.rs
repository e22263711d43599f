//! A SIGKILL with a progress record in flight: the record lands after the restarted cluster read
//! the progress topic's end, and beats the restarted cluster's first record to the chain. The
//! restarted cluster must take it for its predecessor's ghost, not for another cluster: it
//! restarts and resumes from it (never exit 3), and every epoch is exact.
//!
//! "In flight" is made real with the records themselves rather than with a delay on the wire
//! (the broker advertises its own address, so a proxy would see only the first connection):
//!
//! 1. Cluster A counts a steady load; once it has written a few records, it is held right after
//!    its next record N (for epoch E) is acknowledged, before its chain check: its gate is still
//!    closed, so nothing after E is out, exactly as when N's acknowledgement never came. Then A's
//!    supervisor and processes are SIGKILLed.
//! 2. Every record before N is copied, at the same offsets, to a fresh progress topic, which
//!    cluster B uses: the log as a restart sees it while N is still in flight.
//! 3. B starts on it, recovers the record before N, re-publishes E, and is held before writing
//!    its own first record. Only now does N land (appended to B's progress topic, byte for byte),
//!    and B is let go: its record follows the same record as N, after N.
//! 4. B's check sees N's run write nothing more, exits 75, is restarted by its supervisor, and
//!    resumes from N.

use emostream_e2e::trace;
use emostream_e2e::{System, Topology};
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::progress::Progress;
use emostream_testkit::{free_port, topic, wait_for, wait_until, workers, Process, Scratch};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;
use std::path::Path;
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];
const GHOSTLY: &str = "emoji-progress-after-the-kill";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking task")
}

async fn progress_records(brokers: &str, progress: &str) -> Vec<topic::Record> {
    let (brokers, progress) = (brokers.to_string(), progress.to_string());
    blocking(move || topic::read_to_end(&brokers, &progress)).await
}

/// `text` with its dataflow processes and metrics on fresh ports and `progress_topic` for its
/// progress topic.
fn cluster_b(text: &str, progress_topic: &str) -> String {
    text.lines()
        .map(|line| {
            let ports = |key: &str| {
                format!(
                    "{key} = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
                    free_port(),
                    free_port()
                )
            };
            if line.starts_with("processes = ") {
                ports("processes")
            } else if line.starts_with("metrics = ") {
                ports("metrics")
            } else if line == "[kafka]" {
                format!("[kafka]\nprogress_topic = \"{progress_topic}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn held(file: &Path, what: &str) {
    let held = file.with_extension("held");
    wait_until(what, Duration::from_secs(60), || {
        let exists = held.exists();
        async move { exists }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_that_loses_to_its_predecessors_late_record_resumes_from_it() {
    let scratch = Scratch::new("e2e-ghost");
    let hold_a = scratch.join("hold-a");
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        worker_env: vec![
            ("EMOSTREAM_HOLD_AT", "after-progress-write".to_string()),
            ("EMOSTREAM_HOLD_FILE", hold_a.display().to_string()),
        ],
        ..Topology::default()
    })
    .await;
    let kafka = system.config.kafka.clone();
    let gateway = system.gateway().to_string();
    let load = tokio::spawn(async move {
        // 30 taps every 20 ms over three streams (1,500 taps/s), for 35 s.
        trace::steady(
            &gateway,
            &STREAMS,
            30,
            Duration::from_millis(20),
            Duration::from_secs(35),
            11,
        )
        .await
    });

    // 1. A writes a few records, then holds after the next one's acknowledgement.
    wait_for("cluster A's first records", Duration::from_secs(60), || {
        let kafka = &kafka;
        async move {
            (progress_records(&kafka.brokers, &kafka.progress_topic)
                .await
                .len()
                >= 4)
                .then_some(())
        }
    })
    .await;
    std::fs::write(&hold_a, "").unwrap();
    held(&hold_a, "cluster A held after a record's acknowledgement").await;
    system.signal("workers", libc::SIGKILL);
    let pids = system.dataflow_pids();
    for pid in &pids {
        // SAFETY: kill(2) on a pid of our own test's dataflow process.
        assert_eq!(unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) }, 0);
    }
    wait_until("cluster A gone", Duration::from_secs(30), || {
        let gone = system.dataflow_pids().is_empty();
        async move { gone }
    })
    .await;
    let mut records = progress_records(&kafka.brokers, &kafka.progress_topic).await;
    let ghost = records.pop().expect("A's records");
    let ghost_record: Progress = serde_json::from_slice(&ghost.payload).unwrap();
    let before = records.last().expect("a record before the held one").offset;
    assert_eq!(
        (ghost.offset, ghost_record.follows),
        (before + 1, Some(before)),
        "A's held record follows its previous one"
    );
    eprintln!(
        "A held and killed after record {} for epoch {} (run {:?})",
        ghost.offset, ghost_record.epoch, ghost_record.run
    );

    // 2. The progress topic as a restart sees it while the record is in flight.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::from_iter(kafka.client_settings(ClientRole::EpochProducer))
            .create()
            .expect("an admin client");
    let new = NewTopic::new(GHOSTLY, 1, TopicReplication::Fixed(1))
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
    let created = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer = topic::producer(&kafka.brokers);
    for record in &records {
        let copy = FutureRecord::<(), _>::to(GHOSTLY)
            .partition(0)
            .payload(&record.payload);
        assert_eq!(topic::send(&producer, copy).await, (0, record.offset));
    }

    // 3. B starts on it and holds before its first record.
    let hold_b = scratch.join("hold-b");
    std::fs::write(&hold_b, "").unwrap();
    let config_b = scratch.join("cluster-b.toml");
    let text = std::fs::read_to_string(system.config_path()).unwrap();
    std::fs::write(&config_b, cluster_b(&text, GHOSTLY)).unwrap();
    let log_b = scratch.join("workers-b.log");
    let mut b = Process::spawn(
        "cluster B",
        workers::command(2, &config_b)
            .env("EMOSTREAM_HOLD_AT", "before-progress-write")
            .env("EMOSTREAM_HOLD_FILE", &hold_b),
        &log_b,
    );
    held(&hold_b, "cluster B held before its first record").await;

    // The ghost lands, then B's record after it.
    let late = FutureRecord::<(), _>::to(GHOSTLY)
        .partition(0)
        .payload(&ghost.payload);
    assert_eq!(topic::send(&producer, late).await, (0, ghost.offset));
    std::fs::remove_file(&hold_b).unwrap();

    // 4. B restarts once, resumes from the ghost, and carries the chain on from it.
    let resumed = wait_for(
        "B to carry the chain on from the ghost",
        Duration::from_secs(90),
        || {
            let brokers = kafka.brokers.clone();
            let exited = b.try_exit();
            async move {
                assert_eq!(exited, None, "B's supervisor stopped");
                progress_records(&brokers, GHOSTLY)
                    .await
                    .into_iter()
                    .map(|r| serde_json::from_slice::<Progress>(&r.payload).unwrap())
                    .find(|p| p.follows == Some(ghost.offset))
            }
        },
    )
    .await;
    assert!(
        resumed.epoch > ghost_record.epoch,
        "the chain's epochs rise"
    );
    assert_ne!(resumed.run, ghost_record.run, "B's run, not A's");
    let log = std::fs::read_to_string(&log_b).unwrap();
    assert_eq!(
        log.matches(&format!(
            "emostream-dataflow: the record at offset {} of {GHOSTLY}, written by a cluster run \
             that has written nothing since",
            ghost.offset
        ))
        .count(),
        1,
        "one ghost, one restart:\n{log}"
    );
    // Which of its processes the supervisor reaps first is the kernel's choice (process 1 dies
    // of the lost connection right after process 0 exits 75); either way it restarts them.
    assert!(
        log.contains("; restarting the whole cluster") && !log.contains("run_workers: fenced"),
        "B restarted, not fenced:\n{log}"
    );

    let mut truth = load.await.expect("the load task");
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    let (published, frames) = system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    eprintln!(
        "{} epochs exact, {published} records ({} identical re-publications)",
        frames.len(),
        published - frames.len()
    );
    trace::assert_exact(&frames, &truth, WINDOW_MS, "emoji-epochs across the ghost");
    assert_eq!(b.try_exit(), None, "B still runs");
    b.stop(Duration::from_secs(15));
}
