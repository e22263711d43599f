//! The driver: walks the open-loop timetable, sends each request on its own task over a pool of
//! keep-alive connections, and tallies the answers.

use crate::report::Tally;
use crate::schedule::{Goals, Timetable};
use crate::zipf::{Rng, Zipf};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Zipf ranks, most tapped first. Several are more than one code point (VS16, a skin tone, a
/// flag, a ZWJ family, a keycap): the gateway must count each as one emoji.
pub const EMOJIS: [&str; 16] = [
    "🔥",
    "❤️",
    "😂",
    "👏",
    "😮",
    "🎉",
    "👍🏽",
    "🇮🇳",
    "😢",
    "👨‍👩‍👧",
    "🏏",
    "⚽",
    "💯",
    "🙌🏿",
    "1️⃣",
    "🤯",
];

/// How long the run waits for answers still in flight after the last request was due.
const DRAIN: Duration = Duration::from_secs(10);
/// A request with no answer after this long counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// `POST /v1/streams/{stream}/emojis`, `batch` taps per request.
    Batch,
    /// `POST /send_emoji`, the seeds' body, one tap per request, stream `main`.
    Seed,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub gateway: Uri,
    pub route: Route,
    pub users: usize,
    /// Offered emojis per second outside goal moments.
    pub rate: f64,
    pub streams: Vec<String>,
    pub batch: usize,
    pub duration: Duration,
    pub max_emojis: u64,
    pub max_in_flight: usize,
    pub zipf_exponent: f64,
    pub goals: Goals,
    pub seed: u64,
}

pub async fn run(plan: Plan) -> (Tally, Duration) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(plan.max_in_flight)
        .build_http();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(Semaphore::new(plan.max_in_flight));
    let zipf = Zipf::new(EMOJIS.len(), plan.zipf_exponent);
    let mut rng = Rng::new(plan.seed);
    let per_request = match plan.route {
        Route::Batch => plan.batch,
        Route::Seed => 1,
    };
    let requests_per_second = plan.rate / per_request as f64;

    let bar = ProgressBar::new(plan.duration.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    let goal_now = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (bar, tally, goal_now) = (bar.clone(), Arc::clone(&tally), Arc::clone(&goal_now));
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                bar.set_position(start.elapsed().as_secs());
                let goal = if goal_now.load(Ordering::Relaxed) {
                    "  ⚽ GOAL!"
                } else {
                    ""
                };
                bar.set_message(format!(
                    "{}{goal}",
                    tally.lock().expect("tally lock").line()
                ));
            }
        })
    };

    let start = tokio::time::Instant::now();
    let mut emojis = 0u64;
    for (due, multiplier) in Timetable::new(requests_per_second, &plan.goals, plan.duration) {
        if emojis >= plan.max_emojis {
            break;
        }
        let taps = per_request.min((plan.max_emojis - emojis) as usize);
        emojis += taps as u64;
        goal_now.store(multiplier > 1.0, Ordering::Relaxed);
        let due = start + due;
        tokio::time::sleep_until(due).await;
        let user = format!("lg-{}-{}", plan.seed, rng.below(plan.users));
        let picks: Vec<&str> = (0..taps).map(|_| EMOJIS[zipf.sample(&mut rng)]).collect();
        let stream = &plan.streams[rng.below(plan.streams.len())];
        let request = build(&plan, stream, &user, &picks);
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            tally.lock().expect("tally lock").skipped += 1;
            continue;
        };
        {
            let mut t = tally.lock().expect("tally lock");
            t.requests += 1;
            t.emojis += taps as u64;
        }
        let (client, tally) = (client.clone(), Arc::clone(&tally));
        tokio::spawn(async move {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let response = client.request(request).await.ok()?;
                let status = response.status().as_u16();
                // Read the body so the connection goes back to the pool.
                response.into_body().collect().await.ok()?;
                Some(status)
            })
            .await
            .ok()
            .flatten();
            // Latency from when the request was due, not when it went out: a late send is the
            // system's delay too (no coordinated omission).
            let waited = due.elapsed();
            let mut t = tally.lock().expect("tally lock");
            match answer {
                Some(status) => {
                    *t.statuses.entry(status).or_default() += 1;
                    if (200..300).contains(&status) {
                        t.accepted += taps as u64;
                    }
                    t.latencies_us
                        .push(u32::try_from(waited.as_micros()).unwrap_or(u32::MAX));
                }
                None => t.transport_errors += 1,
            }
            drop(permit);
        });
    }
    goal_now.store(false, Ordering::Relaxed);
    // Every permit back means every request has been answered (or has timed out).
    let _ = tokio::time::timeout(
        DRAIN,
        in_flight.acquire_many(u32::try_from(plan.max_in_flight).expect("max_in_flight fits u32")),
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    let tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
    (tally, start.elapsed())
}

fn build(plan: &Plan, stream: &str, user: &str, picks: &[&str]) -> Request<Full<Bytes>> {
    let now_ms = emostream_testkit::now_ms();
    let tap =
        |emoji: &str| serde_json::json!({"user_id": user, "emoji": emoji, "timestamp": now_ms});
    let (path, body) = match plan.route {
        Route::Seed => (
            "/send_emoji".to_string(),
            serde_json::json!({"user_id": user, "emoji_type": picks[0], "timestamp": now_ms}),
        ),
        Route::Batch if picks.len() == 1 => (format!("/v1/streams/{stream}/emojis"), tap(picks[0])),
        Route::Batch => (
            format!("/v1/streams/{stream}/emojis"),
            picks.iter().map(|e| tap(e)).collect(),
        ),
    };
    let authority = plan
        .gateway
        .authority()
        .expect("the gateway URL has a host");
    Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a well-formed request")
}
