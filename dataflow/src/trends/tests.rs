//! The stage in a real timely dataflow (1 and 2 workers) against a brute-force recomputation of
//! every window, over random traces; and the measurement that its work per epoch does not grow
//! with the window's length.

use super::refill::{refilled, resend_from, Refill};
use super::{held, lexicon, TrendSettings, Trends};
use crate::EpochCount;
use emostream_protocol::trends::{SentimentIndex, TrendFrame};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Concat, Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// Scored (with and without VS16 or a skin tone, positive and negative) and unscored emojis.
const POOL: [&str; 10] = ["😂", "❤️", "❤", "👍🏽", "😭", "🔥", "😡", "👨‍👩‍👧", "🇮🇳", "1️⃣"];

/// A small deterministic generator (splitmix64), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `epochs[e]` holds every (stream, epoch) count closed at epoch `e`, as CountEpochs emits them.
#[derive(Debug, Clone)]
struct Trace {
    epochs: Vec<Vec<EpochCount>>,
}

/// Random streams, gaps, ties (small counts) and skew (the odd large count).
fn random_trace(rng: &mut Rng) -> Trace {
    let streams = 1 + rng.below(4);
    let length = 1 + rng.below(40);
    let epochs = (0..length)
        .map(|epoch| {
            let live: Vec<u64> = (0..streams).filter(|_| rng.below(10) < 6).collect();
            live.into_iter()
                .map(|s| {
                    let mut emojis: BTreeMap<String, u64> = BTreeMap::new();
                    for _ in 0..1 + rng.below(5) {
                        let emoji = POOL[rng.below(POOL.len() as u64) as usize];
                        let n = if rng.below(8) == 0 {
                            1 + rng.below(5000)
                        } else {
                            1 + rng.below(3)
                        };
                        *emojis.entry(emoji.to_string()).or_default() += n;
                    }
                    EpochCount {
                        stream: format!("s{s}"),
                        epoch,
                        total: emojis.values().sum(),
                        late: 0,
                        emojis: emojis.into_iter().collect(),
                    }
                })
                .collect()
        })
        .collect();
    Trace { epochs }
}

/// Runs the stage over the trace on `workers` threads and returns every frame it produced. Each
/// (stream, epoch) enters on one worker (spread over them, as the exchange by stream does), then
/// time runs on past the trace until every window has emptied.
fn run_stage(trace: &Trace, settings: TrendSettings, workers: usize) -> Vec<TrendFrame> {
    run_from(trace, settings, workers, 0, end(trace, settings))
}

/// The epoch by which every window of the trace has emptied again.
fn end(trace: &Trace, settings: TrendSettings) -> u64 {
    trace.epochs.len() as u64 + settings.window_epochs
}

/// As [`run_stage`], but the input closes right after sending epoch `last` (a stop: the frontier
/// empties at once, before passing `last`).
fn run_until(trace: &Trace, settings: TrendSettings, workers: usize, last: u64) -> Vec<TrendFrame> {
    run_from(trace, settings, workers, 0, last)
}

/// As [`run_until`], but as a run restarted at epoch `first`: the epochs before it are not
/// counted but refilled (worker 0, as `run_worker` does), and frames before the epochs sent again
/// are dropped (as `PublishTrends` does).
fn run_from(
    trace: &Trace,
    settings: TrendSettings,
    workers: usize,
    first: u64,
    last: u64,
) -> Vec<TrendFrame> {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&frames);
    let trace = Arc::new(trace.clone());
    // As the dataflow runs: idle streams forgotten, which must change no frame.
    let mut config = timely::Config::process(workers);
    held::configure(&mut config.worker);
    timely::execute(config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let sink = Arc::clone(&sink);
        let refilled: Vec<EpochCount> = match index {
            0 => refilled(first, settings.window_epochs)
                .flat_map(|e| trace.epochs.get(e as usize).cloned().unwrap_or_default())
                .collect(),
            _ => Vec::new(),
        };
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .concat(scope.refill(refilled))
                .trends(settings)
                .filter(move |frame| epoch_of(frame) >= resend_from(first, settings.window_epochs))
                .inspect(move |frame: &TrendFrame| sink.lock().unwrap().push(frame.clone()))
                .probe_with(&probe);
        });
        input.advance_to(first);
        // A restarted cluster's sources hold the frontier at its first epoch while they read:
        // the refilled epochs go through (and their windows slide) before anything new closes.
        while probe.less_than(&first) {
            worker.step();
        }
        for epoch in first..=last {
            for (i, count) in trace
                .epochs
                .get(epoch as usize)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if (i + epoch as usize) % peers == index {
                    input.send(count.clone());
                }
            }
            if epoch < last {
                input.advance_to(epoch + 1);
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
        }
    })
    .expect("the test dataflow starts");
    Arc::try_unwrap(frames)
        .expect("the workers are done")
        .into_inner()
        .unwrap()
}

