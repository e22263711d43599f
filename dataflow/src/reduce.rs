//! The per-1000 reduction as its own operator, so the rule lives in one named place.

use crate::EpochCount;
use emostream_protocol::epoch::{epoch_bounds, scaled};
use emostream_protocol::wire::{EmojiCount, EpochFrame, FrameType};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::Stream;

pub trait PerThousand<'scope> {
    /// Turns each closed [`EpochCount`] into the viewers' [`EpochFrame`], with every emoji's
    /// `scaled = max(1, count / divisor)`.
    fn per_thousand(self, divisor: u64, window_ms: u64) -> Stream<'scope, u64, Vec<EpochFrame>>;
}

impl<'scope> PerThousand<'scope> for Stream<'scope, u64, Vec<EpochCount>> {
    fn per_thousand(self, divisor: u64, window_ms: u64) -> Stream<'scope, u64, Vec<EpochFrame>> {
        self.map(move |c| reduce(c, divisor, window_ms))
    }
}

/// One closed epoch into its frame. Emojis are ordered by count, highest first, then by emoji,
/// so the same counts always give the same bytes.
pub fn reduce(c: EpochCount, divisor: u64, window_ms: u64) -> EpochFrame {
    let mut emojis: Vec<EmojiCount> = c
        .emojis
        .into_iter()
        .filter_map(|(emoji, count)| {
            scaled(count, divisor).map(|scaled| EmojiCount {
                emoji,
                count,
                scaled,
            })
        })
        .collect();
    emojis.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.emoji.cmp(&b.emoji)));
    let (start_ms, end_ms) = epoch_bounds(c.epoch, window_ms);
    EpochFrame {
        kind: FrameType::Epoch,
        stream: c.stream,
        epoch: c.epoch,
        start_ms,
        end_ms,
        total: c.total,
        late: c.late,
        emojis,
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

    #[test]
    fn frame_scales_and_orders() {
        let frame = reduce(
            count(&[("👍🏽", 999), ("🔥", 3785), ("❤️", 2000), ("😂", 999)]),
            1000,
            2000,
        );
        let got: Vec<_> = frame
            .emojis
            .iter()
            .map(|e| (e.emoji.as_str(), e.count, e.scaled))
            .collect();
        assert_eq!(
            got,
            vec![
                ("🔥", 3785, 3),
                ("❤️", 2000, 2),
                ("👍🏽", 999, 1),
                ("😂", 999, 1)
            ]
        );
        assert_eq!(
            (frame.start_ms, frame.end_ms, frame.total),
            (10_000, 12_000, 7783)
        );
    }

    #[test]
    fn operator_applies_the_reduction() {
        let captured = timely::example(|scope| {
            vec![count(&[("🔥", 1001)]), count(&[("🔥", 1999), ("😮", 1)])]
                .to_stream(scope)
                .container::<Vec<_>>()
                .per_thousand(1000, 2000)
                .capture()
        });
        let scaled: Vec<Vec<(String, u64)>> = captured
            .into_iter()
            .flat_map(|event| match event {
                Event::Messages(_, frames) => frames,
                Event::Progress(_) => Vec::new(),
            })
            .map(|f| f.emojis.into_iter().map(|e| (e.emoji, e.scaled)).collect())
            .collect();
        assert_eq!(
            scaled,
            vec![
                vec![("🔥".to_string(), 1)],
                vec![("🔥".to_string(), 1), ("😮".to_string(), 1)]
            ]
        );
    }
}
