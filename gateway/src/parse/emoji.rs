//! One emoji: an entry of Unicode's RGI list, in its one canonical (fully-qualified) form.

/// The longest RGI emoji is 35 bytes (a kiss or couple with two skin tones); anything longer is
/// refused before it is looked up, so a flood of combining marks or tag characters costs nothing.
pub const MAX_EMOJI_BYTES: usize = 64;

/// The emoji presentation selector: all that a minimally-qualified or unqualified form of an
/// emoji lacks.
const VS16: char = '\u{FE0F}';

/// The fully-qualified form of `s` when `s` is one RGI emoji (ZWJ sequences, skin tones, flags
/// and keycaps included), or a minimally-qualified or unqualified form of one: so `❤` and `❤️`
/// are the same emoji on every viewer's screen. `None` for anything else.
///
/// The `emojis` crate's map (0.9.1) also takes a few strings that differ from the emoji they map
/// to by more than U+FE0F: `#`, `*` or a digit with U+FE0F but without the keycap mark U+20E3
/// (not an emoji; it shows as the plain character) maps to the keycap, and a kiss or couple of
/// two people with one skin tone and an unqualified heart maps to the fully-qualified one with
/// the second person's tone changed. Storing those would count another emoji than the one
/// sent, so a form is taken only when it is its canonical form less some U+FE0F.
pub fn canonical_emoji(s: &str) -> Option<&'static str> {
    if s.len() > MAX_EMOJI_BYTES {
        return None;
    }
    let canonical = emojis::get(s)?.as_str();
    let unqualified = |e: &'static str| e.chars().filter(|&c| c != VS16);
    (canonical == s || s.chars().filter(|&c| c != VS16).eq(unqualified(canonical)))
        .then_some(canonical)
}
