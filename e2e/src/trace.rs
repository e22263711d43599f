//! Known traces of emoji taps, the ground truth built from the gateway's own replies, and the
//! exact comparison of published epochs against it.

use emostream_protocol::wire::{Accepted, EpochFrame};
use emostream_testkit::{http, Rng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Multi-codepoint emojis included: a skin tone, VS16, a ZWJ family, a flag; with skewed
/// popularity.
pub const EMOJIS: [(&str, u64); 8] = [
    ("🔥", 40),
    ("👍🏽", 20),
    ("❤️", 12),
    ("👨‍👩‍👧", 8),
    ("😂", 8),
    ("😮", 6),
    ("🇮🇳", 4),
    ("🎉", 2),
];

/// (stream, epoch) → emoji → count.
pub type Truth = BTreeMap<(String, u64), BTreeMap<String, u64>>;

/// One emoji, as often as the crowd in [`EMOJIS`] sends it.
pub fn emoji(rng: &mut Rng) -> &'static str {
    let emoji: &&'static str = rng.weighted(&EMOJIS);
    emoji
}

/// One request to the gateway and the emojis it carries.
#[derive(Debug, Clone)]
pub struct Request {
    pub stream: &'static str,
    pub path: String,
    pub body: String,
    pub emojis: Vec<&'static str>,
}

impl Request {
    /// A JSON array of `size` taps on `stream`'s batch route, from varied users.
    pub fn batch(rng: &mut Rng, stream: &'static str, size: usize, salt: usize) -> Request {
        let emojis: Vec<&str> = (0..size).map(|_| emoji(rng)).collect();
        let items: Vec<String> = emojis
            .iter()
            .enumerate()
            .map(|(j, e)| {
                format!(
                    r#"{{"user_id":"user-{}","emoji":"{e}","timestamp":{}}}"#,
                    (salt * 7 + j) % 997,
                    1_730_000_000_000u64 + j as u64
                )
            })
            .collect();
        Request {
            stream,
            path: format!("/v1/streams/{stream}/emojis"),
            body: format!("[{}]", items.join(",")),
            emojis,
        }
    }

    /// The seeds' single-tap request, counted in stream `main`.
    pub fn seed(rng: &mut Rng, salt: usize) -> Request {
        let emoji = emoji(rng);
        let body = format!(
            r#"{{"user_id":"seed-{salt}","emoji_type":"{emoji}","timestamp":"2024-11-05T10:00:00.000Z"}}"#
        );
        Request {
            stream: "main",
            path: "/send_emoji".into(),
            body,
            emojis: vec![emoji],
        }
    }
}

/// Sends `request` and adds its taps to `truth` under the epoch the gateway answered.
pub async fn send(gateway: &str, request: &Request, truth: &Mutex<Truth>) {
    let response = http::post_json(gateway, &request.path, &request.body)
        .await
        .expect("the gateway answers");
    // The seeds' route answers 200 (their clients take nothing else), the batch route 202.
    let expected = if request.path == "/send_emoji" {
        200
    } else {
        202
    };
    assert_eq!(
        response.status, expected,
        "{}: {}",
        request.path, response.body
    );
    let accepted: Accepted = response.json();
    assert_eq!(accepted.accepted, request.emojis.len() as u64);
    let mut truth = truth.lock().expect("truth lock");
    let counts = truth
        .entry((request.stream.to_string(), accepted.epoch))
        .or_default();
    for e in &request.emojis {
        *counts.entry(e.to_string()).or_default() += 1;
    }
}

/// Sends every request from `concurrency` clients as fast as the gateway answers.
pub async fn send_all(gateway: &str, requests: Vec<Request>, concurrency: usize) -> Truth {
    let truth = Arc::new(Mutex::new(Truth::new()));
    let queue = Arc::new(Mutex::new(requests));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (gateway, truth, queue) = (gateway.to_string(), Arc::clone(&truth), Arc::clone(&queue));
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(request) = queue.lock().expect("queue lock").pop() else {
                    return;
                };
                send(&gateway, &request, &truth).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender task");
    }
    Arc::try_unwrap(truth)
        .expect("senders are done")
        .into_inner()
        .expect("truth lock")
}