/// What a consumer of the frames knows at each epoch: the newest frame of each kind and stream.
/// Frames are keyed `(kind, stream)`, then by epoch; none may repeat an epoch.
type Latest = BTreeMap<(&'static str, String), BTreeMap<u64, TrendFrame>>;

fn by_kind(frames: Vec<TrendFrame>) -> Latest {
    let mut latest = Latest::new();
    for frame in frames {
        let (kind, epoch) = match &frame {
            TrendFrame::Trending(f) => ("trending", f.epoch),
            TrendFrame::Sentiment(f) => ("sentiment", f.epoch),
            TrendFrame::Popular(f) => ("popular", f.epoch),
        };
        let previous = latest
            .entry((kind, frame.stream().to_string()))
            .or_default()
            .insert(epoch, frame.clone());
        assert!(previous.is_none(), "two {kind} frames at epoch {epoch}");
    }
    latest
}

fn state_at<'a>(
    latest: &'a Latest,
    kind: &'static str,
    stream: &str,
    epoch: u64,
) -> Option<&'a TrendFrame> {
    latest
        .get(&(kind, stream.to_string()))?
        .range(..=epoch)
        .next_back()
        .map(|(_, frame)| frame)
}

/// Brute force: the counts of `stream` summed over the epochs `epoch - w + 1 ..= epoch`.
fn naive_window(trace: &Trace, stream: &str, epoch: u64, w: u64) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for e in epoch.saturating_sub(w - 1)..=epoch {
        for count in trace.epochs.get(e as usize).into_iter().flatten() {
            if count.stream == stream {
                for (emoji, n) in &count.emojis {
                    *sums.entry(emoji.clone()).or_default() += n;
                }
            }
        }
    }
    sums
}

/// Brute force of the tie rule: everything sorted by (count descending, emoji ascending), first k.
fn naive_top(sums: &BTreeMap<String, u64>, k: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = sums.iter().map(|(e, n)| (e.clone(), *n)).collect();
    all.sort_by_key(|(emoji, n)| (std::cmp::Reverse(*n), emoji.clone()));
    all.truncate(k);
    all
}

