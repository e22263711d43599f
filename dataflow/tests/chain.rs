//! The progress chain against a real broker: of two records continuing one, the first in the
//! log is on the chain and the second lost (`ChainCheck`, asked as the writer asks after each
//! acknowledged record), and a restart resumes from the newest record on the chain, not from the
//! newest in the log (`recovery::last_progress`).

use emostream_dataflow::fence::{ChainCheck, Verdict};
use emostream_dataflow::recovery::last_progress;
use emostream_protocol::progress::{PartitionProgress, Progress, FIRST};
use emostream_protocol::Config;
use emostream_testkit::broker::minimal_config_with;
use emostream_testkit::{topic, Broker, Scratch};
use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};

/// How long a rival's run may stay silent before its record is taken for a ghost.
const QUIET: Duration = Duration::from_secs(1);

fn record(epoch: u64, follows: i64) -> Progress {
    Progress {
        epoch,
        counting: None,
        partitions: vec![PartitionProgress {
            partition: 0,
            resume_offset: epoch as i64,
            skip_before: epoch as i64,
            hold_until: epoch as i64,
            later_holds: Vec::new(),
        }],
        follows: Some(follows),
        run: None,
    }
}

/// Appends `progress` to partition 0 of the progress topic; returns its offset.
fn append(config: &Config, progress: &Progress) -> i64 {
    let producer = topic::producer(&config.kafka.brokers);
    let payload = serde_json::to_vec(progress).unwrap();
    let record = FutureRecord::<(), _>::to(&config.kafka.progress_topic)
        .partition(0)
        .payload(&payload);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(topic::send(&producer, record))
        .1
}

/// The answer to `ask(follows, own)`, within a deadline far above a loopback broker's reads.
fn verdict(chain: &ChainCheck, follows: i64, own: i64) -> Verdict {
    chain.ask(follows, own);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(answer) = chain.answer() {
            return answer.expect("the progress topic is readable");
        }
        assert!(Instant::now() < deadline, "an answer for {own}");
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

#[test]
fn the_first_record_to_continue_one_wins_and_a_restart_follows_the_chain() {
    let dir = Scratch::new("dataflow-chain");
    let (_broker, config) = Broker::start(dir.path(), |address| {
        minimal_config_with(address, "events_partitions = 1", "")
    });
    let kafka = &config.kafka;
    let chain = ChainCheck::start(kafka, &kafka.progress_topic, QUIET).unwrap();
    assert_eq!(last_progress(kafka, &kafka.progress_topic).unwrap(), None);

    // Cluster A: 0 ← 1. Cluster B, started from 0, lands its record 2 after A's 1.
    assert_eq!(append(&config, &record(7, FIRST)), 0);
    assert_eq!(verdict(&chain, FIRST, 0), Verdict::OnChain);
    assert_eq!(append(&config, &record(8, 0)), 1);
    assert_eq!(append(&config, &record(8, 0)), 2);
    assert_eq!(
        verdict(&chain, 0, 1),
        Verdict::OnChain,
        "A's record was first"
    );
    let recovered = last_progress(kafka, &kafka.progress_topic)
        .unwrap()
        .unwrap();
    assert_eq!(
        (recovered.offset, recovered.progress),
        (1, record(8, 0)),
        "B's record, the newest in the log, is off the chain"
    );
    // A carries on from its record 1: B, watching, sees A live.
    assert_eq!(append(&config, &record(9, 1)), 3);
    assert_eq!(
        verdict(&chain, 0, 2),
        Verdict::Lost { rival: 1 },
        "B's lost"
    );
    assert_eq!(verdict(&chain, 1, 3), Verdict::OnChain);
    let recovered = last_progress(kafka, &kafka.progress_topic)
        .unwrap()
        .unwrap();
    assert_eq!((recovered.offset, recovered.progress), (3, record(9, 1)));

    // Run 1 of A sends record 4 and is killed; run 2, restarted from 3, lands 5 after it. Run 1
    // writes nothing more: 4 was a ghost, and the next start resumes from it.
    let ran = |epoch, follows, run| Progress {
        run: Some(run),
        ..record(epoch, follows)
    };
    assert_eq!(append(&config, &ran(10, 3, 1)), 4);
    assert_eq!(append(&config, &ran(10, 3, 2)), 5);
    let asked = Instant::now();
    assert_eq!(verdict(&chain, 3, 5), Verdict::Ghost { rival: 4 });
    assert!(
        asked.elapsed() >= QUIET,
        "a ghost only after the quiet time"
    );
    let recovered = last_progress(kafka, &kafka.progress_topic)
        .unwrap()
        .unwrap();
    assert_eq!((recovered.offset, recovered.progress), (4, ran(10, 3, 1)));

    // Run 3, restarted from 4, writes 6; a second cluster (run 4) started from 4 too lands 7.
    // Run 3 writes on (8, following 6), so the second cluster sees a live rival, not a ghost.
    assert_eq!(append(&config, &ran(11, 4, 3)), 6);
    assert_eq!(append(&config, &ran(11, 4, 4)), 7);
    assert_eq!(append(&config, &ran(12, 6, 3)), 8);
    assert_eq!(
        verdict(&chain, 4, 7),
        Verdict::Lost { rival: 6 },
        "the rival's run wrote on"
    );
}
