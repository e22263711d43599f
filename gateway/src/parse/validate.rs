//! The field rules both paths share, so they cannot disagree on what is valid.

use super::emoji::canonical_emoji;
use super::fast::RawTs;
use super::{Rules, Tap};
use crate::GatewayError;
use emostream_protocol::wire::ClientTs;
use std::borrow::Cow;

/// The longest timestamp text taken: an RFC 3339 date-time with nanoseconds and an offset is 35
/// bytes, and a bracketed zone name after it fits too.
pub const MAX_TIMESTAMP_BYTES: usize = 64;

/// A number below this is Unix seconds (as seconds it is the year 5138; as milliseconds it
/// would be March 1973, which no client sends), at or above it Unix milliseconds.
const SECONDS_BELOW: u64 = 100_000_000_000;

/// 9999-12-31T23:59:59.999Z, the last instant ISO-8601 text can name without an extension.
const MAX_MS: u64 = 253_402_300_799_999;

pub(super) const TIMESTAMP_RULE: &str = "timestamp must be an ISO-8601 date-time (at most 64 \
    bytes, zone optional), Unix seconds or Unix milliseconds, at most year 9999";

/// 1 to 128 visible characters: no controls, no whitespace, no default-ignorable code points
/// (zero-width spaces and joiners, bidi controls, soft hyphen, variation selectors, tags,
/// Hangul fillers, BOM), which render as nothing and would let two ids look the same.
pub(super) fn check_user_id(user_id: &str, prefix: &str) -> Result<(), GatewayError> {
    let invisible = |c: char| c.is_control() || c.is_whitespace() || is_default_ignorable(c);
    if user_id.is_empty() || user_id.chars().count() > 128 || user_id.chars().any(invisible) {
        return Err(GatewayError::invalid(
            format!("{prefix}user_id"),
            "user_id must be 1 to 128 visible characters",
        ));
    }
    Ok(())
}

/// Unicode's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt, Unicode 16.0), whole:
/// no maintained crate short of ICU's data exposes this one property.
fn is_default_ignorable(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{34F}' | '\u{61C}' | '\u{115F}'..='\u{1160}' | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

pub(super) fn bad_timestamp(prefix: &str) -> GatewayError {
    GatewayError::invalid(format!("{prefix}timestamp"), TIMESTAMP_RULE)
}

/// The field rules both paths share, checked in the order the slow path reports them. The emoji
/// comes out in its canonical form, a number timestamp in Unix milliseconds; a text timestamp
/// is kept as sent (a date-time without a zone names no instant the gateway could convert to).
pub(super) fn validate<'a>(
    user_id: Cow<'a, str>,
    emoji: Cow<'a, str>,
    ts: Option<RawTs<'_>>,
    prefix: &str,
    emoji_field: &str,
    rules: &Rules,
) -> Result<Tap<'a>, GatewayError> {
    check_user_id(&user_id, prefix)?;
    let Some(emoji) = canonical_emoji(&emoji) else {
        return Err(GatewayError::invalid(
            format!("{prefix}{emoji_field}"),
            format!("{emoji_field} must be exactly one emoji of Unicode's RGI list"),
        ));
    };
    if rules.allow.as_ref().is_some_and(|a| !a.contains(emoji)) {
        return Err(GatewayError::invalid(
            format!("{prefix}{emoji_field}"),
            format!("{emoji_field} is not one of the emojis this gateway accepts"),
        ));
    }
    let ts = match ts {
        None => None,
        Some(raw) => Some(client_ts(raw).ok_or_else(|| bad_timestamp(prefix))?),
    };
    Ok(Tap { user_id, emoji, ts })
}

fn client_ts(raw: RawTs<'_>) -> Option<ClientTs> {
    match raw {
        RawTs::Int(n) => millis(n as f64).map(ClientTs::Millis),
        RawTs::Float(f) => millis(f).map(ClientTs::Millis),
        RawTs::Text(s) if is_date_time(&s) => Some(ClientTs::Iso(s.into_owned())),
        RawTs::Text(_) => None,
    }
}

/// Unix seconds (a float from Python's `time.time()` included) or milliseconds, as milliseconds.
fn millis(n: f64) -> Option<u64> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = if n < SECONDS_BELOW as f64 {
        n * 1000.0
    } else {
        n
    }
    .round();
    // Below 2^53 every integer is exact in an f64, and MAX_MS is far below it.
    (ms <= MAX_MS as f64).then_some(ms as u64)
}

/// An ISO-8601 / RFC 3339 date-time, `T` or space between date and time, with a zone (`Z` or an
/// offset) or without one (Python's `datetime.isoformat()` of a naive datetime). A date alone
/// is refused: it names a day, not a tap.
fn is_date_time(s: &str) -> bool {
    s.len() <= MAX_TIMESTAMP_BYTES
        && matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' '))
        && (s.parse::<jiff::Timestamp>().is_ok() || s.parse::<jiff::civil::DateTime>().is_ok())
}
