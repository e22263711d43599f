//! The per-1000 reduction and the frame's bound as one operator, so the rules live in one named
//! place: every emoji's `scaled = max(1, count / divisor)`, and at most `max_frame_emojis`
//! emojis listed, the rest summed.

use crate::metrics::Metrics;
use crate::EpochCount;
use emostream_protocol::config::EpochConfig;
use emostream_protocol::epoch::{epoch_bounds, scaled};
use emostream_protocol::wire::{EmojiCount, EpochFrame, FrameType, OtherEmojis};
use std::cmp::Ordering;
use std::sync::Arc;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::Stream;

pub trait PerThousand<'scope> {
    /// Turns each closed [`EpochCount`] into the viewers' [`EpochFrame`] by [`reduce`], counting
    /// the frames that had to sum emojis in `other`.
    fn per_thousand(
        self,
        epochs: EpochConfig,
        metrics: Arc<Metrics>,
    ) -> Stream<'scope, u64, Vec<EpochFrame>>;
}

impl<'scope> PerThousand<'scope> for Stream<'scope, u64, Vec<EpochCount>> {
    fn per_thousand(
        self,
        epochs: EpochConfig,
        metrics: Arc<Metrics>,
    ) -> Stream<'scope, u64, Vec<EpochFrame>> {
        self.map(move |c| {
            let frame = reduce(c, epochs);
            if frame.other.is_some() {
                metrics.bounded();
            }
            frame
        })
    }
}

/// One closed epoch into its frame: the `max_frame_emojis` emojis with the highest counts,
/// ordered by count, highest first, then by emoji (UTF-8 bytes, lowest first), and the rest
/// summed in `other`. The order is total (an epoch counts each emoji once), so the same counts
/// always give the same bytes, as a re-published epoch must.
pub fn reduce(c: EpochCount, epochs: EpochConfig) -> EpochFrame {
    let EpochConfig {
        window_ms,
        divisor,
        max_frame_emojis,
        allowed_lateness_ms: _, // the source's: when an epoch closes, not what its frame says
    } = epochs;
    let mut counts = c.emojis;
    counts.retain(|(_, count)| *count > 0);
    let listed = max_frame_emojis.min(counts.len());
    if listed > 0 && listed < counts.len() {
        // Only the listed ones need sorting: partition around the last of them first.
        counts.select_nth_unstable_by(listed - 1, rank);
    }
    let rest = counts.split_off(listed);
    counts.sort_unstable_by(rank);
    let reduced = |(emoji, count): (String, u64)| EmojiCount {
        scaled: scaled(count, divisor).expect("zero counts were dropped above"),
        emoji,
        count,
    };
    let other = (!rest.is_empty()).then(|| {
        rest.into_iter().map(reduced).fold(
            OtherEmojis {
                distinct: 0,
                count: 0,
                scaled: 0,
            },
            |sum, e| OtherEmojis {
                distinct: sum.distinct + 1,
                count: sum.count + e.count,
                scaled: sum.scaled + e.scaled,
            },
        )
    });
    let (start_ms, end_ms) = epoch_bounds(c.epoch, window_ms);
    EpochFrame {
        kind: FrameType::Epoch,
        stream: c.stream,
        epoch: c.epoch,
        start_ms,
        end_ms,
        total: c.total,
        late: c.late,
        emojis: counts.into_iter().map(reduced).collect(),
        other,
    }
}

/// The frame's order: by count, highest first, then by emoji, lowest first.
fn rank(a: &(String, u64), b: &(String, u64)) -> Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

