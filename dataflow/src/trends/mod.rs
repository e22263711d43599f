//! The trends stage: sliding windows over the closed epochs, kept incrementally with differential
//! dataflow — per stream the top-k emojis and the sentiment index, and the streams ranked by
//! engagement — published as their own frames ([`emostream_protocol::trends`]).
//!
//! # Layout
//! - [`window`]: `SlideWindow`, the closed epochs as a collection: `+1` at the epoch, `-1` when it
//!   leaves the window.
//! - [`topk`]: per stream, the k most tapped emojis over the window, and the tie rule.
//! - [`sentiment`]: per stream, the sentiment tallies of the newest epoch and of the window.
//! - [`lexicon`]: the Emoji Sentiment Ranking's scores.
//! - [`engagement`]: the streams ranked by taps over the window (and the per-viewer hook).
//! - [`snapshot`]: `Snapshot`, from a collection's changes back to each key's state per epoch.
//! - [`refill`]: at start, the windows' closed epochs read back from the epochs topic.
//! - [`held`]: forgetting idle streams (differential's idle merging) and counting what the
//!   stage's arrangements hold.
//! - [`publish`]: `PublishTrends`, publication on the trends topic behind the epochs' own.
//!
//! ```text
//! PerThousand ─┬─ SlideWindow(W) ─┬─ TopK ─────────── Snapshot ─▶ trending ──┐
//!              │                  ├─ PopularStreams ─ Snapshot ─▶ popular ───┼─▶ PublishTrends
//!              │                  └─ tally ─┐                                │
//!              └─ SlideWindow(1) ─── tally ─┴─ CountTotal ─ Snapshot ─▶ sentiment ─┘
//! ```
//! The stage reads each epoch as its frame lists it (`reduce::counted`): the emojis past the
//! frame's bound count in `taps` only, exactly as when a restart refills the windows from the
//! published frames.
//!
//! Per epoch, each stream that closed an epoch adds its counts and the epoch leaving its window
//! retracts them: the changes entering the stage are the same for any window length, and each
//! differential operator's work is proportional to its changes (the top-k and the ranking also
//! scan the emojis or streams live in the window, bounded by the vocabulary, not by its length).

mod engagement;
pub mod held;
pub mod lexicon;
pub mod publish;
pub mod refill;
mod sentiment;
mod snapshot;
mod topk;
mod window;

use crate::EpochCount;
use emostream_protocol::epoch::epoch_bounds;
use emostream_protocol::trends::{
    Popular, PopularStream, Sentiment, TrendFrame, Trending, TrendingEmoji, ALL_STREAMS,
};
use snapshot::Snapshot;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::Stream;
use window::SlideWindow;

/// The stage's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrendSettings {
    /// Epochs in the sliding window.
    pub window_epochs: u64,
    /// Emojis in a stream's trending list.
    pub top_k: usize,
    /// Streams in the popular ranking.
    pub popular_streams: usize,
    /// Width of one epoch, for the frames' `start_ms` and `end_ms`.
    pub window_ms: u64,
}

impl TrendSettings {
    /// 30 s of 2 s epochs: long enough to smooth a single burst, short enough to follow a match.
    pub const WINDOW_EPOCHS: u64 = 15;
    /// Five: what fits as a row over a phone's video.
    pub const TOP_K: usize = 5;
    /// Ten: a directory's first screen.
    pub const POPULAR_STREAMS: usize = 10;

    pub const fn new(window_ms: u64) -> Self {
        TrendSettings {
            window_epochs: Self::WINDOW_EPOCHS,
            top_k: Self::TOP_K,
            popular_streams: Self::POPULAR_STREAMS,
            window_ms,
        }
    }
}

pub trait Trends<'scope> {
    /// The trends frames of every epoch at which they changed, at that epoch's time.
    fn trends(self, settings: TrendSettings) -> Stream<'scope, u64, Vec<TrendFrame>>;
}

impl<'scope> Trends<'scope> for Stream<'scope, u64, Vec<EpochCount>> {
    fn trends(self, settings: TrendSettings) -> Stream<'scope, u64, Vec<TrendFrame>> {
        let scope = self.scope();
        let windowed = self.clone().slide(settings.window_epochs);
        let this_epoch = self.slide(1);
        let window = move |epoch: u64| Window::new(epoch, settings);

        let trending = topk::top_k(windowed.clone(), settings.top_k)
            .snapshot()
            .map(move |(stream, epoch, top)| {
                let w = window(epoch);
                TrendFrame::Trending(Trending {
                    stream,
                    epoch,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    window_epochs: w.epochs,
                    emojis: top
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(emoji, count)| TrendingEmoji { emoji, count })
                        .collect(),
                })
            });
        let sentiment = sentiment::tallies(this_epoch, windowed.clone())
            .snapshot()
            .map(move |(stream, epoch, tallies)| {
                let w = window(epoch);
                let (now, over_window) = tallies.unwrap_or_default();
                TrendFrame::Sentiment(Sentiment {
                    stream,
                    epoch,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    window_epochs: w.epochs,
                    this_epoch: sentiment::index(now),
                    window: sentiment::index(over_window),
                })
            });
        let popular = engagement::popular_streams(windowed, settings.popular_streams)
            .snapshot()
            .map(move |((), epoch, ranking)| {
                let w = window(epoch);
                TrendFrame::Popular(Popular {
                    stream: ALL_STREAMS.to_string(),
                    epoch,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    window_epochs: w.epochs,
                    streams: ranking
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(stream, taps)| PopularStream {
                            stream,
                            taps,
                            taps_per_epoch: taps as f64 / w.epochs as f64,
                        })
                        .collect(),
                })
            });
        scope.concatenate([trending, sentiment, popular])
    }
}

/// The window ending with an epoch: `[start_ms, end_ms)`, clipped at epoch 0.
struct Window {
    start_ms: u64,
    end_ms: u64,
    epochs: u64,
}

impl Window {
    fn new(epoch: u64, settings: TrendSettings) -> Self {
        let first = epoch.saturating_sub(settings.window_epochs - 1);
        Window {
            start_ms: epoch_bounds(first, settings.window_ms).0,
            end_ms: epoch_bounds(epoch, settings.window_ms).1,
            epochs: settings.window_epochs,
        }
    }
}

#[cfg(test)]
mod tests;
