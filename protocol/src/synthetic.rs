//! The synthetic epoch frame: what the main publisher's `--synthetic-ms` emits and what the
//! bare fan-out floor writes, so a benchmark and the floor it is compared with send the very
//! same bytes.

use crate::wire::{EmojiCount, EpochFrame, FrameType};

/// The frame of `stream`'s epoch `epoch` (the `every_ms` window ending at `(epoch + 1) *
/// every_ms`): the size and shape of a real one, with fixed counts.
pub fn frame(stream: &str, epoch: u64, every_ms: u64) -> String {
    let emojis = [("🔥", 3785, 3), ("👍🏽", 338, 1), ("❤️", 12, 1)]
        .into_iter()
        .map(|(emoji, count, scaled)| EmojiCount {
            emoji: emoji.into(),
            count,
            scaled,
        })
        .collect();
    let frame = EpochFrame {
        kind: FrameType::Epoch,
        stream: stream.into(),
        epoch,
        start_ms: epoch * every_ms,
        end_ms: (epoch + 1) * every_ms,
        total: 4135,
        late: 0,
        emojis,
    };
    serde_json::to_string(&frame).expect("an epoch frame always serializes")
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
        assert!(text.starts_with(r#"{"type":"epoch","stream":"main","epoch":7,"#));
    }
}
