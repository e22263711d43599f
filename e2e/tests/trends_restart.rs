//! Trends survive a restart: under a steady load on two worker processes, once the windows are
//! full every dataflow process is killed with SIGKILL at once and `run_workers.sh` restarts the
//! cluster, which refills its windows from `emoji-epochs`. Once the load has ended, every frame on
//! `emoji-trends` (from before the kill and after it) must equal the brute-force window over the
//! epochs published on `emoji-epochs`, any frame sent twice byte for byte the same, and the
//! frames of the window before the kill (the kill may cut them off; the restart sends them
//! again) and of the first window after the restart (the ones an empty window would get wrong)
//! must be there.

use emostream_dataflow::trends::lexicon;
use emostream_dataflow::trends::TrendSettings;
use emostream_e2e::trace;
use emostream_e2e::{System, Topology};
use emostream_protocol::trends::{SentimentIndex, TrendFrame};
use emostream_protocol::wire::EpochFrame;
use emostream_testkit::{clock, free_port, topic, wait_for, workers, Process, Scratch};
use std::collections::BTreeMap;
use std::time::Duration;

const WINDOW_MS: u64 = 1000;
const W: u64 = TrendSettings::WINDOW_EPOCHS;
const STREAMS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Records on the progress topic: one per published epoch.
async fn progress_records(system: &System) -> i64 {
    let (brokers, progress) = (
        system.config.kafka.brokers.clone(),
        system.config.kafka.progress_topic.clone(),
    );
    tokio::task::spawn_blocking(move || topic::watermarks(&brokers, &progress)[&0].1)
        .await
        .expect("watermark task")
}

async fn payloads(system: &System, topic_name: &str) -> Vec<Vec<u8>> {
    let (brokers, name) = (system.config.kafka.brokers.clone(), topic_name.to_string());
    tokio::task::spawn_blocking(move || topic::payloads(&brokers, &name))
        .await
        .expect("reader task")
}

/// Brute force: `stream`'s taps per emoji over the epochs `epoch - w + 1 ..= epoch`.
fn window(
    epochs: &BTreeMap<(String, u64), EpochFrame>,
    stream: &str,
    epoch: u64,
    w: u64,
) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for e in epoch.saturating_sub(w - 1)..=epoch {
        if let Some(frame) = epochs.get(&(stream.to_string(), e)) {
            for emoji in &frame.emojis {
                *sums.entry(emoji.emoji.clone()).or_default() += emoji.count;
            }
        }
    }
    sums
}

/// Brute force of the trending list: by taps descending, then emoji ascending, first five.
fn top(sums: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = sums.iter().map(|(e, n)| (e.clone(), *n)).collect();
    all.sort_by_key(|(emoji, n)| (std::cmp::Reverse(*n), emoji.clone()));
    all.truncate(TrendSettings::TOP_K);
    all
}

/// `stream`'s taps over the epochs `epoch - w + 1 ..= epoch`: the frames' totals, which count the
/// emojis a frame sums in `other` too.
fn taps(epochs: &BTreeMap<(String, u64), EpochFrame>, stream: &str, epoch: u64, w: u64) -> u64 {
    (epoch.saturating_sub(w - 1)..=epoch)
        .filter_map(|e| epochs.get(&(stream.to_string(), e)))
        .map(|frame| frame.total)
        .sum()
}

/// Brute force of the index: the tap-weighted mean score in millionths, halves away from zero.
fn index(sums: &BTreeMap<String, u64>, taps: u64) -> SentimentIndex {
    let (mut weighted, mut scored) = (0i128, 0i128);
    for (emoji, n) in sums {
        if let Some(score) = lexicon::score(emoji) {
            weighted += *n as i128 * score as i128;
            scored += *n as i128;
        }
    }
    let index = (scored > 0).then(|| {
        let magnitude = (2 * weighted.abs() + scored) / (2 * scored);
        (weighted.signum() * magnitude) as f64 / 1e6
    });
    SentimentIndex {
        index,
        scored: scored as u64,
        taps,
    }
}

/// Brute force of the popular ranking: streams by taps over the window, then by name.
fn popular(epochs: &BTreeMap<(String, u64), EpochFrame>, epoch: u64) -> Vec<(String, u64)> {
    let mut ranking: Vec<(String, u64)> = STREAMS
        .iter()
        .map(|s| (s.to_string(), taps(epochs, s, epoch, W)))
        .filter(|(_, taps)| *taps > 0)
        .collect();
    ranking.sort_by_key(|(stream, taps)| (std::cmp::Reverse(*taps), stream.clone()));
    ranking.truncate(TrendSettings::POPULAR_STREAMS);
    ranking
}