/// Brute force of the index: the weighted mean of the scores in millionths, halves away from zero.
fn naive_index(sums: &BTreeMap<String, u64>) -> SentimentIndex {
    let (mut weighted, mut scored, mut taps) = (0i128, 0i128, 0u64);
    for (emoji, n) in sums {
        taps += n;
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

/// Every epoch up to `through`: the consumer's view equals brute force.
fn check(
    trace: &Trace,
    settings: TrendSettings,
    frames: Vec<TrendFrame>,
    through: u64,
    context: &str,
) {
    let latest = by_kind(frames);
    let w = settings.window_epochs;
    let streams: Vec<String> = (0..4).map(|s| format!("s{s}")).collect();
    for epoch in 0..=through {
        let mut engagement = Vec::new();
        for stream in &streams {
            let sums = naive_window(trace, stream, epoch, w);
            let now = naive_window(trace, stream, epoch, 1);

            let top = match state_at(&latest, "trending", stream, epoch) {
                Some(TrendFrame::Trending(f)) => f
                    .emojis
                    .iter()
                    .map(|e| (e.emoji.clone(), e.count))
                    .collect(),
                _ => Vec::new(),
            };
            assert_eq!(
                top,
                naive_top(&sums, settings.top_k),
                "{context}: trending {stream} at {epoch}"
            );

            let empty = naive_index(&BTreeMap::new());
            let (this_epoch, window) = match state_at(&latest, "sentiment", stream, epoch) {
                Some(TrendFrame::Sentiment(f)) => (f.this_epoch.clone(), f.window.clone()),
                _ => (empty.clone(), empty),
            };
            assert_eq!(
                this_epoch,
                naive_index(&now),
                "{context}: sentiment {stream} at {epoch}"
            );
            assert_eq!(
                window,
                naive_index(&sums),
                "{context}: window sentiment {stream} at {epoch}"
            );

            let taps: u64 = sums.values().sum();
            if taps > 0 {
                engagement.push((stream.clone(), taps));
            }
        }
        engagement.sort_by_key(|(stream, taps)| (std::cmp::Reverse(*taps), stream.clone()));
        engagement.truncate(settings.popular_streams);
        let popular = match state_at(&latest, "popular", "*", epoch) {
            Some(TrendFrame::Popular(f)) => {
                for s in &f.streams {
                    assert_eq!(s.taps_per_epoch, s.taps as f64 / w as f64);
                }
                f.streams
                    .iter()
                    .map(|s| (s.stream.clone(), s.taps))
                    .collect()
            }
            _ => Vec::new(),
        };
        assert_eq!(popular, engagement, "{context}: popular at {epoch}");
    }
}

#[test]
fn matches_brute_force_on_random_traces() {
    for seed in 0..120 {
        let mut rng = Rng(seed);
        let trace = random_trace(&mut rng);
        let settings = TrendSettings {
            window_epochs: [1, 2, 3, 5, 15][rng.below(5) as usize],
            top_k: 1 + rng.below(4) as usize,
            popular_streams: 1 + rng.below(3) as usize,
            window_ms: 2000,
        };
        let workers = 1 + (seed % 2) as usize;
        let context = format!("seed {seed}, {workers} worker(s), {settings:?}");
        // Through the last window's end: every window has emptied again.
        let through = trace.epochs.len() as u64 + settings.window_epochs;
        let frames = run_stage(&trace, settings, workers);
        check(&trace, settings, frames, through, &context);
    }
}

#[test]
fn a_stop_never_shows_a_window_draining() {
    for seed in 0..40 {
        let mut rng = Rng(1000 + seed);
        let trace = random_trace(&mut rng);
        let settings = TrendSettings {
            window_epochs: [2, 5, 15][rng.below(3) as usize],
            ..TrendSettings::new(2000)
        };
        let workers = 1 + (seed % 2) as usize;
        let last = trace.epochs.len() as u64 - 1;
        let frames = run_until(&trace, settings, workers, last);
        for frame in &frames {
            let epoch = epoch_of(frame);
            assert!(
                epoch < last,
                "seed {seed}: a frame at {epoch}, not closed before the stop at {last}"
            );
        }
        // What was published before the stop is still exact.
        let context = format!("stop, seed {seed}, {workers} worker(s)");
        if let Some(before) = last.checked_sub(1) {
            check(&trace, settings, frames, before, &context);
        }
    }
}

fn epoch_of(frame: &TrendFrame) -> u64 {
    match frame {
        TrendFrame::Trending(f) => f.epoch,
        TrendFrame::Sentiment(f) => f.epoch,
        TrendFrame::Popular(f) => f.epoch,
    }
}

/// A run restarted at any epoch, its windows refilled, sends from there on, and again for the W
/// epochs before (a crash may have cut their frames off), exactly the frames an uninterrupted
/// run sends: the same epochs, the same content.
#[test]
fn a_refilled_restart_sends_the_frames_of_an_uninterrupted_run() {
    let json = |frames: Vec<TrendFrame>| {
        let mut lines: Vec<String> = frames
            .iter()
            .map(|f| serde_json::to_string(f).unwrap())
            .collect();
        lines.sort();
        lines
    };
    for seed in 0..40 {
        let mut rng = Rng(2000 + seed);
        let trace = random_trace(&mut rng);
        let settings = TrendSettings {
            window_epochs: [1, 2, 5, 15][rng.below(4) as usize],
            ..TrendSettings::new(2000)
        };
        let workers = 1 + (seed % 2) as usize;
        let last = end(&trace, settings);
        let first = rng.below(last + 1);
        let whole = run_stage(&trace, settings, workers);
        let resent = resend_from(first, settings.window_epochs);
        let after: Vec<TrendFrame> = whole
            .into_iter()
            .filter(|f| epoch_of(f) >= resent)
            .collect();
        let restarted = run_from(&trace, settings, workers, first, last);
        assert_eq!(
            json(restarted),
            json(after),
            "seed {seed}, {workers} worker(s), restarted at {first}, {settings:?}"
        );
    }
}

/// Counters from differential's own log of the arrangements' work, summed per measured epoch.
#[derive(Debug, Default, Clone, Copy)]
struct Work {
    /// Updates formed into new batches (what the arrangements took in).
    updates: usize,
    /// Updates written by completed merges (the amortised cost of keeping the traces compact).
    merged: usize,
}

/// One run over a fixed trace with a window of `w` epochs: the stage's work per epoch over the
/// last `measured` epochs (every window full), and the wall time of those epochs.
fn measure(trace: &Trace, w: u64, measured: u64) -> (Work, std::time::Duration) {
    use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
    use std::cell::Cell;
    use std::rc::Rc;
    let trace = trace.clone();
    // As the dataflow runs it: with idle merging (held.rs), which merges more per epoch.
    let mut config = timely::Config::thread();
    held::configure(&mut config.worker);
    let guards = timely::execute(config, move |worker| {
        let (updates, merged) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let (u, m) = (Rc::clone(&updates), Rc::clone(&merged));
        worker
            .log_register()
            .expect("a worker has a log register")
            .insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, events| {
                for (_, event) in events.iter().flatten() {
                    match event {
                        DifferentialEvent::Batch(b) => u.set(u.get() + b.length),
                        DifferentialEvent::Merge(m2) => m.set(m.get() + m2.complete.unwrap_or(0)),
                        _ => {}
                    }
                }
            });
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let settings = TrendSettings {
            window_epochs: w,
            ..TrendSettings::new(2000)
        };
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .trends(settings)
                .probe_with(&probe);
        });
        let start = trace.epochs.len() as u64 - measured;
        let (mut work, mut wall) = (Work::default(), std::time::Duration::ZERO);
        for (epoch, counts) in trace.epochs.iter().enumerate() {
            let before = (updates.get(), merged.get(), std::time::Instant::now());
            for count in counts {
                input.send(count.clone());
            }
            input.advance_to(epoch as u64 + 1);
            while probe.less_than(input.time()) {
                worker.step();
            }
            if epoch as u64 >= start {
                work.updates += updates.get() - before.0;
                work.merged += merged.get() - before.1;
                wall += before.2.elapsed();
            }
        }
        let per_epoch = Work {
            updates: work.updates / measured as usize,
            merged: work.merged / measured as usize,
        };
        (per_epoch, wall / measured as u32)
    })
    .expect("the test dataflow starts");
    guards
        .join()
        .pop()
        .expect("one worker")
        .expect("the worker finished")
}

