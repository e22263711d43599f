//! Frames are bounded whatever clients tap: a client taps every RGI emoji once an epoch (the
//! gateway's own list, ~3,800 emojis, skin tones included) plus a few 🔥, through the real gateway,
//! broker, two timely processes and broadcaster. Every epoch frame on `emoji-epochs` and at a
//! viewer must list exactly `max_frame_emojis` (64) emojis — 🔥 first, then the lowest emojis by
//! UTF-8 bytes — sum the rest in `other`, keep `total` exact against what the gateway
//! acknowledged, and stay within `EpochFrame::max_bytes`; the dataflow's metrics must count each
//! cut frame once; every trend frame must equal the brute-force window over those published
//! frames.

use emostream_e2e::trace::{self, Truth};
use emostream_e2e::viewer::Viewer;
use emostream_e2e::{System, Topology};
use emostream_protocol::trends::TrendFrame;
use emostream_protocol::wire::{Accepted, EpochFrame};
use emostream_testkit::{http, topic, wait_for, wait_until};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const STREAM: &str = "rgi";
/// The default `[epochs] max_frame_emojis`.
const BOUND: usize = 64;
const ROUNDS: usize = 4;
/// The gateway's default `user_burst_taps`: one user id per this many taps of a request.
const TAPS_PER_USER: usize = 100;
const WINDOW_MS: u64 = 1000;
/// `TrendSettings::WINDOW_EPOCHS` and `TOP_K`, the trends stage's defaults.
const TREND_WINDOW: u64 = 15;
const TOP_K: usize = 5;

/// Every emoji the gateway accepts, in its canonical form: its list is the `emojis` crate's
/// (each emoji, and each of its skin-tone variants).
fn every_rgi_emoji() -> Vec<&'static str> {
    let all: BTreeSet<&'static str> = emojis::iter()
        .flat_map(|e| match e.skin_tones() {
            Some(tones) => tones.map(|t| t.as_str()).collect::<Vec<_>>(),
            None => vec![e.as_str()],
        })
        // The gateway's rule (`canonical_emoji`): an emoji it stores as itself.
        .filter(|s| emojis::get(s).map(|e| e.as_str()) == Some(*s))
        .collect();
    all.into_iter().collect()
}

/// Posts `emojis` to the stream in one request, `TAPS_PER_USER` taps per user id, and adds what
/// the gateway acknowledged to `truth`.
async fn tap(system: &System, emojis: &[&str], users: &str, truth: &mut Truth) {
    let items: Vec<String> = emojis
        .iter()
        .enumerate()
        .map(|(i, emoji)| {
            format!(
                r#"{{"user_id":"{users}-{}","emoji":"{emoji}"}}"#,
                i / TAPS_PER_USER
            )
        })
        .collect();
    let r = http::post_json(
        system.gateway(),
        &format!("/v1/streams/{STREAM}/emojis"),
        &format!("[{}]", items.join(",")),
    )
    .await
    .expect("the gateway answers");
    assert_eq!(r.status, 202, "{}", r.body);
    let accepted: Accepted = r.json();
    assert_eq!(accepted.accepted, emojis.len() as u64);
    let counts = truth
        .entry((STREAM.to_string(), accepted.epoch))
        .or_default();
    for emoji in emojis {
        *counts.entry(emoji.to_string()).or_default() += 1;
    }
}

