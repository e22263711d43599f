//! The synthetic frames of one epoch: what the main publisher's `--synthetic-ms` emits and what
//! the bare fan-out floor writes, so a benchmark and the floor it is compared with send the very
//! same bytes.
//!
//! They are the production mix a viewer of a busy stream gets per epoch: the epoch frame with
//! [`EMOJIS`] emojis, then the stream's `trending` and `sentiment` frames and the `popular` frame
//! about all streams (whose viewers all get it), each the size and shape of a real one, with
//! fixed counts. Every one of them has `end_ms` = the end of the epoch's window.

use crate::epoch::scaled;
use crate::trends::{
    Popular, PopularStream, Sentiment, SentimentIndex, TrendFrame, Trending, TrendingEmoji,
    ALL_STREAMS,
};
use crate::wire::{EmojiCount, EpochFrame, FrameType};

/// Distinct emojis in a synthetic epoch: what a busy stream's viewers tap in 2 s.
pub const EMOJIS: usize = 30;

/// The vocabulary, most tapped first: skin tones, flags, keycaps and a ZWJ family included, as
/// their UTF-8 lengths weigh in a frame's size.
const VOCABULARY: [&str; EMOJIS] = [
    "🔥",
    "😂",
    "❤️",
    "👍🏽",
    "😭",
    "🙏",
    "😍",
    "👏",
    "🎉",
    "💯",
    "😮",
    "😡",
    "🤣",
    "👀",
    "🥳",
    "💪🏾",
    "😢",
    "🤯",
    "🙌",
    "⚽",
    "🏆",
    "😱",
    "🤔",
    "👎",
    "💔",
    "🇮🇳",
    "🇧🇷",
    "1️⃣",
    "👨‍👩‍👧",
    "🤡",
];

/// Taps of the most tapped emoji in an epoch; the n-th has `TOP / n` (a Zipf curve), so counts
/// run from five digits down to four, as on a stream with about a hundred thousand taps an epoch.
const TOP: u64 = 60_000;

/// The dataflow's defaults (`TrendSettings`): a window of 15 epochs, the top 5 emojis, the top 10
/// streams.
const WINDOW_EPOCHS: u64 = 15;
const TOP_K: usize = 5;
const POPULAR_STREAMS: usize = 10;

/// The dataflow's default per-1000 divisor.
const DIVISOR: u64 = 1000;

/// Every frame of epoch `epoch` (the `every_ms` window ending at `(epoch + 1) * every_ms`) for
/// `streams`, in the order production publishes them: the epoch frames (`emoji-epochs`), then
/// each stream's trending and sentiment frames and one popular frame (`emoji-trends`, written
/// after the epoch has been counted).
pub fn frames(streams: &[impl AsRef<str>], epoch: u64, every_ms: u64) -> Vec<String> {
    let mut out: Vec<String> = streams
        .iter()
        .map(|s| frame(s.as_ref(), epoch, every_ms))
        .collect();
    for stream in streams {
        for trend in [trending, sentiment] {
            out.push(to_json(&trend(stream.as_ref(), epoch, every_ms)));
        }
    }
    out.push(to_json(&popular(streams, epoch, every_ms)));
    out
}

/// The epoch frame of `stream`'s epoch `epoch`.
pub fn frame(stream: &str, epoch: u64, every_ms: u64) -> String {
    let emojis = counts()
        .map(|(emoji, count)| EmojiCount {
            emoji: emoji.into(),
            count,
            scaled: scaled(count, DIVISOR).expect("every synthetic count is positive"),
        })
        .collect();
    let frame = EpochFrame {
        kind: FrameType::Epoch,
        stream: stream.into(),
        epoch,
        start_ms: epoch * every_ms,
        end_ms: (epoch + 1) * every_ms,
        total: total(),
        late: 0,
        emojis,
        other: None,
    };
    serde_json::to_string(&frame).expect("an epoch frame always serializes")
}

/// Each emoji's taps in one epoch, most first (the order of an epoch frame's emojis).
fn counts() -> impl Iterator<Item = (&'static str, u64)> {
    VOCABULARY
        .iter()
        .zip(1..)
        .map(|(emoji, rank)| (*emoji, TOP / rank))
}

fn total() -> u64 {
    counts().map(|(_, count)| count).sum()
}

/// The window of `WINDOW_EPOCHS` epochs ending with `epoch`: (start_ms, end_ms).
fn window(epoch: u64, every_ms: u64) -> (u64, u64) {
    let end_ms = (epoch + 1) * every_ms;
    (end_ms.saturating_sub(WINDOW_EPOCHS * every_ms), end_ms)
}

fn trending(stream: &str, epoch: u64, every_ms: u64) -> TrendFrame {
    let (start_ms, end_ms) = window(epoch, every_ms);
    TrendFrame::Trending(Trending {
        stream: stream.into(),
        epoch,
        start_ms,
        end_ms,
        window_epochs: WINDOW_EPOCHS,
        emojis: counts()
            .take(TOP_K)
            .map(|(emoji, count)| TrendingEmoji {
                emoji: emoji.into(),
                count: count * WINDOW_EPOCHS,
            })
            .collect(),
    })
}

