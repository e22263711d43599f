//! The field rules both paths share, so they cannot disagree on what is valid.

use super::emoji::is_one_emoji;
use super::fast::RawTs;
use super::{Rules, Tap};
use crate::GatewayError;
use emostream_protocol::wire::ClientTs;
use std::borrow::Cow;

/// 1 to 128 visible characters: no controls, no whitespace, no invisible format characters
/// (zero-width spaces and joiners, bidi controls, soft hyphen, BOM) that would let two ids look
/// the same.
pub(super) fn check_user_id(user_id: &str, prefix: &str) -> Result<(), GatewayError> {
    let invisible = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c, '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
    };
    if user_id.is_empty() || user_id.chars().count() > 128 || user_id.chars().any(invisible) {
        return Err(GatewayError::invalid(
            format!("{prefix}user_id"),
            "user_id must be 1 to 128 visible characters",
        ));
    }
    Ok(())
}

pub(super) fn bad_timestamp(prefix: &str) -> GatewayError {
    GatewayError::invalid(
        format!("{prefix}timestamp"),
        "timestamp must be ISO-8601 or Unix milliseconds",
    )
}

/// The field rules both paths share, checked in the order the slow path reports them.
pub(super) fn validate<'a>(
    user_id: Cow<'a, str>,
    emoji: Cow<'a, str>,
    ts: Option<RawTs<'_>>,
    prefix: &str,
    emoji_field: &str,
    rules: &Rules,
) -> Result<Tap<'a>, GatewayError> {
    check_user_id(&user_id, prefix)?;
    if !is_one_emoji(&emoji) {
        return Err(GatewayError::invalid(
            format!("{prefix}{emoji_field}"),
            format!("{emoji_field} must be exactly one emoji"),
        ));
    }
    if rules.allow.as_ref().is_some_and(|a| !a.contains(&*emoji)) {
        return Err(GatewayError::invalid(
            format!("{prefix}{emoji_field}"),
            format!("{emoji_field} is not one of the emojis this gateway accepts"),
        ));
    }
    let ts = match ts {
        None => None,
        Some(RawTs::Millis(ms)) => Some(ClientTs::Millis(ms)),
        Some(RawTs::Text(s)) if looks_iso8601(&s) => Some(ClientTs::Iso(s.into_owned())),
        Some(RawTs::Text(_)) => return Err(bad_timestamp(prefix)),
    };
    Ok(Tap { user_id, emoji, ts })
}

/// `YYYY-MM-DDTHH:MM:SS…`: the shape every ISO-8601 date-time the clients send starts with.
fn looks_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
}