/// Checks one frame against the brute force; returns its (kind, stream, epoch).
fn check(frame: &TrendFrame, epochs: &BTreeMap<(String, u64), EpochFrame>) -> (String, u64) {
    let span = |epoch: u64, start_ms: u64, end_ms: u64, window_epochs: u64| {
        assert_eq!(
            (start_ms, end_ms, window_epochs),
            (
                epoch.saturating_sub(W - 1) * WINDOW_MS,
                (epoch + 1) * WINDOW_MS,
                W
            ),
            "the window of {frame:?}"
        );
    };
    match frame {
        TrendFrame::Trending(f) => {
            span(f.epoch, f.start_ms, f.end_ms, f.window_epochs);
            let got: Vec<(String, u64)> = f
                .emojis
                .iter()
                .map(|e| (e.emoji.clone(), e.count))
                .collect();
            let sums = window(epochs, &f.stream, f.epoch, W);
            assert_eq!(got, top(&sums), "trending {} at {}", f.stream, f.epoch);
            (format!("trending {}", f.stream), f.epoch)
        }
        TrendFrame::Sentiment(f) => {
            span(f.epoch, f.start_ms, f.end_ms, f.window_epochs);
            let now = window(epochs, &f.stream, f.epoch, 1);
            let sums = window(epochs, &f.stream, f.epoch, W);
            assert_eq!(
                (&f.this_epoch, &f.window),
                (
                    &index(&now, taps(epochs, &f.stream, f.epoch, 1)),
                    &index(&sums, taps(epochs, &f.stream, f.epoch, W))
                ),
                "sentiment {} at {}",
                f.stream,
                f.epoch
            );
            (format!("sentiment {}", f.stream), f.epoch)
        }
        TrendFrame::Popular(f) => {
            span(f.epoch, f.start_ms, f.end_ms, f.window_epochs);
            let got: Vec<(String, u64)> = f
                .streams
                .iter()
                .map(|s| (s.stream.clone(), s.taps))
                .collect();
            for s in &f.streams {
                assert_eq!(s.taps_per_epoch, s.taps as f64 / W as f64);
            }
            assert_eq!(got, popular(epochs, f.epoch), "popular at {}", f.epoch);
            ("popular".to_string(), f.epoch)
        }
    }
}

/// Checks every trends frame against the brute force over `epochs`, and that a frame sent twice
/// was sent byte for byte the same; returns each (kind, stream, epoch)'s payload.
fn check_all(
    payloads: &[Vec<u8>],
    epochs: &BTreeMap<(String, u64), EpochFrame>,
) -> BTreeMap<(String, u64), Vec<u8>> {
    let mut sent: BTreeMap<(String, u64), Vec<u8>> = BTreeMap::new();
    for payload in payloads {
        let frame: TrendFrame = serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
        let key = check(&frame, epochs);
        if let Some(first) = sent.insert(key.clone(), payload.clone()) {
            assert_eq!(
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(payload),
                "{key:?} was sent twice, differently"
            );
        }
    }
    sent
}