fn sentiment(stream: &str, epoch: u64, every_ms: u64) -> TrendFrame {
    let (start_ms, end_ms) = window(epoch, every_ms);
    let taps = total();
    // The flags, keycap and family are not in the Emoji Sentiment Ranking.
    let scored = taps - counts().skip(25).map(|(_, count)| count).sum::<u64>();
    TrendFrame::Sentiment(Sentiment {
        stream: stream.into(),
        epoch,
        start_ms,
        end_ms,
        window_epochs: WINDOW_EPOCHS,
        this_epoch: SentimentIndex {
            index: Some(0.412_337),
            scored,
            taps,
        },
        window: SentimentIndex {
            index: Some(0.398_514),
            scored: scored * WINDOW_EPOCHS,
            taps: taps * WINDOW_EPOCHS,
        },
    })
}

/// The streams ranked by taps: `streams` first, then made-up ones up to the ranking's length, so
/// the frame has its production size whatever number of streams the benchmark emits.
fn popular(streams: &[impl AsRef<str>], epoch: u64, every_ms: u64) -> TrendFrame {
    let (start_ms, end_ms) = window(epoch, every_ms);
    let names = streams
        .iter()
        .map(|s| s.as_ref().to_owned())
        .chain((streams.len()..POPULAR_STREAMS).map(|n| format!("stream-{n}")));
    TrendFrame::Popular(Popular {
        stream: ALL_STREAMS.into(),
        epoch,
        start_ms,
        end_ms,
        window_epochs: WINDOW_EPOCHS,
        streams: names
            .take(POPULAR_STREAMS)
            .zip(1..)
            .map(|(stream, rank)| {
                let taps = total() * WINDOW_EPOCHS / rank;
                PopularStream {
                    stream,
                    taps,
                    taps_per_epoch: taps as f64 / WINDOW_EPOCHS as f64,
                }
            })
            .collect(),
    })
}

fn to_json(frame: &TrendFrame) -> String {
    serde_json::to_string(frame).expect("a trend frame always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_real_epoch_frames_ending_at_their_window() {
        let text = frame("main", 7, 2000);
        let parsed: EpochFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (parsed.epoch, parsed.start_ms, parsed.end_ms),
            (7, 14000, 16000)
        );
        assert_eq!(parsed.emojis.len(), EMOJIS);
        assert_eq!(
            (parsed.emojis[0].count, parsed.emojis[0].scaled),
            (60_000, 60)
        );
        assert_eq!(
            (parsed.emojis[29].count, parsed.emojis[29].scaled),
            (2000, 2)
        );
        assert_eq!(
            parsed.total,
            parsed.emojis.iter().map(|e| e.count).sum::<u64>()
        );
        assert!(text.starts_with(r#"{"type":"epoch","stream":"main","epoch":7,"#));
        // The ordering rule of every epoch frame: by count, highest first.
        assert!(parsed.emojis.windows(2).all(|w| w[0].count > w[1].count));
    }

    #[test]
    fn an_epoch_is_the_production_mix_in_publication_order() {
        let texts = frames(&["main", "football"], 100, 2000);
        let kinds: Vec<(String, String, u64, u64)> = texts
            .iter()
            .map(|t| {
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                (
                    v["type"].as_str().unwrap().to_owned(),
                    v["stream"].as_str().unwrap().to_owned(),
                    v["epoch"].as_u64().unwrap(),
                    v["end_ms"].as_u64().unwrap(),
                )
            })
            .collect();
        let want = [
            ("epoch", "main"),
            ("epoch", "football"),
            ("trending", "main"),
            ("sentiment", "main"),
            ("trending", "football"),
            ("sentiment", "football"),
            ("popular", "*"),
        ];
        assert_eq!(
            kinds,
            want.map(|(k, s)| (k.to_owned(), s.to_owned(), 100, 202_000))
        );
        assert_eq!(texts[0], frame("main", 100, 2000));
        for text in &texts[2..] {
            let trend: TrendFrame = serde_json::from_str(text).unwrap();
            assert_eq!(trend.end_ms(), 202_000);
        }
        let TrendFrame::Popular(popular) = serde_json::from_str(&texts[6]).unwrap() else {
            panic!("the last frame is popular");
        };
        assert_eq!(popular.streams.len(), POPULAR_STREAMS);
        assert_eq!(
            (
                popular.streams[0].stream.as_str(),
                popular.streams[1].stream.as_str(),
                popular.streams[2].stream.as_str()
            ),
            ("main", "football", "stream-2")
        );
        assert_eq!(popular.start_ms, 172_000);
    }

    #[test]
    fn the_frames_have_a_busy_streams_sizes() {
        // docs/benchmarks.md gives these sizes; a change here changes what the benchmark measures.
        let sizes: Vec<usize> = frames(&["main"], 881_234_567, 2000)
            .iter()
            .map(String::len)
            .collect();
        assert_eq!(sizes, vec![1409, 297, 243, 812]);
    }
}
