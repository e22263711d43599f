//! The trends frames: what the dataflow's trends stage publishes on `[kafka] trends_topic` (key: the
//! frame's `stream`), one JSON object per record, for viewers' trending list, sentiment line and
//! stream directory.
//!
//! Every frame describes one stream (or [`ALL_STREAMS`]) as of one closed epoch, over the sliding
//! window of the `window_epochs` epochs ending with it: `[start_ms, end_ms)` spans the window, not
//! the epoch. A frame is sent only when its content changed at that epoch, so the newest frame of a
//! kind per stream is the current state. Frames are a function of the epochs published on
//! `emoji-epochs` (a restarted dataflow refills its windows from there), so a frame sent again
//! after a restart has the same content; delivery is best effort, and the newest one wins.

use serde::{Deserialize, Serialize};

/// The `stream` (and record key) of frames about all streams at once. Not a valid stream id
/// (`[a-z0-9_-]{1,64}`), so it never collides with one.
pub const ALL_STREAMS: &str = "*";

/// Any trends frame, told apart by its `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TrendFrame {
    Trending(Trending),
    Sentiment(Sentiment),
    Popular(Popular),
}

impl TrendFrame {
    /// The stream the frame is about: the record key.
    pub fn stream(&self) -> &str {
        match self {
            TrendFrame::Trending(f) => &f.stream,
            TrendFrame::Sentiment(f) => &f.stream,
            TrendFrame::Popular(f) => &f.stream,
        }
    }

    /// The end of the frame's window: the record timestamp.
    pub fn end_ms(&self) -> u64 {
        match self {
            TrendFrame::Trending(f) => f.end_ms,
            TrendFrame::Sentiment(f) => f.end_ms,
            TrendFrame::Popular(f) => f.end_ms,
        }
    }
}

/// `{"type":"trending",…}`: a stream's top emojis over the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trending {
    pub stream: String,
    /// The newest epoch in the window.
    pub epoch: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub window_epochs: u64,
    /// At most k, by taps in the window (highest first), ties by emoji (its UTF-8 bytes, lowest
    /// first). Empty once the window holds no taps.
    pub emojis: Vec<TrendingEmoji>,
}

/// One emoji's raw taps over the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrendingEmoji {
    pub emoji: String,
    pub count: u64,
}

/// `{"type":"sentiment",…}`: a stream's sentiment index in the newest epoch and over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    pub stream: String,
    pub epoch: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub window_epochs: u64,
    /// The newest epoch alone.
    pub this_epoch: SentimentIndex,
    /// The whole window.
    pub window: SentimentIndex,
}

/// The tap-weighted mean sentiment score of the scored taps, on the Emoji Sentiment Ranking's
/// scale from -1 (negative) to +1 (positive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentimentIndex {
    /// Rounded to 6 decimals; `null` when no tap was of a ranked emoji.
    pub index: Option<f64>,
    /// Taps of emojis the ranking scores.
    pub scored: u64,
    /// All taps.
    pub taps: u64,
}

/// `{"type":"popular","stream":"*",…}`: the most engaged streams over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Popular {
    /// Always [`ALL_STREAMS`].
    pub stream: String,
    pub epoch: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub window_epochs: u64,
    /// By taps in the window (highest first), ties by stream id (lowest first).
    pub streams: Vec<PopularStream>,
}

/// One stream's engagement over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopularStream {
    pub stream: String,
    pub taps: u64,
    /// `taps / window_epochs`: emojis per epoch, averaged over the window.
    pub taps_per_epoch: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_shape() {
        let trending = TrendFrame::Trending(Trending {
            stream: "main".into(),
            epoch: 100,
            start_ms: 172_000,
            end_ms: 202_000,
            window_epochs: 15,
            emojis: vec![TrendingEmoji {
                emoji: "🔥".into(),
                count: 3785,
            }],
        });
        assert_eq!(
            serde_json::to_string(&trending).unwrap(),
            r#"{"type":"trending","stream":"main","epoch":100,"start_ms":172000,"end_ms":202000,"window_epochs":15,"emojis":[{"emoji":"🔥","count":3785}]}"#
        );
        let sentiment = TrendFrame::Sentiment(Sentiment {
            stream: "main".into(),
            epoch: 100,
            start_ms: 172_000,
            end_ms: 202_000,
            window_epochs: 15,
            this_epoch: SentimentIndex {
                index: None,
                scored: 0,
                taps: 2,
            },
            window: SentimentIndex {
                index: Some(0.220923),
                scored: 10,
                taps: 12,
            },
        });
        assert_eq!(
            serde_json::to_string(&sentiment).unwrap(),
            r#"{"type":"sentiment","stream":"main","epoch":100,"start_ms":172000,"end_ms":202000,"window_epochs":15,"this_epoch":{"index":null,"scored":0,"taps":2},"window":{"index":0.220923,"scored":10,"taps":12}}"#
        );
        let popular = TrendFrame::Popular(Popular {
            stream: ALL_STREAMS.into(),
            epoch: 100,
            start_ms: 172_000,
            end_ms: 202_000,
            window_epochs: 15,
            streams: vec![PopularStream {
                stream: "main".into(),
                taps: 30,
                taps_per_epoch: 2.0,
            }],
        });
        let text = serde_json::to_string(&popular).unwrap();
        assert_eq!(
            text,
            r#"{"type":"popular","stream":"*","epoch":100,"start_ms":172000,"end_ms":202000,"window_epochs":15,"streams":[{"stream":"main","taps":30,"taps_per_epoch":2.0}]}"#
        );
        assert_eq!(serde_json::from_str::<TrendFrame>(&text).unwrap(), popular);
        let head: crate::wire::FrameHead = serde_json::from_str(&text).unwrap();
        assert_eq!((head.stream.as_str(), head.epoch), (ALL_STREAMS, 100));
    }
}