/// The frame the contract asks for, from the acknowledged counts alone: written here again
/// rather than taken from the dataflow (the code under test).
fn expected(epoch: u64, counts: &BTreeMap<String, u64>) -> String {
    let mut ranked: Vec<(&String, u64)> = counts.iter().map(|(e, n)| (e, *n)).collect();
    ranked.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    });
    let scaled = |n: u64| (n / 1000).max(1);
    let listed: Vec<String> = ranked
        .iter()
        .take(BOUND)
        .map(|(e, n)| format!(r#"{{"emoji":"{e}","count":{n},"scaled":{}}}"#, scaled(*n)))
        .collect();
    let rest = &ranked[BOUND.min(ranked.len())..];
    let other = if rest.is_empty() {
        String::new()
    } else {
        format!(
            r#","other":{{"distinct":{},"count":{},"scaled":{}}}"#,
            rest.len(),
            rest.iter().map(|(_, n)| n).sum::<u64>(),
            rest.iter().map(|(_, n)| scaled(*n)).sum::<u64>()
        )
    };
    format!(
        r#"{{"type":"epoch","stream":"{STREAM}","epoch":{epoch},"start_ms":{},"end_ms":{},"total":{},"late":0,"emojis":[{}]{other}}}"#,
        epoch * WINDOW_MS,
        (epoch + 1) * WINDOW_MS,
        counts.values().sum::<u64>(),
        listed.join(",")
    )
}

/// Brute force of a trend frame over the published epoch frames: the trending list (listed
/// emojis' taps over the window, by taps then emoji, first five) and the window's taps (every
/// tap, those summed in `other` included).
fn window(frames: &BTreeMap<u64, EpochFrame>, epoch: u64, w: u64) -> (Vec<(String, u64)>, u64) {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    let mut taps = 0;
    for (_, frame) in frames.range(epoch.saturating_sub(w - 1)..=epoch) {
        taps += frame.total;
        for e in &frame.emojis {
            *sums.entry(e.emoji.clone()).or_default() += e.count;
        }
    }
    let mut top: Vec<(String, u64)> = sums.into_iter().collect();
    top.sort_by_key(|(emoji, n)| (std::cmp::Reverse(*n), emoji.clone()));
    top.truncate(TOP_K);
    (top, taps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rgi_emoji_each_epoch_keeps_frames_bounded_and_totals_exact() {
    let rgi = every_rgi_emoji();
    assert!(rgi.len() > 3_700, "the RGI list has {} emojis", rgi.len());
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        ..Topology::default()
    })
    .await;
    let viewer = Viewer::connect(&format!("ws://{}", system.subscribers()[0]), STREAM).await;

    let mut truth = Truth::new();
    // One round per epoch, paced: an open-loop load, not a synchronisation.
    // The 🔥 ride in the same request as the RGI list, so they land in its epoch: sent apart,
    // an epoch boundary between the two left an epoch of the list alone, whose first emoji is
    // the lowest by bytes (#️⃣), not 🔥.
    let round_taps: Vec<&str> = rgi.iter().copied().chain(["🔥"; 3]).collect();
    let mut pace = tokio::time::interval(Duration::from_millis(WINDOW_MS));
    for round in 0..ROUNDS {
        pace.tick().await;
        tap(&system, &round_taps, &format!("rgi-{round}"), &mut truth).await;
    }
    let markers = trace::markers(system.gateway(), &[STREAM], &mut truth).await;
    let (_, published) = system
        .published_through(&markers, Duration::from_secs(60))
        .await;

    // Every record on emoji-epochs: within the byte bound, and exactly the contract's frame.
    let (brokers, epochs_topic, trends_topic) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.epochs_topic.clone(),
        system.config.kafka.trends_topic.clone(),
    );
    let payloads = tokio::task::spawn_blocking(move || topic::payloads(&brokers, &epochs_topic))
        .await
        .expect("reader task");
    let mut text_of: BTreeMap<u64, String> = BTreeMap::new();
    for payload in payloads {
        let text = String::from_utf8(payload).expect("a frame is UTF-8");
        assert!(
            text.len() <= EpochFrame::max_bytes(BOUND),
            "{} bytes: {text}",
            text.len()
        );
        let frame: EpochFrame = serde_json::from_str(&text).expect("an epoch frame");
        text_of.insert(frame.epoch, text);
    }
    let keys: Vec<(String, u64)> = published.keys().cloned().collect();
    assert_eq!(keys, truth.keys().cloned().collect::<Vec<_>>());
    let mut cut = 0;
    for ((_, epoch), counts) in &truth {
        let frame = &published[&(STREAM.to_string(), *epoch)];
        assert_eq!(text_of[epoch], expected(*epoch, counts), "epoch {epoch}");
        if counts.len() > BOUND {
            cut += 1;
            assert_eq!(frame.emojis.len(), BOUND, "epoch {epoch}");
            assert_eq!(frame.emojis[0].emoji, "🔥", "epoch {epoch}");
            let other = frame.other.as_ref().expect("more emojis than the bound");
            assert_eq!(
                frame.emojis.iter().map(|e| e.count).sum::<u64>() + other.count,
                frame.total,
                "epoch {epoch}"
            );
        }
    }
    assert!(cut >= 1, "no epoch held every RGI emoji: {truth:?}");
    // The processes counted each cut frame once (nothing was replayed: no process restarted).
    let mut bounded = 0;
    for addr in &system.config.dataflow.metrics {
        let text = http::get(addr, "/metrics")
            .await
            .expect("the dataflow serves metrics")
            .body;
        bounded += text
            .lines()
            .find_map(|l| {
                l.strip_prefix("emostream_dataflow_frames_bounded_total")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no frames_bounded_total in\n{text}"));
    }
    assert_eq!(bounded, cut, "frames bounded, summed over the processes");

    // The viewer got those very bytes.
    let last = markers[STREAM];
    wait_until(
        &format!("epoch {last} at the viewer"),
        Duration::from_secs(30),
        || {
            let done = viewer
                .epoch_frames()
                .iter()
                .any(|f| f.text.contains(&format!(r#""epoch":{last},"#)));
            async move { done }
        },
    )
    .await;
    let seen: BTreeMap<u64, String> = viewer
        .epoch_frames()
        .into_iter()
        .map(|r| {
            let frame: EpochFrame = serde_json::from_str(&r.text).expect("an epoch frame");
            (frame.epoch, r.text)
        })
        .collect();
    assert_eq!(seen, text_of);

    // Trend frames are bounded by their lists, and equal the brute force over the published
    // (bounded) epoch frames.
    let by_epoch: BTreeMap<u64, EpochFrame> = published
        .into_iter()
        .map(|((_, epoch), frame)| (epoch, frame))
        .collect();
    // 🔥's taps grow at every epoch of a round, so each has a trending frame of its own (the
    // marker's epoch, holding 🏁 alone when it follows the last round's, changes no list).
    let fire_epochs: Vec<u64> = truth
        .iter()
        .filter(|(_, counts)| counts.contains_key("🔥"))
        .map(|((_, epoch), _)| *epoch)
        .collect();
    let last_fire = *fire_epochs.last().expect("the rounds tapped 🔥");
    let brokers = system.config.kafka.brokers.clone();
    let trends = wait_for(
        &format!("the trending frame of epoch {last_fire}"),
        Duration::from_secs(30),
        || {
            let (brokers, trends_topic) = (brokers.clone(), trends_topic.clone());
            async move {
                let payloads =
                    tokio::task::spawn_blocking(move || topic::payloads(&brokers, &trends_topic))
                        .await
                        .expect("reader task");
                payloads
                    .iter()
                    .any(|p| {
                        matches!(serde_json::from_slice::<TrendFrame>(p),
                            Ok(TrendFrame::Trending(f)) if f.stream == STREAM && f.epoch == last_fire)
                    })
                    .then_some(payloads)
            }
        },
    )
    .await;
    let mut trending = 0;
    for payload in trends {
        match serde_json::from_slice::<TrendFrame>(&payload).expect("a trend frame") {
            TrendFrame::Trending(f) if f.stream == STREAM => {
                let got: Vec<(String, u64)> =
                    f.emojis.into_iter().map(|e| (e.emoji, e.count)).collect();
                assert_eq!(
                    got,
                    window(&by_epoch, f.epoch, TREND_WINDOW).0,
                    "{}",
                    f.epoch
                );
                trending += 1;
            }
            TrendFrame::Sentiment(f) if f.stream == STREAM => {
                assert_eq!(
                    (f.this_epoch.taps, f.window.taps),
                    (
                        window(&by_epoch, f.epoch, 1).1,
                        window(&by_epoch, f.epoch, TREND_WINDOW).1
                    ),
                    "sentiment at {}",
                    f.epoch
                );
            }
            _ => {}
        }
    }
    // One at every epoch of a round (🔥's count in the window grows), then more as it drains.
    assert!(
        trending >= fire_epochs.len(),
        "{trending} trending frames of {STREAM} for {} epochs with 🔥 taps",
        fire_epochs.len()
    );
}