/// An open-loop load: one batch request every `interval`, streams in turn, for `duration`.
pub async fn steady(
    gateway: &str,
    streams: &[&'static str],
    batch: usize,
    interval: Duration,
    duration: Duration,
    seed: u64,
) -> Truth {
    let truth = Arc::new(Mutex::new(Truth::new()));
    let mut rng = Rng::seeded(seed);
    let mut pace = tokio::time::interval(interval);
    let mut in_flight = tokio::task::JoinSet::new();
    let rounds = (duration.as_millis() / interval.as_millis().max(1)) as usize;
    for i in 0..rounds {
        pace.tick().await;
        let request = Request::batch(&mut rng, streams[i % streams.len()], batch, i);
        let (gateway, truth) = (gateway.to_string(), Arc::clone(&truth));
        in_flight.spawn(async move { send(&gateway, &request, &truth).await });
    }
    while let Some(done) = in_flight.join_next().await {
        done.expect("sender task");
    }
    Arc::try_unwrap(truth)
        .expect("senders are done")
        .into_inner()
        .expect("truth lock")
}

/// Adds one 🏁 per stream after everything else and returns each stream's marker epoch: once
/// that epoch is published, every earlier epoch of the stream is too.
pub async fn markers(gateway: &str, streams: &[&str], truth: &mut Truth) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for stream in streams {
        let r = http::post_json(
            gateway,
            &format!("/v1/streams/{stream}/emojis"),
            r#"{"user_id":"marker","emoji":"🏁"}"#,
        )
        .await
        .expect("the gateway answers");
        assert_eq!(r.status, 202, "{}", r.body);
        let accepted: Accepted = r.json();
        *truth
            .entry((stream.to_string(), accepted.epoch))
            .or_default()
            .entry("🏁".into())
            .or_default() += 1;
        out.insert(stream.to_string(), accepted.epoch);
    }
    out
}

/// Parses published frames, checking that every copy of a (stream, epoch) is byte-identical
/// (a restart may re-publish an epoch, never change it), and returns one frame per key.
pub fn distinct_frames(payloads: &[Vec<u8>]) -> BTreeMap<(String, u64), EpochFrame> {
    let mut out: BTreeMap<(String, u64), (Vec<u8>, EpochFrame)> = BTreeMap::new();
    for payload in payloads {
        let frame: EpochFrame = serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
        let key = (frame.stream.clone(), frame.epoch);
        match out.get(&key) {
            Some((first, _)) => assert_eq!(
                String::from_utf8_lossy(first),
                String::from_utf8_lossy(payload),
                "({}, {}) was re-published differently",
                key.0,
                key.1
            ),
            None => {
                out.insert(key, (payload.clone(), frame));
            }
        }
    }
    out.into_iter().map(|(k, (_, f))| (k, f)).collect()
}

/// Asserts that `frames` hold exactly the truth: the same (stream, epoch) keys, and in each the
/// same emoji → (count, scaled), the same total and no late taps.
pub fn assert_exact(
    frames: &BTreeMap<(String, u64), EpochFrame>,
    truth: &Truth,
    window_ms: u64,
    what: &str,
) {
    assert_eq!(
        frames.keys().collect::<Vec<_>>(),
        truth.keys().collect::<Vec<_>>(),
        "{what}: published (stream, epoch) keys"
    );
    for (key, frame) in frames {
        let counts = &truth[key];
        let got: BTreeMap<String, (u64, u64)> = frame
            .emojis
            .iter()
            .map(|e| (e.emoji.clone(), (e.count, e.scaled)))
            .collect();
        let want: BTreeMap<String, (u64, u64)> = counts
            .iter()
            .map(|(e, n)| (e.clone(), (*n, swarm_emojis(*n))))
            .collect();
        assert_eq!(got, want, "{what}: {key:?}");
        assert_eq!(
            frame.total,
            counts.values().sum::<u64>(),
            "{what}: {key:?} total"
        );
        assert_eq!(frame.late, 0, "{what}: {key:?} late");
        assert_eq!(
            (frame.start_ms, frame.end_ms),
            (key.1 * window_ms, (key.1 + 1) * window_ms),
            "{what}: {key:?} bounds"
        );
    }
}

/// The product's reduction, one swarm emoji per 1000 taps and at least one, written here again
/// rather than taken from `protocol::epoch` (the code under test); the table below pins it.
fn swarm_emojis(taps: u64) -> u64 {
    if taps < 2000 {
        1
    } else {
        taps / 1000
    }
}

/// Merges two truths (e.g. two phases of a load).
pub fn merge(into: &mut Truth, from: Truth) {
    for (key, counts) in from {
        let entry = into.entry(key).or_default();
        for (emoji, n) in counts {
            *entry.entry(emoji).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reduction_of_the_product_description() {
        let table = [
            (1, 1),
            (999, 1),
            (1000, 1),
            (1999, 1),
            (2000, 2),
            (2999, 2),
            (56_303, 56),
            (1_000_000, 1000),
        ];
        for (taps, swarm) in table {
            assert_eq!(super::swarm_emojis(taps), swarm, "{taps} taps");
        }
    }
}
