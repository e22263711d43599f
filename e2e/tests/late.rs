//! Late records: while the gateway carries a steady load, about 1% of records are produced
//! straight to `emoji-events` with receive times seconds behind the frontier. Every late tap is
//! folded into an open epoch and reported in `late`; every on-time count stays exact.

use emostream_e2e::kafka::read_all;
use emostream_e2e::trace;
use emostream_e2e::{wait_for, System, Topology};
use emostream_protocol::wire::EmojiEvent;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let (brokers, topic) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.epochs_topic.clone(),
    );
    wait_for("a first published epoch", Duration::from_secs(30), || {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        async move {
            (!tokio::task::spawn_blocking(move || read_all(&brokers, &topic))
                .await
                .expect("reader task")
                .is_empty())
            .then_some(())
        }
    })
    .await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &system.config.kafka.brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("a producer");
    // One late record every 200 ms (about 1% of the records the gateway writes), each tap
    // received 5 s ago: its epoch closed long before it arrives.
    let mut late_sent = 0u64;
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    for i in 0..40 {
        pace.tick().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let recv_ms = now - 5_000;
        let event = EmojiEvent {
            stream: Cow::Borrowed(STREAM),
            user_id: Cow::Borrowed("straggler"),
            emoji: Cow::Borrowed(LATE_EMOJI),
            ts: None,
            recv_ms,
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
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("the broker acknowledges a late record");
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
