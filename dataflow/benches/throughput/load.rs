//! Taps written straight to Kafka exactly as the gateway writes them: NDJSON batch records, one
//! (stream, epoch) each, key = stream, timestamp = the newest tap's receive time, lz4, with the
//! gateway's producer settings. The preload is written here; the steady load uses the same
//! producer and records.

use crate::{check_interrupted, Bench, EVENTS_TOPIC};
use emostream_protocol::epoch::{epoch_bounds, epoch_of};
use emostream_protocol::wire::{ClientTs, EmojiEvent};
use emostream_testkit::{now_ms, Rng};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Skewed popularity, as crowds send them.
const EMOJIS: [(&str, u64); 8] = [
    ("🔥", 40),
    ("👍🏽", 20),
    ("❤️", 12),
    ("😂", 10),
    ("👏", 8),
    ("🇮🇳", 5),
    ("👨‍👩‍👧", 3),
    ("🎉", 2),
];

/// What the preload wrote.
pub struct Preload {
    pub records: u64,
    pub bytes: u64,
    pub first_epoch: u64,
    pub last_epoch: u64,
    pub secs: f64,
}

impl Bench {
    /// Writes the preload: for each epoch, for each stream, its taps in records of at most
    /// `record_events`, each to the next partition.
    pub(crate) fn preload(&self) -> Preload {
        let a = &self.args;
        let window = self.base.epochs.window_ms;
        // The span ends a minute ago, on an epoch boundary.
        let last_epoch = epoch_of(now_ms() - 60_000, window) - 1;
        let first_epoch = last_epoch + 1 - a.span_epochs;
        let (producer, deliveries) = producer(&self.broker.address());
        let mut rng = Rng::seeded(0x9e37_79b9_7f4a_7c15);
        let cells = a.span_epochs * a.streams;
        let (mut records, mut bytes, mut written) = (0u64, 0u64, 0u64);
        let mut buf = Vec::new();
        let started = Instant::now();
        for (i, epoch) in (first_epoch..=last_epoch).enumerate() {
            let (start_ms, _) = epoch_bounds(epoch, window);
            // This epoch's records, in time order across streams.
            let mut cell_records: Vec<(usize, u64)> = Vec::new();
            for (s, _) in self.streams.iter().enumerate() {
                let cell = i as u64 * a.streams + s as u64;
                // Taps of this (stream, epoch): an even share, the remainder to the first cells.
                let n = a.events / cells + u64::from(cell < a.events % cells);
                let mut left = n;
                while left > 0 {
                    let take = left.min(a.record_events);
                    cell_records.push((s, take));
                    left -= take;
                }
            }
            let slots = cell_records.len() as u64;
            for (j, (s, n)) in cell_records.into_iter().enumerate() {
                check_interrupted();
                let from_ms = start_ms + j as u64 * window / slots;
                let span_ms = (window / slots).max(1);
                buf.clear();
                write_taps(&mut buf, &mut rng, &self.streams[s], n, from_ms, span_ms);
                let record = BaseRecord::to(EVENTS_TOPIC)
                    .partition((records % u64::from(a.partitions)) as i32)
                    .key(self.streams[s].as_bytes())
                    .payload(&buf[..])
                    .timestamp((from_ms + n.saturating_sub(1) * span_ms / n.max(1)) as i64);
                send(&producer, record);
                records += 1;
                bytes += buf.len() as u64;
                written += n;
            }
        }
        assert_eq!(written, a.events);
        wait_acked(&producer, &deliveries, records);
        Preload {
            records,
            bytes,
            first_epoch,
            last_epoch,
            secs: started.elapsed().as_secs_f64(),
        }
    }
}

#[derive(Default)]
pub struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

pub struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                eprintln!("delivery failed: {e}");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// The gateway's producer settings (gateway/src/producer.rs), with a bounded local queue.
pub fn producer(brokers: &str) -> (ThreadedProducer<DeliveryContext>, Arc<Deliveries>) {
    let deliveries = Arc::new(Deliveries::default());
    let producer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.max.bytes", (16 * 1024 * 1024).to_string())
        // 256 MiB of records waiting for the broker at most: QueueFull is back-pressure.
        .set("queue.buffering.max.kbytes", (256 * 1024).to_string())
        .set("message.timeout.ms", "120000")
        .create_with_context(DeliveryContext(Arc::clone(&deliveries)))
        .expect("a producer");
    (producer, deliveries)
}

/// Sends one record, waiting while librdkafka's queue is full.
pub fn send(producer: &ThreadedProducer<DeliveryContext>, record: BaseRecord<'_, [u8], [u8]>) {
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(_), back)) => {
                check_interrupted();
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("cannot produce: {e}"),
        }
    }
}

pub fn wait_acked(
    producer: &ThreadedProducer<DeliveryContext>,
    deliveries: &Deliveries,
    sent: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while deliveries.acked.load(Ordering::Relaxed) + deliveries.failed.load(Ordering::Relaxed)
        < sent
    {
        check_interrupted();
        assert!(
            Instant::now() < deadline,
            "records not acknowledged in 300 s"
        );
        let _ = producer.flush(Duration::from_millis(100));
    }
    assert_eq!(
        deliveries.failed.load(Ordering::Relaxed),
        0,
        "some records were not delivered"
    );
}

/// Appends `n` taps of `stream` with receive times spread over `[from_ms, from_ms + span_ms)`.
pub fn write_taps(
    buf: &mut Vec<u8>,
    rng: &mut Rng,
    stream: &str,
    n: u64,
    from_ms: u64,
    span_ms: u64,
) {
    let mut user = String::new();
    for i in 0..n {
        let recv_ms = from_ms + i * span_ms / n.max(1);
        user.clear();
        use std::fmt::Write;
        let _ = write!(user, "u{}", rng.next_u64() % 1_000_000);
        let event = EmojiEvent {
            stream: Cow::Borrowed(stream),
            user_id: Cow::Borrowed(&user),
            emoji: Cow::Borrowed(*rng.weighted(&EMOJIS)),
            ts: Some(ClientTs::Millis(
                recv_ms.saturating_sub(rng.next_u64() % 200),
            )),
            recv_ms,
            request_id: None,
            attempt: None,
        };
        serde_json::to_writer(&mut *buf, &event).expect("an event serializes");
        buf.push(b'\n');
    }
}
