//! A retried request counts once: 10,000 requests, each with its own `Idempotency-Key`, are sent
//! to one of two gateways and, once acknowledged, sent again one or two more times with the same
//! key, to the other gateway and then to both at once (a phone that never saw its answer and
//! retries wherever its load balancer sends it), some at once and some seconds later. Midway,
//! every worker process is killed with SIGKILL and the supervisor restarts the cluster, which
//! replays from its progress record and remembers the keys of the log before its resume offsets
//! again. Every request's taps must be counted exactly once, in the epoch its first attempt's
//! answer named, and any epoch published twice must be byte for byte the same.
//!
//! A first attempt answered 503 after its record was sent (the broker did not acknowledge in
//! time, as a loaded machine's broker sometimes does not), or whose connection was lost before
//! the answer, may or may not have landed: the client
//! resends it with the same key until a 202, as a phone would, and its taps count in the epoch
//! of whichever copy reached the log first, which only the log can tell (read back at the end).

use emostream_e2e::trace::{self, Truth};
use emostream_e2e::{System, Topology};
use emostream_protocol::progress::Progress;
use emostream_protocol::wire::{Accepted, EmojiEvent};
use emostream_testkit::{http, topic, wait_for, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const WINDOW_MS: u64 = 1000;
const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];
const REQUESTS: usize = 10_000;
/// Clients sending first attempts at once; each retries on its own schedule.
const CLIENTS: usize = 96;
/// Retry connections open at once: enough to keep up, few enough that the gateways' per-client
/// connection cap (1,000) is never what answers, even while the broker is slow.
const RETRY_CONNECTIONS: usize = 64;
/// Each client's first attempts at most this often: 96 / 100 ms, about 960 requests a second,
/// 10,000 in about 11 s.
const PACE: Duration = Duration::from_millis(100);
/// The latest a retry follows its first attempt's answer.
const RETRY_WITHIN: Duration = Duration::from_secs(3);

/// One request: its key, its stream, the body and the emojis it carries.
struct Request {
    key: String,
    stream: &'static str,
    body: String,
    emojis: Vec<&'static str>,
}

