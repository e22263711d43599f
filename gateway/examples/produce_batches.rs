//! The broker's own ceiling for the batch route, for `scripts/bench_ingest.sh`: produces
//! `--records` batch records of `--taps` event lines each, shaped as the gateway writes them
//! (NDJSON `EmojiEvent`s, key = stream), with the gateway's producer settings (the same
//! `[kafka]` configuration and client role), all in flight at once, and waits for every
//! acknowledgement. Prints `taps seconds`.
//!
//! `produce_batches --config cluster.toml --stream s --records 200 --taps 10000`

use emostream_protocol::kafka::ClientRole;
use emostream_protocol::wire::EmojiEvent;
use emostream_protocol::Config;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const EMOJIS: [&str; 6] = ["🔥", "👍🏽", "❤️", "😂", "👨‍👩‍👧", "🇮🇳"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        args.insert(k.trim_start_matches("--").to_string(), v);
    }
    let arg = |k: &str| args.get(k).cloned().ok_or(format!("--{k} is required"));
    let config = Config::load(std::path::Path::new(&arg("config")?))?;
    let stream = arg("stream")?;
    let records: usize = arg("records")?.parse()?;
    let taps: usize = arg("taps")?.parse()?;

    let producer: FutureProducer =
        ClientConfig::from_iter(config.kafka.client_settings(ClientRole::BatchProducer {
            delivery_timeout_ms: 120_000,
            max_message_bytes: 16 << 20,
        }))
        .create()?;
    let now_ms = emostream_testkit::now_ms();
    // Distinct bodies, as many distinct users as the gateway's batch phase sends.
    let bodies: Vec<Vec<u8>> = (0..16)
        .map(|b| {
            let mut body = Vec::new();
            for i in 0..taps {
                let user = format!("user-{}", b * taps + i);
                let event = EmojiEvent {
                    stream: Cow::Borrowed(&stream),
                    user_id: Cow::Borrowed(&user),
                    emoji: Cow::Borrowed(EMOJIS[i % EMOJIS.len()]),
                    ts: None,
                    recv_ms: now_ms,
                    request_id: None,
                    attempt: None,
                };
                serde_json::to_writer(&mut body, &event).expect("an event serializes");
                body.push(b'\n');
            }
            body
        })
        .collect();

    let started = Instant::now();
    let deliveries: Vec<_> = (0..records)
        .map(|r| {
            let record = FutureRecord::to(&config.kafka.events_topic)
                .key(&stream)
                .payload(&bodies[r % bodies.len()]);
            producer.send(record, Duration::from_secs(60))
        })
        .collect();
    for delivery in futures_util::future::join_all(deliveries).await {
        delivery.map_err(|(e, _)| e)?;
    }
    println!("{} {:.3}", records * taps, started.elapsed().as_secs_f64());
    Ok(())
}
