//! The broker stopped for a few seconds while taps flow, then started again on the same data.
//!
//! The gateway must answer 503 (with `Retry-After`) while the broker is away and 202 again by
//! itself once it is back; the dataflow and the broadcaster must carry on without a restart; and
//! `emoji-epochs` must hold every acknowledged tap exactly once, in the epoch its answer named.
//!
//! Each request goes to a stream of its own, so the published frames say request by request
//! what landed. A 503 promises nothing either way (the broker may have written a record whose
//! acknowledgement it never sent): such a request may be counted, but only whole and once.

use emostream_e2e::trace::{self, Request, Truth};
use emostream_e2e::viewer::Viewer;
use emostream_e2e::{System, Topology};
use emostream_protocol::wire::{Accepted, EpochFrame};
use emostream_testkit::{http, wait_for, wait_until, Rng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
/// One request every 20 ms, 5 taps each.
const PACE: Duration = Duration::from_millis(20);
const TAPS: usize = 5;
/// A bound on the load, whatever happens: 100 s of requests.
const MAX_REQUESTS: usize = 5_000;

/// What one request's answer said.
#[derive(Debug, Clone)]
enum Outcome {
    Accepted { epoch: u64 },
    Refused,
}

#[derive(Default)]
struct Log {
    /// (stream, emojis sent, outcome), in the order the answers came.
    answers: Vec<(String, Vec<&'static str>, Outcome)>,
}

impl Log {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.answers.iter().filter(|(_, _, o)| f(o)).count()
    }
    fn accepted(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Accepted { .. }))
    }
    fn refused(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Refused))
    }
}