/// `text` with its `[dataflow]` processes and metrics on fresh ports.
fn other_ports(text: &str, processes: usize) -> String {
    let ports = |key: &str| {
        let list: Vec<String> = (0..processes)
            .map(|_| format!("\"127.0.0.1:{}\"", free_port()))
            .collect();
        format!("{key} = [{}]", list.join(", "))
    };
    text.lines()
        .map(|line| {
            if line.starts_with("processes = ") {
                ports("processes")
            } else if line.starts_with("metrics = ") {
                ports("metrics")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A graceful stop of four worker processes under load (SIGTERM to their supervisor), then a
/// start again: the stop drops the epochs no progress record backs, which can be partial, and
/// with three or more workers the published frontier can pass them while frames of theirs wait;
/// no trends frame of such an epoch may leave. Every frame, before the stop and after, equals
/// the brute-force window over the published epochs, and none is sent twice differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trend_frames_equal_the_window_over_published_epochs_across_a_graceful_stop_of_four_workers(
) {
    const PROCESSES: usize = 4;
    let mut system = System::start(Topology {
        window_ms: WINDOW_MS,
        worker_processes: PROCESSES,
        ..Topology::default()
    })
    .await;
    let gateway = system.gateway().to_string();
    let load = tokio::spawn(async move {
        // 30 taps every 20 ms over three streams (1,500 taps/s), for 40 s: the windows fill,
        // the cluster stops and starts again (a few seconds), and more than a window follows.
        trace::steady(
            &gateway,
            &STREAMS,
            30,
            Duration::from_millis(20),
            Duration::from_secs(40),
            13,
        )
        .await
    });
    let full = W as i64 + 3;
    wait_for(
        &format!("{full} progress records"),
        Duration::from_secs(90),
        || {
            let system = &system;
            async move { (progress_records(system).await >= full).then_some(()) }
        },
    )
    .await;
    system.signal("workers", libc::SIGTERM);
    let status = wait_for(
        "the supervisor's graceful stop",
        Duration::from_secs(30),
        || {
            let status = system.exited("workers");
            async move { status }
        },
    )
    .await;
    assert_eq!(status.code(), Some(0), "{}", system.log("workers"));
    let stopped_epoch = clock::now_ms() / WINDOW_MS;
    let log = system.log("workers");
    assert!(
        !log.contains("panicked") && !log.contains("Abort"),
        "a graceful stop:\n{log}"
    );

    let again = Scratch::new("e2e-trends-stop");
    let config = again.join("cluster.toml");
    let text = std::fs::read_to_string(system.config_path()).expect("the system's config");
    std::fs::write(&config, other_ports(&text, PROCESSES)).expect("the restart's config");
    let log_again = again.join("workers.log");
    let mut restarted = Process::spawn(
        "workers again",
        &mut workers::command(PROCESSES, &config),
        &log_again,
    );
    let before = progress_records(&system).await;
    wait_for(
        "the started cluster to record progress",
        Duration::from_secs(60),
        || {
            let system = &system;
            async move { (progress_records(system).await > before).then_some(()) }
        },
    )
    .await;

    let mut truth = load.await.expect("the load task");
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    let trend_payloads = payloads(&system, &system.config.kafka.trends_topic).await;
    let epochs =
        trace::distinct_frames(&payloads(&system, &system.config.kafka.epochs_topic).await);
    trace::assert_exact(&epochs, &truth, WINDOW_MS, "emoji-epochs across the stop");
    let sent = check_all(&trend_payloads, &epochs);
    let dropped = log
        .lines()
        .filter(|l| l.contains("epochs left for the next run"))
        .count();
    eprintln!(
        "stopped at epoch {stopped_epoch} ({dropped} workers left epochs for the next run): {} \
         trends frames ({} distinct) equal the brute force over {} published epochs",
        trend_payloads.len(),
        sent.len(),
        epochs.len()
    );
    assert!(
        restarted.stop(Duration::from_secs(15)).is_some(),
        "the started cluster stops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trend_frames_equal_the_window_over_published_epochs_across_a_kill_of_every_worker() {
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        ..Topology::default()
    })
    .await;
    let gateway = system.gateway().to_string();
    let load = tokio::spawn(async move {
        // 30 taps every 20 ms over three streams (1,500 taps/s), for 50 s: the windows fill
        // (15 s), the cluster is killed and restarts (a few seconds), and a whole window
        // follows.
        trace::steady(
            &gateway,
            &STREAMS,
            30,
            Duration::from_millis(20),
            Duration::from_secs(50),
            11,
        )
        .await
    });

    // The windows are full: more than W epochs published.
    let full = W as i64 + 3;
    wait_for(
        &format!("{full} progress records"),
        Duration::from_secs(90),
        || {
            let system = &system;
            async move { (progress_records(system).await >= full).then_some(()) }
        },
    )
    .await;
    let pids = system.dataflow_pids();
    assert_eq!(pids.len(), 2, "two worker processes: {pids:?}");
    for pid in &pids {
        // SAFETY: kill(2) on a pid of our own test's dataflow process.
        assert_eq!(unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) }, 0);
    }
    let killed_epoch = clock::now_ms() / WINDOW_MS;
    eprintln!("SIGKILL to {pids:?} at epoch {killed_epoch}");
    let before = progress_records(&system).await;
    wait_for(
        "the restarted cluster to publish",
        Duration::from_secs(60),
        || {
            let system = &system;
            let pids = &pids;
            async move {
                let fresh = system.dataflow_pids();
                let restarted = fresh.len() == 2 && fresh.iter().all(|p| !pids.contains(p));
                (restarted && progress_records(system).await > before).then_some(())
            }
        },
    )
    .await;

    let mut truth = load.await.expect("the load task");
    let markers = trace::markers(system.gateway(), &STREAMS, &mut truth).await;
    system
        .published_through(&markers, Duration::from_secs(90))
        .await;
    // Trends first, then the epochs: every trends frame read waited for its epochs to be out.
    let trend_payloads = payloads(&system, &system.config.kafka.trends_topic).await;
    let epochs =
        trace::distinct_frames(&payloads(&system, &system.config.kafka.epochs_topic).await);
    trace::assert_exact(&epochs, &truth, WINDOW_MS, "emoji-epochs after the kill");

    let sent = check_all(&trend_payloads, &epochs);
    // A stream's taps in an epoch change its trending list: the window before the kill (whose
    // frames the kill may cut off) and the first window after the restart (the one an empty
    // window gets wrong) have a frame at every epoch the stream published.
    let around = killed_epoch.saturating_sub(W)..killed_epoch + W;
    let log = system.log("workers");
    let refilled = log
        .lines()
        .filter(|l| l.contains("trends windows refilled"))
        .count();
    assert_eq!(refilled, 1, "one refill, after the kill:\n{log}");
    for stream in STREAMS {
        let after: Vec<u64> = sent
            .keys()
            .filter(|(kind, e)| *kind == format!("trending {stream}") && around.contains(e))
            .map(|(_, e)| *e)
            .collect();
        let published: Vec<u64> = epochs
            .keys()
            .filter(|(s, e)| s == stream && around.contains(e))
            .map(|(_, e)| *e)
            .collect();
        assert!(published.len() >= 20, "{stream} published {published:?}");
        let missing: Vec<&u64> = published.iter().filter(|e| !after.contains(e)).collect();
        assert!(
            missing.is_empty(),
            "{stream}: no trending frame at {missing:?} around the kill at {killed_epoch}"
        );
    }
    eprintln!(
        "{} trends frames ({} distinct) equal the brute force over {} published epochs",
        trend_payloads.len(),
        sent.len(),
        epochs.len()
    );
}