/// The measurement in docs/benchmarks.md: `cargo test -p emostream-dataflow --lib trends::tests::work_per_epoch
/// -- --nocapture`. The same trace (4 streams, 12 of 30 emojis per stream and epoch) through
/// windows of 15, 150 and 1500 epochs; the last 400 epochs are measured, every window full.
#[test]
fn work_per_epoch_does_not_grow_with_the_window() {
    const VOCABULARY: usize = 30;
    let mut rng = Rng(7);
    let measured = 400;
    let epochs = (0..1500 + measured)
        .map(|epoch| {
            (0..4)
                .map(|s| {
                    let mut emojis = BTreeMap::new();
                    while emojis.len() < 12 {
                        let emoji = char::from_u32(0x1F600 + rng.below(VOCABULARY as u64) as u32)
                            .expect("the emoticons block");
                        emojis.insert(emoji.to_string(), 1 + rng.below(1000));
                    }
                    EpochCount {
                        stream: format!("s{s}"),
                        epoch,
                        total: emojis.values().sum(),
                        late: 0,
                        emojis: emojis.into_iter().collect(),
                    }
                })
                .collect()
        })
        .collect();
    let trace = Trace { epochs };
    let mut runs = Vec::new();
    for w in [15, 150, 1500] {
        let (work, wall) = measure(&trace, w, measured);
        println!(
            "window {w:>4} epochs: {:>4} updates/epoch into arrangements, {:>5} merged/epoch, \
             {:>7.1?}/epoch wall (a recomputation would read {} epoch counts/epoch)",
            work.updates,
            work.merged,
            wall,
            4 * w
        );
        runs.push(work);
    }
    let flat = |f: fn(&Work) -> usize| {
        let (lo, hi) = runs
            .iter()
            .map(f)
            .fold((usize::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
        hi as f64 / lo as f64
    };
    // Deterministic counts (one worker, a fixed trace): they differ only where an epoch's
    // arrival and another's departure meet on the same emoji and consolidate.
    assert!(
        flat(|w| w.updates) < 1.25,
        "updates per epoch grow with the window: {runs:?}"
    );
    assert!(
        flat(|w| w.merged) < 1.5,
        "merge work per epoch grows with the window: {runs:?}"
    );
}

/// `streams` streams tapped for `live` epochs (each stream in most of them, a few emojis each),
/// then nothing: what the platform benchmark does to the stage, small.
fn many_streams(rng: &mut Rng, streams: u64, live: u64) -> Trace {
    let epochs = (0..live)
        .map(|epoch| {
            let live: Vec<u64> = (0..streams).filter(|_| rng.below(10) < 8).collect();
            live.into_iter()
                .map(|s| {
                    let mut emojis: BTreeMap<String, u64> = BTreeMap::new();
                    for _ in 0..1 + rng.below(4) {
                        let emoji = POOL[rng.below(POOL.len() as u64) as usize];
                        *emojis.entry(emoji.to_string()).or_default() += 1 + rng.below(3);
                    }
                    EpochCount {
                        stream: format!("p-{s}"),
                        epoch,
                        total: emojis.values().sum(),
                        late: 0,
                        emojis: emojis.into_iter().collect(),
                    }
                })
                .collect()
        })
        .collect();
    Trace { epochs }
}

/// Runs the stage over the trace on `workers` threads, with differential's idle merging
/// ([`held::configure`]) or without, through the epoch by which every window has emptied; then,
/// with it, lets the workers run (no new epoch) until the arrangements hold nothing or 10 s have
/// passed. Returns every frame, the most updates the arrangements held after an epoch, and what
/// they still held at the end, before the dataflow shut down (a shut-down dataflow drops its
/// traces whatever they held).
fn run_idle(
    trace: &Trace,
    settings: TrendSettings,
    workers: usize,
    forget: bool,
) -> (Vec<TrendFrame>, i64, i64) {
    use crate::metrics::Metrics;
    use std::sync::Barrier;
    use std::time::{Duration, Instant};
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&frames);
    let trace = Arc::new(trace.clone());
    let metrics = Arc::new(Metrics::default());
    let counted = Arc::clone(&metrics);
    let held_at_end = Arc::new(Mutex::new(None));
    let result = Arc::clone(&held_at_end);
    let barrier = Arc::new(Barrier::new(workers));
    let peak = Arc::new(Mutex::new(0));
    let peak_held = Arc::clone(&peak);
    let mut config = timely::Config::process(workers);
    if forget {
        held::configure(&mut config.worker);
    }
    let last = end(&trace, settings);
    timely::execute(config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        held::count_held(worker, Arc::clone(&counted));
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let sink = Arc::clone(&sink);
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .trends(settings)
                .inspect(move |frame: &TrendFrame| sink.lock().unwrap().push(frame.clone()))
                .probe_with(&probe);
        });
        for epoch in 0..=last {
            for (i, count) in trace
                .epochs
                .get(epoch as usize)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if (i + epoch as usize) % peers == index {
                    input.send(count.clone());
                }
            }
            input.advance_to(epoch + 1);
            while probe.less_than(input.time()) {
                worker.step();
            }
            if index == 0 {
                let mut peak = peak_held.lock().unwrap();
                *peak = (*peak).max(counted.trend_updates_held());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while forget && counted.trend_updates_held() != 0 && Instant::now() < deadline {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        barrier.wait();
        if index == 0 {
            *result.lock().unwrap() = Some(counted.trend_updates_held());
        }
        barrier.wait();
    })
    .expect("the test dataflow starts");
    let held = held_at_end.lock().unwrap().expect("worker 0 read it");
    let peak = *peak.lock().unwrap();
    let frames = Arc::try_unwrap(frames)
        .expect("the workers are done")
        .into_inner()
        .unwrap();
    (frames, peak, held)
}

