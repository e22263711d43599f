//! The fast path: straight into borrowed, typed structs; `Some` only when all is good.

use super::validate::validate;
use super::{BodyFormat, Rules, Tap};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::borrow::Cow;

pub(super) fn fast_seed<'a>(body: &'a [u8], rules: &Rules) -> Option<Tap<'a>> {
    let s: FastSeed<'a> = serde_json::from_str(std::str::from_utf8(body).ok()?).ok()?;
    validate(
        s.user_id.0,
        s.emoji_type,
        s.timestamp,
        "",
        "emoji_type",
        rules,
    )
    .ok()
}

/// The fast path: `Some` only when every item is well-typed and valid.
pub(super) fn fast_batch<'a>(
    body: &'a [u8],
    format: BodyFormat,
    rules: &Rules,
) -> Option<Vec<Tap<'a>>> {
    // serde skips an unknown field's string without checking its UTF-8 (the slow path's
    // `Value` does check), so the body is checked whole first; the fuzz target found this.
    let text = std::str::from_utf8(body).ok()?;
    let items: Vec<FastItem<'a>> = match format {
        BodyFormat::Json => match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => serde_json::from_str(text).ok()?,
            _ => vec![serde_json::from_str(text).ok()?],
        },
        BodyFormat::NdJson => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).ok())
            .collect::<Option<_>>()?,
    };
    if items.is_empty() {
        return None;
    }
    items
        .into_iter()
        .map(|i| validate(i.user_id, i.emoji, i.timestamp, "", "emoji", rules).ok())
        .collect()
}

/// The seed route's body as the fast path reads it. An unknown field sends the body to the
/// slow path, because serde skips an unknown string without checking its escapes (a lone
/// surrogate) where the slow path refuses it (found by fuzzing); a duplicate field does too,
/// so the slow path (last one wins) decides.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastSeed<'a> {
    #[serde(borrow)]
    user_id: SeedUserId<'a>,
    #[serde(borrow)]
    emoji_type: Cow<'a, str>,
    #[serde(default, borrow)]
    timestamp: Option<RawTs<'a>>,
}

/// One batch item as the fast path reads it (unknown fields: as [`FastSeed`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastItem<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    emoji: Cow<'a, str>,
    #[serde(default, borrow)]
    timestamp: Option<RawTs<'a>>,
}

/// A timestamp before validation: the JSON types it may have.
pub(super) enum RawTs<'a> {
    Int(u64),
    /// A float, or an integer outside `u64` (negative ones included).
    Float(f64),
    Text(Cow<'a, str>),
}

/// The seeds' user id: a string, or an integer (their generator sends `"user_id": 42`), which
/// becomes its decimal text so `42` and `"42"` are one user.
struct SeedUserId<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for SeedUserId<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeedUserId<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(SeedUserId(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(SeedUserId(Cow::Owned(v.to_string())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(SeedUserId(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SeedUserId(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("Unix seconds or milliseconds, or an ISO-8601 string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Int(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Float(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}
