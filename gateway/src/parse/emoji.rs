//! One emoji: an entry of Unicode's RGI list, in its one canonical (fully-qualified) form.

/// The longest RGI emoji is 35 bytes (a kiss or couple with two skin tones); anything longer is
/// refused before it is looked up, so a flood of combining marks or tag characters costs nothing.
pub const MAX_EMOJI_BYTES: usize = 64;

/// The fully-qualified form of `s` when `s` is one RGI emoji (ZWJ sequences, skin tones, flags
/// and keycaps included), or a minimally-qualified or unqualified form of one: so `❤` and `❤️`
/// are the same emoji on every viewer's screen. `None` for anything else.
pub fn canonical_emoji(s: &str) -> Option<&'static str> {
    if s.len() > MAX_EMOJI_BYTES {
        return None;
    }
    emojis::get(s).map(|e| e.as_str())
}