fn request(rng: &mut Rng, i: usize) -> Request {
    let stream = STREAMS[i % STREAMS.len()];
    let user = format!("user-{}", i % 1_500);
    let emojis: Vec<&'static str> = (0..1 + rng.next_u64() % 3)
        .map(|_| trace::emoji(rng))
        .collect();
    let items: Vec<String> = (emojis.iter())
        .map(|e| format!(r#"{{"user_id":"{user}","emoji":"{e}"}}"#))
        .collect();
    Request {
        key: format!("req-{i}-{:x}", rng.next_u64()),
        stream,
        body: format!("[{}]", items.join(",")),
        emojis,
    }
}

/// One attempt of `request` on `gateway`: the epoch its 202 names, or `None` for a 503 or a
/// connection lost before the answer (both may have counted, or not).
async fn attempt(gateway: &str, request: &Request) -> Option<u64> {
    let response = http::post_json_with(
        gateway,
        &format!("/v1/streams/{}/emojis", request.stream),
        &[("Idempotency-Key", &request.key)],
        &request.body,
    )
    .await;
    let response = match response {
        Ok(response) if response.status != 503 => response,
        Ok(_) => return None,
        Err(e) => {
            eprintln!("{gateway}: {e}");
            return None;
        }
    };
    assert_eq!(response.status, 202, "{}", response.body);
    let accepted: Accepted = response.json();
    assert_eq!(accepted.accepted, request.emojis.len() as u64);
    Some(accepted.epoch)
}

/// Attempts on `gateway` until one is answered 202: its epoch, and whether an attempt before it
/// was not (so may have landed first).
async fn until_accepted(gateway: &str, request: &Request) -> (u64, bool) {
    let mut refused = false;
    loop {
        match attempt(gateway, request).await {
            Some(epoch) => return (epoch, refused),
            None => refused = true,
        }
        // A client's backoff (the 503's Retry-After is 1 s), not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The retries of a request whose first attempt (on `gateways[0]`) was acknowledged, so is
/// first in its partition's log: after `pause`, a second attempt on the other gateway, and with
/// `third` a third on the first gateway at the same time.
async fn retry(
    gateways: Arc<Vec<String>>,
    request: Request,
    pause: Duration,
    third: bool,
    connections: Arc<Semaphore>,
) {
    let (one, other) = (&gateways[0], &gateways[1]);
    // The client's pause before it resends, not a wait for a condition.
    tokio::time::sleep(pause).await;
    let _connections = connections
        .acquire_many(1 + u32::from(third))
        .await
        .expect("the semaphore stays open");
    if third {
        tokio::join!(attempt(other, &request), attempt(one, &request));
    } else {
        attempt(other, &request).await;
    }
}

/// Where the first copy of each of `keys` landed: (stream, epoch of its receive time), from
/// `emoji-events` read back in each partition's order (all copies of a request share one).
async fn first_copies(system: &System, keys: &BTreeSet<String>) -> BTreeMap<String, (String, u64)> {
    let (brokers, events) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.events_topic.clone(),
    );
    let mut records = tokio::task::spawn_blocking(move || topic::read_to_end(&brokers, &events))
        .await
        .expect("reader task");
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut first = BTreeMap::new();
    for record in &records {
        for line in record
            .payload
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let event: EmojiEvent = serde_json::from_slice(line).expect("an event line");
            if let Some(key) = event.request_id.filter(|k| keys.contains(k.as_ref())) {
                first
                    .entry(key.into_owned())
                    .or_insert((event.stream.into_owned(), event.recv_ms / WINDOW_MS));
            }
        }
    }
    first
}

/// Whether the newest progress record resumes every partition past its first record: a restart
/// then has keys before its resume offsets to remember.
async fn resumes_past_the_start(system: &System) -> bool {
    let (brokers, progress) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.progress_topic.clone(),
    );
    let records = tokio::task::spawn_blocking(move || topic::read_to_end(&brokers, &progress))
        .await
        .expect("reader task");
    records.last().is_some_and(|r| {
        let progress: Progress = serde_json::from_slice(&r.payload).expect("a progress record");
        progress.partitions.iter().all(|p| p.resume_offset > 0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_requests_count_once_across_gateways_and_a_crash() {
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        // Two gateways' records for one partition interleave, and on a loaded 2-core machine
        // one's acknowledgement can trail the other's by seconds (3 s was seen too little): a
        // lateness above the gateways' delivery timeout (5 s) covers any record they answer 202.
        allowed_lateness_ms: 6000,
        gateways: 2,
        ..Topology::default()
    })
    .await;
    let gateways = system.gateways();

    let truth = Arc::new(Mutex::new(Truth::new()));
    // Requests whose first attempt was answered 503 or cut off: (key, emojis).
    let ambiguous = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(Semaphore::new(RETRY_CONNECTIONS));
    let mut clients = JoinSet::new();
    for client in 0..CLIENTS {
        let connections = Arc::clone(&connections);
        let (truth, ambiguous, sent, retries, next) = (
            Arc::clone(&truth),
            Arc::clone(&ambiguous),
            Arc::clone(&sent),
            Arc::clone(&retries),
            Arc::clone(&next),
        );
        // Half the clients take gateway 0 first, half gateway 1.
        let mut order = gateways.clone();
        order.rotate_left(client % 2);
        let order = Arc::new(order);
        clients.spawn(async move {
            let mut rng = Rng::seeded(client as u64);
            let mut in_flight = JoinSet::new();
            // Paced, so that the first attempts span the kill on a fast machine too.
            let mut pace = tokio::time::interval(PACE);
            loop {
                pace.tick().await;
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    break;
                }
                let request = request(&mut rng, i);
                let pause = RETRY_WITHIN.mul_f64((rng.next_u64() % 1_000) as f64 / 1_000.0);
                let third = rng.next_u64().is_multiple_of(2);
                retries.fetch_add(1 + usize::from(third), Ordering::Relaxed);
                let (epoch, refused) = until_accepted(&order[0], &request).await;
                if refused {
                    ambiguous
                        .lock()
                        .expect("ambiguous lock")
                        .push((request.key.clone(), request.emojis.clone()));
                } else {
                    let mut truth = truth.lock().expect("truth lock");
                    let counts = (truth.entry((request.stream.to_string(), epoch))).or_default();
                    for e in &request.emojis {
                        *counts.entry(e.to_string()).or_default() += 1;
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
                // The retries go on in the background while the client sends its next request.
                in_flight.spawn(retry(
                    Arc::clone(&order),
                    request,
                    pause,
                    third,
                    Arc::clone(&connections),
                ));
            }
            while let Some(done) = in_flight.join_next().await {
                done.expect("a send");
            }
        });
    }

    // Midway, with epochs of the load recorded, every worker process at once.
    let pids = wait_for(
        "half the requests answered, and epochs of them recorded",
        Duration::from_secs(60),
        || {
            let (system, sent) = (&system, &sent);
            async move {
                let half = sent.load(Ordering::Relaxed) >= REQUESTS / 2;
                (half && resumes_past_the_start(system).await).then(|| system.dataflow_pids())
            }
        },
    )
    .await;
    for pid in &pids {
        // SAFETY: kill(2) on a pid of our own test's dataflow process.
        assert_eq!(
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) },
            0,
            "kill -9 {pid}"
        );
    }
    eprintln!(
        "SIGKILL to every worker process ({pids:?}) after {} requests",
        sent.load(Ordering::Relaxed)
    );

    while let Some(done) = clients.join_next().await {
        done.expect("a client");
    }
    let mut truth = Arc::try_unwrap(truth)
        .expect("clients are done")
        .into_inner()
        .expect("truth lock");
    let ambiguous = Arc::try_unwrap(ambiguous)
        .expect("clients are done")
        .into_inner()
        .expect("ambiguous lock");
    eprintln!(
        "{} first attempts answered 503 or cut off, their epochs read from the log",
        ambiguous.len()
    );
    if !ambiguous.is_empty() {
        let keys: BTreeSet<String> = ambiguous.iter().map(|(k, _)| k.clone()).collect();
        let first = first_copies(&system, &keys).await;
        for (key, emojis) in ambiguous {
            let (stream, epoch) = first[&key].clone();
            let counts = truth.entry((stream, epoch)).or_default();
            for e in emojis {
                *counts.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    let taps: u64 = truth.values().flat_map(|m| m.values()).sum();
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    let (records, frames) = system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    eprintln!(
        "{REQUESTS} requests ({taps} taps) with {} retries: {} epochs exact, {records} records \
         ({} identical re-publications)",
        retries.load(Ordering::Relaxed),
        frames.len(),
        records - frames.len()
    );
    // Nothing lost and nothing doubled over all epochs first (a tap late past the allowed
    // lateness would move between epochs, not vanish), then epoch by epoch.
    let late: Vec<_> = (frames.iter())
        .filter(|(_, f)| f.late > 0)
        .map(|(k, f)| (k.clone(), f.late))
        .collect();
    assert_eq!(
        frames.values().map(|f| f.total).sum::<u64>(),
        truth.values().flat_map(|m| m.values()).sum::<u64>(),
        "taps over all epochs (late: {late:?})"
    );
    eprintln!("frames with late taps: {late:?}");
    trace::assert_exact(&frames, &truth, WINDOW_MS, "retried requests");

    // The restarted workers did remember keys from before their resume offsets.
    let log = plain(&system.log("workers"));
    let refilled: Vec<u64> = (log.lines())
        .filter(|l| l.contains("idempotency keys refilled from the log"))
        .filter_map(|l| {
            l.split("keys=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!("keys refilled per partition at the restart: {refilled:?}");
    assert!(
        refilled.iter().sum::<u64>() > 0,
        "a restart that remembered no key proves nothing:\n{log}"
    );
    let by_stream: BTreeMap<&str, usize> = STREAMS
        .iter()
        .map(|s| (*s, frames.keys().filter(|k| k.0 == *s).count()))
        .collect();
    eprintln!("epochs per stream: {by_stream:?}");
}

/// `text` without ANSI colour sequences (`ESC [ … m`), which the processes' logs may carry.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
