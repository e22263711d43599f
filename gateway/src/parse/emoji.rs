//! One emoji: one grapheme cluster that starts with an emoji scalar, or a keycap.

use unicode_segmentation::UnicodeSegmentation;

/// Exactly one extended grapheme cluster whose first scalar is an emoji (ZWJ sequences, skin
/// tones, VS16 and flags stay one cluster), or a keycap sequence such as `1️⃣`.
pub fn is_one_emoji(s: &str) -> bool {
    let mut clusters = s.graphemes(true);
    let (Some(cluster), None) = (clusters.next(), clusters.next()) else {
        return false;
    };
    let mut chars = cluster.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if matches!(first, '0'..='9' | '#' | '*') {
        return cluster.ends_with('\u{20E3}');
    }
    is_emoji_scalar(first)
}

fn is_emoji_scalar(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF   // pictographs, emoticons, transport, flags, supplemental symbols
        | 0x2600..=0x27BF   // miscellaneous symbols, dingbats (❤, ✨, ☀)
        | 0x2300..=0x23FF   // technical (⌚, ⏰)
        | 0x2B00..=0x2BFF   // arrows and stars (⭐, ⬆)
        | 0x2190..=0x21FF   // arrows
        | 0x25A0..=0x25FF   // geometric shapes
        | 0x2934..=0x2935
        | 0x3030 | 0x303D | 0x3297 | 0x3299
        | 0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x24C2)
}
