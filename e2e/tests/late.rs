//! Late records: while the gateway carries a steady load, about 1% of records are produced
//! straight to `emoji-events` with receive times seconds behind the frontier. Every late tap is
//! folded into an open epoch and reported in `late`; every on-time count stays exact.

use emostream_e2e::trace;
use emostream_e2e::{System, Topology};
use emostream_protocol::wire::EmojiEvent;
use emostream_testkit::{now_ms, topic, wait_until};
use rdkafka::producer::FutureRecord;
use std::borrow::Cow;
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
const LATE_EMOJI: &str = "🐢";
const STREAM: &str = "late";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_records_are_folded_in_and_reported() {
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        allowed_lateness_ms: 500,
        ..Topology::default()
    })
    .await;
    let gateway = system.gateway().to_string();
    // 20 taps every 20 ms: 1,000 on-time taps per second, each request its own record or two.
    let load = tokio::spawn(async move {
        trace::steady(
            &gateway,
            &[STREAM],
            20,
            Duration::from_millis(20),
            Duration::from_secs(10),
            3,
        )
        .await
    });

    // "Behind the frontier" needs a frontier: wait until the cluster has published an epoch, so
    // every partition has a watermark that a 5-second-old tap is behind.
    let (brokers, epochs) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.epochs_topic.clone(),
    );
    wait_until("a first published epoch", Duration::from_secs(30), || {
        let (brokers, epochs) = (brokers.clone(), epochs.clone());
        async move {
            tokio::task::spawn_blocking(move || topic::watermarks(&brokers, &epochs))
                .await
                .expect("reader task")
                .values()
                .any(|(low, high)| high > low)
        }
    })
    .await;

    let producer = topic::producer(&system.config.kafka.brokers);
    // One late record every 200 ms (about 1% of the records the gateway writes), each tap
    // received 5 s ago: its epoch closed long before it arrives.
    let mut late_sent = 0u64;
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    for i in 0..40 {
        pace.tick().await;
        let recv_ms = now_ms() - 5_000;
        let event = EmojiEvent {
            stream: Cow::Borrowed(STREAM),
            user_id: Cow::Borrowed("straggler"),
            emoji: Cow::Borrowed(LATE_EMOJI),
            ts: None,
            recv_ms,
            request_id: None,
            attempt: None,
        };
        let payload = format!(
            "{}\n",
            serde_json::to_string(&event).expect("an event serializes")
        );
        let record = FutureRecord::to(&system.config.kafka.events_topic)
            .partition(i % 4)
            .key(STREAM)
            .payload(&payload)
            .timestamp(recv_ms as i64);
        topic::send(&producer, record).await;
        late_sent += 1;
    }
    let mut truth = load.await.expect("the load task");
    let markers = trace::markers(system.gateway(), &[STREAM], &mut truth).await;

    let (_, frames) = system
        .published_through(&markers, Duration::from_secs(60))
        .await;

    let mut late_counted = 0;
    let mut late_reported = 0;
    for (key, frame) in &frames {
        let turtles = frame
            .emojis
            .iter()
            .find(|e| e.emoji == LATE_EMOJI)
            .map_or(0, |e| e.count);
        late_counted += turtles;
        late_reported += frame.late;
        assert_eq!(
            frame.late, turtles,
            "{key:?}: only the straggler's taps are late"
        );
        let on_time: std::collections::BTreeMap<String, u64> = frame
            .emojis
            .iter()
            .filter(|e| e.emoji != LATE_EMOJI)
            .map(|e| (e.emoji.clone(), e.count))
            .collect();
        assert_eq!(
            on_time,
            truth.get(key).cloned().unwrap_or_default(),
            "{key:?}: on-time counts"
        );
        assert_eq!(
            frame.total,
            on_time.values().sum::<u64>() + turtles,
            "{key:?}: total"
        );
    }
    for key in truth.keys() {
        assert!(frames.contains_key(key), "{key:?} was never published");
    }
    assert_eq!(
        (late_counted, late_reported),
        (late_sent, late_sent),
        "every late tap counted once and reported"
    );
    eprintln!(
        "{late_sent} late taps folded into {} epochs",
        frames.values().filter(|f| f.late > 0).count()
    );
}