/// Sends one request to a new stream every `PACE` until `stop`; every answer must be a 202 with
/// the taps accepted, or a 503 that tells the client when to retry.
async fn load(gateway: String, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let mut rng = Rng::seeded(17);
    let mut pace = tokio::time::interval(PACE);
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        pace.tick().await;
        let template = Request::batch(&mut rng, "unused", TAPS, i);
        let stream = format!("r{i}");
        let path = format!("/v1/streams/{stream}/emojis");
        let (gateway, log) = (gateway.clone(), Arc::clone(&log));
        in_flight.spawn(async move {
            let r = http::post_json(&gateway, &path, &template.body)
                .await
                .expect("the gateway answers");
            let outcome = match r.status {
                202 => {
                    let accepted: Accepted = r.json();
                    assert_eq!(accepted.accepted, TAPS as u64, "{}", r.body);
                    Outcome::Accepted {
                        epoch: accepted.epoch,
                    }
                }
                503 => {
                    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                    Outcome::Refused
                }
                other => panic!("{path}: {other} {}", r.body),
            };
            log.lock()
                .unwrap()
                .answers
                .push((stream, template.emojis, outcome));
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done.expect("a request task");
    }
}

async fn ready_status(gateway: &str) -> u16 {
    http::get(gateway, "/readyz").await.map_or(0, |r| r.status)
}

/// One 🏁 on the watched stream, which must be acknowledged; returns its epoch.
async fn tap(gateway: &str, truth: &mut Truth) -> u64 {
    trace::markers(gateway, &["watched"], truth).await["watched"]
}

/// The viewer's epoch frame for `epoch`, once it arrived.
async fn viewer_frame(viewer: &Viewer, epoch: u64) -> EpochFrame {
    wait_for(
        &format!("the viewer's frame of epoch {epoch}"),
        Duration::from_secs(30),
        || {
            let found = viewer.epoch_frames().into_iter().find_map(|r| {
                let frame: EpochFrame = serde_json::from_str(&r.text).ok()?;
                (frame.epoch == epoch).then_some(frame)
            });
            async move { found }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_under_load_loses_and_doubles_nothing() {
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        ..Topology::default()
    })
    .await;
    let gateway = system.gateway().to_string();
    let subscriber = format!("ws://{}", system.subscribers()[0]);
    let viewer = Viewer::connect(&subscriber, "watched").await;
    let mut watched = Truth::new();
    let before = tap(&gateway, &mut watched).await;
    viewer_frame(&viewer, before).await;
    let dataflow = {
        let mut pids = system.dataflow_pids();
        pids.sort_unstable();
        pids
    };

    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(load(gateway.clone(), Arc::clone(&log), Arc::clone(&stop)));
    let accepted = || log.lock().unwrap().accepted();
    let refused = || log.lock().unwrap().refused();
    wait_until("50 requests accepted", Duration::from_secs(30), || {
        let n = accepted();
        async move { n >= 50 }
    })
    .await;

    system.broker().stop();
    wait_until(
        "a 503 with the broker down",
        Duration::from_secs(30),
        || {
            let n = refused();
            async move { n >= 1 }
        },
    )
    .await;
    assert_eq!(
        ready_status(&gateway).await,
        503,
        "/readyz with the broker down"
    );
    // Down for a while: 100 more refusals at 50 requests/s is two seconds of load.
    let first_refusals = refused();
    wait_until("100 more 503s", Duration::from_secs(30), || {
        let n = refused();
        async move { n >= first_refusals + 100 }
    })
    .await;
    let accepted_while_down = accepted();

    system.broker().start_again();
    wait_until(
        "the gateway to accept 100 requests after the restart",
        Duration::from_secs(60),
        || {
            let n = accepted();
            async move { n >= accepted_while_down + 100 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    sender.await.expect("the load task");
    assert_eq!(
        ready_status(&gateway).await,
        200,
        "/readyz after the restart"
    );

    // The broadcaster carries on: the viewer, connected all along, gets a new epoch.
    let after = tap(&gateway, &mut watched).await;
    let seen = viewer_frame(&viewer, after).await;

    // What must be published: every accepted request, in the epoch it was told.
    let log = Arc::try_unwrap(log).ok().unwrap().into_inner().unwrap();
    let mut truth = watched;
    let mut refused_streams = BTreeMap::new();
    for (stream, emojis, outcome) in &log.answers {
        match outcome {
            Outcome::Accepted { epoch } => {
                let counts = truth.entry((stream.clone(), *epoch)).or_default();
                for e in emojis {
                    *counts.entry(e.to_string()).or_default() += 1;
                }
            }
            Outcome::Refused => {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for e in emojis {
                    *counts.entry(e.to_string()).or_default() += 1;
                }
                refused_streams.insert(stream.clone(), counts);
            }
        }
    }
    let keys: Vec<(String, u64)> = truth.keys().cloned().collect();
    let (brokers, topic) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.epochs_topic.clone(),
    );
    let frames = wait_for(
        "every accepted request's epoch on emoji-epochs",
        Duration::from_secs(90),
        || {
            let (brokers, topic, keys) = (brokers.clone(), topic.clone(), keys.clone());
            async move {
                let payloads = tokio::task::spawn_blocking(move || {
                    emostream_testkit::topic::payloads(&brokers, &topic)
                })
                .await
                .expect("reader task");
                let frames = trace::distinct_frames(&payloads);
                keys.iter()
                    .all(|k| frames.contains_key(k))
                    .then_some(frames)
            }
        },
    )
    .await;

    // A refused request was counted whole and once, or not at all; it is then part of the truth.
    let mut refused_but_counted = std::collections::BTreeSet::new();
    for ((stream, epoch), frame) in &frames {
        let Some(sent) = refused_streams.get(stream) else {
            continue;
        };
        assert!(
            refused_but_counted.insert(stream.clone()),
            "refused request on {stream} published in two epochs"
        );
        let got: BTreeMap<String, u64> = frame
            .emojis
            .iter()
            .map(|e| (e.emoji.clone(), e.count))
            .collect();
        assert_eq!(
            &got, sent,
            "refused request on {stream}, published in {epoch}"
        );
        truth.insert((stream.clone(), *epoch), got);
    }
    eprintln!(
        "{} requests accepted, {} refused while the broker was away ({} of those counted all \
         the same), {} epochs published",
        log.accepted(),
        log.refused(),
        refused_but_counted.len(),
        frames.len()
    );
    trace::assert_exact(
        &frames,
        &truth,
        WINDOW_MS,
        "emoji-epochs across a broker restart",
    );
    assert_eq!(
        seen,
        frames[&("watched".to_string(), after)],
        "the viewer's frame after the restart"
    );
    let mut now = system.dataflow_pids();
    now.sort_unstable();
    assert_eq!(
        now, dataflow,
        "the dataflow processes ran through the outage"
    );
}