/// The frames as bytes, in one order (workers interleave them differently from run to run).
fn sorted_bytes(frames: &[TrendFrame]) -> Vec<String> {
    let mut bytes: Vec<String> = frames
        .iter()
        .map(|f| serde_json::to_string(f).expect("a trends frame serializes"))
        .collect();
    bytes.sort();
    bytes
}

/// 1,000 streams live for 20 epochs, then idle past their windows (of 15 epochs): with idle
/// merging the arrangements hold nothing once every window has emptied (every stream
/// forgotten), and the frames are byte for byte those of a run without it. (Without it, whether
/// the cancelled updates are gone at that epoch depends on how far differential's merges got,
/// which varies with the workers' timing: nothing to assert.)
#[test]
fn an_idle_stream_is_forgotten_and_its_frames_do_not_change() {
    let mut rng = Rng(2100);
    let trace = many_streams(&mut rng, 1000, 20);
    let settings = TrendSettings::new(2000);
    let (kept, _, _) = run_idle(&trace, settings, 2, false);
    let (forgotten, peak, held) = run_idle(&trace, settings, 2, true);
    assert!(peak > 10_000, "the streams' updates were counted: {peak}");
    assert_eq!(held, 0, "updates still held after every window emptied");
    assert_eq!(sorted_bytes(&forgotten), sorted_bytes(&kept));
    // Every stream's last frames say its window emptied: nothing of it is left to emit.
    let latest = by_kind(forgotten);
    let last = end(&trace, settings);
    for s in 0..1000 {
        let stream = format!("p-{s}");
        match state_at(&latest, "trending", &stream, last) {
            Some(TrendFrame::Trending(t)) => assert!(t.emojis.is_empty(), "{stream}: {t:?}"),
            other => panic!("{stream}: no trending frame: {other:?}"),
        }
    }
}