/// What a published frame keeps of the count it was reduced from: the listed emojis' raw counts,
/// the total and the late taps (the emojis summed in `other` count in the total only). The
/// trends stage reads its epochs through this both live and when a restart refills its windows
/// from `emoji-epochs`, so its frames are a function of the published frames and come out the
/// same either way.
pub fn counted(frame: EpochFrame) -> EpochCount {
    EpochCount {
        stream: frame.stream,
        epoch: frame.epoch,
        total: frame.total,
        late: frame.late,
        emojis: frame
            .emojis
            .into_iter()
            .map(|e| (e.emoji, e.count))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::capture::Event;
    use timely::dataflow::operators::{Capture, ToStream};

    fn count(emojis: &[(&str, u64)]) -> EpochCount {
        EpochCount {
            stream: "main".into(),
            epoch: 5,
            total: emojis.iter().map(|e| e.1).sum(),
            late: 0,
            emojis: emojis.iter().map(|(e, n)| (e.to_string(), *n)).collect(),
        }
    }

    fn epochs(max_frame_emojis: usize) -> EpochConfig {
        EpochConfig {
            window_ms: 2000,
            divisor: 1000,
            max_frame_emojis,
            ..EpochConfig::default()
        }
    }

    fn json(frame: &EpochFrame) -> String {
        serde_json::to_string(frame).unwrap()
    }

    #[test]
    fn frame_scales_and_orders() {
        let frame = reduce(
            count(&[("👍🏽", 999), ("🔥", 3785), ("❤️", 2000), ("😂", 999)]),
            epochs(64),
        );
        // Under the bound nothing is summed, and the frame has its old shape, byte for byte.
        assert_eq!(
            json(&frame),
            r#"{"type":"epoch","stream":"main","epoch":5,"start_ms":10000,"end_ms":12000,"total":7783,"late":0,"emojis":[{"emoji":"🔥","count":3785,"scaled":3},{"emoji":"❤️","count":2000,"scaled":2},{"emoji":"👍🏽","count":999,"scaled":1},{"emoji":"😂","count":999,"scaled":1}]}"#
        );
    }

    #[test]
    fn a_frame_lists_the_most_tapped_and_sums_the_rest() {
        let frame = reduce(
            count(&[
                ("😮", 5),
                ("👍🏽", 999),
                ("🔥", 3785),
                ("🎉", 2500),
                ("😂", 999),
                ("❤️", 2000),
            ]),
            epochs(3),
        );
        assert_eq!(
            json(&frame),
            r#"{"type":"epoch","stream":"main","epoch":5,"start_ms":10000,"end_ms":12000,"total":10288,"late":0,"emojis":[{"emoji":"🔥","count":3785,"scaled":3},{"emoji":"🎉","count":2500,"scaled":2},{"emoji":"❤️","count":2000,"scaled":2}],"other":{"distinct":3,"count":2003,"scaled":3}}"#
        );
    }

    /// Equal counts at the cut rank by the emoji's UTF-8 bytes: ❤️ (E2 …) before 👍🏽 (F0 9F 91 …)
    /// before 🔥 (F0 9F 94 …) before 😂 (F0 9F 98 …), whatever order they were counted in.
    #[test]
    fn ties_at_the_cut_go_by_emoji() {
        let frame = reduce(
            count(&[("😂", 1), ("🔥", 1), ("❤️", 1), ("👍🏽", 1), ("🎉", 7)]),
            epochs(3),
        );
        assert_eq!(
            json(&frame),
            r#"{"type":"epoch","stream":"main","epoch":5,"start_ms":10000,"end_ms":12000,"total":11,"late":0,"emojis":[{"emoji":"🎉","count":7,"scaled":1},{"emoji":"❤️","count":1,"scaled":1},{"emoji":"👍🏽","count":1,"scaled":1}],"other":{"distinct":2,"count":2,"scaled":2}}"#
        );
    }

    /// Many emojis with many ties, counted in different orders (the count's order comes from a
    /// hash map): always the same bytes, exactly `max_frame_emojis` listed, `total` exact.
    #[test]
    fn the_same_counts_give_the_same_bytes_in_any_order() {
        let emojis: Vec<(String, u64)> = (0..300u64)
            .map(|i| {
                let emoji = char::from_u32(0x1F600 + i as u32).unwrap().to_string();
                (emoji, 1 + (i * 7919) % 13 * 1000)
            })
            .collect();
        let total: u64 = emojis.iter().map(|e| e.1).sum();
        let counted_in = |order: Vec<(String, u64)>| EpochCount {
            stream: "main".into(),
            epoch: 5,
            total,
            late: 0,
            emojis: order,
        };
        let mut reversed = emojis.clone();
        reversed.reverse();
        let mut rotated = emojis.clone();
        rotated.rotate_left(117);
        let first = reduce(counted_in(emojis.clone()), epochs(64));
        for order in [reversed, rotated] {
            assert_eq!(json(&reduce(counted_in(order), epochs(64))), json(&first));
        }
        assert_eq!(first.emojis.len(), 64);
        let other = first.other.as_ref().expect("300 emojis are over the bound");
        assert_eq!(other.distinct, 300 - 64);
        assert_eq!(
            first.emojis.iter().map(|e| e.count).sum::<u64>() + other.count,
            total
        );
        // Listed: the first 64 in the frame's order, ties at the cut included.
        let mut want = emojis;
        want.sort_by(rank);
        let listed: Vec<(String, u64)> = first
            .emojis
            .iter()
            .map(|e| (e.emoji.clone(), e.count))
            .collect();
        assert_eq!(listed, want[..64]);
        assert_eq!(
            other.scaled,
            want[64..].iter().map(|e| (e.1 / 1000).max(1)).sum::<u64>()
        );
        assert!(json(&first).len() <= EpochFrame::max_bytes(64));
    }

    #[test]
    fn counted_keeps_what_the_frame_lists() {
        let frame = reduce(count(&[("🔥", 3785), ("😮", 2), ("❤️", 9)]), epochs(2));
        assert_eq!(
            counted(frame),
            EpochCount {
                stream: "main".into(),
                epoch: 5,
                total: 3796,
                late: 0,
                emojis: vec![("🔥".into(), 3785), ("❤️".into(), 9)],
            }
        );
    }

    #[test]
    fn operator_applies_the_reduction() {
        let metrics = Arc::new(Metrics::default());
        let counted = Arc::clone(&metrics);
        let captured = timely::example(move |scope| {
            vec![count(&[("🔥", 1001)]), count(&[("🔥", 1999), ("😮", 1)])]
                .to_stream(scope)
                .container::<Vec<_>>()
                .per_thousand(epochs(1), counted)
                .capture()
        });
        let frames: Vec<String> = captured
            .into_iter()
            .flat_map(|event| match event {
                Event::Messages(_, frames) => frames,
                Event::Progress(_) => Vec::new(),
            })
            .map(|f| json(&f))
            .collect();
        assert_eq!(
            frames,
            vec![
                r#"{"type":"epoch","stream":"main","epoch":5,"start_ms":10000,"end_ms":12000,"total":1001,"late":0,"emojis":[{"emoji":"🔥","count":1001,"scaled":1}]}"#,
                r#"{"type":"epoch","stream":"main","epoch":5,"start_ms":10000,"end_ms":12000,"total":2000,"late":0,"emojis":[{"emoji":"🔥","count":1999,"scaled":1}],"other":{"distinct":1,"count":1,"scaled":1}}"#,
            ]
        );
        assert!(metrics
            .render()
            .lines()
            .any(|l| l == "emostream_dataflow_frames_bounded_total 1"));
    }
}
