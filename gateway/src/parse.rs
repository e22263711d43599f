//! Request bodies into validated taps.
//!
//! Two paths give one answer. The fast path deserializes straight into borrowed, typed structs
//! (no `serde_json::Value` tree, no copy of a string without escapes); it only ever says "all
//! good". Anything it cannot take (malformed JSON, a wrong type, a missing or invalid field)
//! goes to the slow path, which parses into `serde_json::Value` so every refusal can name the
//! exact field and the item's index in a batch. Both validate with the same functions, and the
//! fuzz target (`gateway/fuzz`) checks that they agree.

use crate::GatewayError;
use emostream_protocol::wire::ClientTs;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use unicode_segmentation::UnicodeSegmentation;

/// One tap that passed validation, borrowing from the request body where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap<'a> {
    pub user_id: Cow<'a, str>,
    pub emoji: Cow<'a, str>,
    pub ts: Option<ClientTs>,
}

/// What a valid emoji is, beyond "exactly one": the optional allow-list from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    allow: Option<HashSet<String>>,
}

impl Rules {
    /// Refuses an allow-list entry that is not itself one emoji: it could never match.
    pub fn new(allow_list: &[String]) -> Result<Self, String> {
        if let Some(bad) = allow_list.iter().find(|e| !is_one_emoji(e)) {
            return Err(format!(
                "gateway.emoji_allow_list: {bad:?} is not exactly one emoji"
            ));
        }
        Ok(Rules {
            allow: (!allow_list.is_empty()).then(|| allow_list.iter().cloned().collect()),
        })
    }
}

/// The body's declared format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    NdJson,
}

impl BodyFormat {
    /// From a `Content-Type` header; parameters such as `; charset=utf-8` are ignored.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, GatewayError> {
        let mime = value.unwrap_or("").split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/json") {
            Ok(BodyFormat::Json)
        } else if [
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
        ]
        .iter()
        .any(|m| mime.eq_ignore_ascii_case(m))
        {
            Ok(BodyFormat::NdJson)
        } else {
            Err(GatewayError::UnsupportedMediaType)
        }
    }
}

/// `POST /send_emoji`: the seeds' `{"user_id","emoji_type","timestamp"}`.
pub fn seed_body<'a>(body: &'a [u8], rules: &Rules) -> Result<Tap<'a>, GatewayError> {
    match fast_seed(body, rules) {
        Some(tap) => Ok(tap),
        None => slow_seed(body, rules),
    }
}

fn fast_seed<'a>(body: &'a [u8], rules: &Rules) -> Option<Tap<'a>> {
    let s: FastSeed<'a> = serde_json::from_str(std::str::from_utf8(body).ok()?).ok()?;
    validate(
        s.user_id,
        s.emoji_type,
        s.timestamp,
        "",
        "emoji_type",
        rules,
    )
    .ok()
}

fn slow_seed<'a>(body: &[u8], rules: &Rules) -> Result<Tap<'a>, GatewayError> {
    tap(&json(body, None)?, "emoji_type", "", rules)
}

/// The fuzz target's oracle: whatever the fast path accepts, the slow path accepts identically
/// (the slow path is the specification; the fast path only skips work). Panics otherwise.
#[doc(hidden)]
pub fn assert_paths_agree(body: &[u8], rules: &Rules) {
    if let Some(fast) = fast_seed(body, rules) {
        assert_eq!(Ok(fast), slow_seed(body, rules), "seed body {body:?}");
    }
    for format in [BodyFormat::Json, BodyFormat::NdJson] {
        if let Some(fast) = fast_batch(body, format, rules) {
            assert_eq!(
                Ok(fast),
                slow_batch(body, format, rules),
                "{format:?} body {body:?}"
            );
        }
        // Whatever the answer, it is one of ours (no panic) and a list refusal names an item.
        if let Err(GatewayError::Invalid { field, .. }) = batch_body(body, format, rules) {
            assert!(
                !is_list(body, format) || field.starts_with("items["),
                "{field} in a list"
            );
        }
    }
}

/// `POST /v1/streams/{stream}/emojis`: one object, an array, or NDJSON. One bad item refuses all.
pub fn batch_body<'a>(
    body: &'a [u8],
    format: BodyFormat,
    rules: &Rules,
) -> Result<Vec<Tap<'a>>, GatewayError> {
    match fast_batch(body, format, rules) {
        Some(taps) => Ok(taps),
        None => slow_batch(body, format, rules),
    }
}

/// The fast path: `Some` only when every item is well-typed and valid.
fn fast_batch<'a>(body: &'a [u8], format: BodyFormat, rules: &Rules) -> Option<Vec<Tap<'a>>> {
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

/// The slow path: every refusal names its field.
fn slow_batch<'a>(
    body: &'a [u8],
    format: BodyFormat,
    rules: &Rules,
) -> Result<Vec<Tap<'a>>, GatewayError> {
    let items: Vec<(Value, String)> = match format {
        BodyFormat::Json => match json(body, None)? {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (v, format!("items[{i}].")))
                .collect(),
            one => vec![(one, String::new())],
        },
        BodyFormat::NdJson => {
            let text =
                std::str::from_utf8(body).map_err(|_| malformed("body is not UTF-8", None))?;
            let mut items = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let prefix = format!("items[{}].", items.len());
                items.push((json(line.as_bytes(), Some(&prefix))?, prefix));
            }
            items
        }
    };
    if items.is_empty() {
        return Err(malformed("the body holds no emoji", None));
    }
    items
        .iter()
        .map(|(v, prefix)| tap(v, "emoji", prefix, rules))
        .collect()
}

/// Whether the body is a list (a JSON array or NDJSON), so a refusal names `items[i]`.
pub fn is_list(body: &[u8], format: BodyFormat) -> bool {
    format == BodyFormat::NdJson || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Refuses a stream id other than [`emostream_protocol::wire::is_stream_id`]'s.
pub fn stream_id(stream: &str) -> Result<(), GatewayError> {
    if emostream_protocol::wire::is_stream_id(stream) {
        Ok(())
    } else {
        Err(GatewayError::invalid(
            "stream",
            "stream must match [a-z0-9_-]{1,64}",
        ))
    }
}

/// The seed route's body as the fast path reads it. An unknown field sends the body to the
/// slow path, because serde skips an unknown string without checking its escapes (a lone
/// surrogate) where the slow path refuses it (found by fuzzing); a duplicate field does too,
/// so the slow path (last one wins) decides.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastSeed<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
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

/// A timestamp before validation: the two JSON types it may have.
enum RawTs<'a> {
    Millis(u64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("Unix milliseconds or an ISO-8601 string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v))
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

fn malformed(reason: &str, field: Option<&str>) -> GatewayError {
    GatewayError::Malformed {
        reason: reason.into(),
        field: field.map(|f| f.trim_end_matches('.').to_string()),
    }
}

fn json(body: &[u8], item: Option<&str>) -> Result<Value, GatewayError> {
    serde_json::from_slice(body).map_err(|e| malformed(&format!("malformed JSON: {e}"), item))
}

/// The slow path's item: every type error names its field, then [`validate`] as on the fast path.
fn tap<'a>(
    value: &Value,
    emoji_field: &str,
    prefix: &str,
    rules: &Rules,
) -> Result<Tap<'a>, GatewayError> {
    let object: &Map<String, Value> = value.as_object().ok_or_else(|| {
        GatewayError::invalid(
            prefix.trim_end_matches('.'),
            "each emoji must be a JSON object",
        )
    })?;
    let field = |name: &str| format!("{prefix}{name}");
    let text = |name: &str| -> Result<&str, GatewayError> {
        match object.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(GatewayError::invalid(
                field(name),
                format!("{name} must be a string"),
            )),
            None => Err(GatewayError::invalid(
                field(name),
                format!("{name} is required"),
            )),
        }
    };
    let user_id = text("user_id")?;
    check_user_id(user_id, prefix)?;
    let emoji = text(emoji_field)?;
    let ts = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ms) => Some(RawTs::Millis(ms)),
            None => return Err(bad_timestamp(prefix)),
        },
        Some(Value::String(s)) => Some(RawTs::Text(Cow::Borrowed(s.as_str()))),
        Some(_) => return Err(bad_timestamp(prefix)),
    };
    let tap = validate(
        Cow::Borrowed(user_id),
        Cow::Borrowed(emoji),
        ts,
        prefix,
        emoji_field,
        rules,
    )?;
    Ok(Tap {
        user_id: Cow::Owned(tap.user_id.into_owned()),
        emoji: Cow::Owned(tap.emoji.into_owned()),
        ts: tap.ts,
    })
}

/// 1 to 128 visible characters: no controls, no whitespace, no invisible format characters
/// (zero-width spaces and joiners, bidi controls, soft hyphen, BOM) that would let two ids look
/// the same.
fn check_user_id(user_id: &str, prefix: &str) -> Result<(), GatewayError> {
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

fn bad_timestamp(prefix: &str) -> GatewayError {
    GatewayError::invalid(
        format!("{prefix}timestamp"),
        "timestamp must be ISO-8601 or Unix milliseconds",
    )
}

/// The field rules both paths share, checked in the order the slow path reports them.
fn validate<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emojis_that_are_one_cluster() {
        for e in ["🔥", "👍🏽", "❤️", "❤", "👨‍👩‍👧", "🇮🇳", "1️⃣", "⭐", "🏳️‍🌈"]
        {
            assert!(is_one_emoji(e), "{e} should be accepted");
        }
    }

    #[test]
    fn not_one_emoji() {
        for e in ["", "a", "🔥🔥", "1", "#", "hi🔥", "👍 ", "\u{200D}"] {
            assert!(!is_one_emoji(e), "{e:?} should be refused");
        }
    }

    #[test]
    fn seed_body_as_the_seeds_send_it() {
        let t = seed_body(br#"{"user_id":"user_42","emoji_type":"\ud83d\udd25","timestamp":"2024-11-05T10:00:00.123Z"}"#, &Rules::default()).unwrap();
        assert_eq!(
            t,
            Tap {
                user_id: "user_42".into(),
                emoji: "🔥".into(),
                ts: Some(ClientTs::Iso("2024-11-05T10:00:00.123Z".into()))
            }
        );
    }

    #[test]
    fn batch_refusal_names_the_item() {
        let body = r#"[{"user_id":"a","emoji":"🔥"},{"user_id":"b","emoji":"xx"}]"#.as_bytes();
        assert_eq!(
            batch_body(body, BodyFormat::Json, &Rules::default()),
            Err(GatewayError::invalid(
                "items[1].emoji",
                "emoji must be exactly one emoji"
            ))
        );
        let nd = "{\"user_id\":\"a\",\"emoji\":\"🔥\"}\n{\"user_id\":\"\",\"emoji\":\"🔥\"}\n";
        assert_eq!(
            batch_body(nd.as_bytes(), BodyFormat::NdJson, &Rules::default()),
            Err(GatewayError::invalid(
                "items[1].user_id",
                "user_id must be 1 to 128 visible characters"
            ))
        );
    }

    #[test]
    fn batch_forms() {
        let one = batch_body(
            br#"{"user_id":"a","emoji":"\u2764\ufe0f","timestamp":1730800000000}"#,
            BodyFormat::Json,
            &Rules::default(),
        )
        .unwrap();
        assert_eq!(
            one,
            vec![Tap {
                user_id: "a".into(),
                emoji: "❤️".into(),
                ts: Some(ClientTs::Millis(1730800000000))
            }]
        );
        let nd = "{\"user_id\":\"a\",\"emoji\":\"🔥\"}\n\n{\"user_id\":\"b\",\"emoji\":\"👍🏽\"}";
        assert_eq!(
            batch_body(nd.as_bytes(), BodyFormat::NdJson, &Rules::default())
                .unwrap()
                .len(),
            2
        );
        assert!(matches!(
            batch_body(b"[]", BodyFormat::Json, &Rules::default()),
            Err(GatewayError::Malformed { .. })
        ));
        assert!(matches!(
            batch_body(b"{", BodyFormat::Json, &Rules::default()),
            Err(GatewayError::Malformed { .. })
        ));
    }

    #[test]
    fn allow_list_refuses_other_emojis() {
        let rules = Rules::new(&["🔥".to_string(), "👍🏽".to_string()]).unwrap();
        assert!(batch_body(
            r#"{"user_id":"a","emoji":"👍🏽"}"#.as_bytes(),
            BodyFormat::Json,
            &rules
        )
        .is_ok());
        assert_eq!(
            batch_body(
                r#"[{"user_id":"a","emoji":"🔥"},{"user_id":"a","emoji":"😮"}]"#.as_bytes(),
                BodyFormat::Json,
                &rules
            ),
            Err(GatewayError::invalid(
                "items[1].emoji",
                "emoji is not one of the emojis this gateway accepts"
            ))
        );
        assert_eq!(
            seed_body(r#"{"user_id":"a","emoji_type":"😮"}"#.as_bytes(), &rules),
            Err(GatewayError::invalid(
                "emoji_type",
                "emoji_type is not one of the emojis this gateway accepts"
            ))
        );
        assert!(Rules::new(&["ab".to_string()]).is_err());
    }

    #[test]
    fn fast_path_borrows_and_agrees_with_the_slow_path() {
        let body = r#"[{"user_id":"a","emoji":"🔥","timestamp":5},{"user_id":"b\u0041","emoji":"❤️","timestamp":"2024-11-05T10:00:00Z"}]"#;
        let rules = Rules::default();
        let fast = fast_batch(body.as_bytes(), BodyFormat::Json, &rules).unwrap();
        assert!(matches!(fast[0].user_id, Cow::Borrowed("a")));
        assert_eq!(fast[1].user_id, "bA");
        assert_eq!(
            Ok(fast),
            slow_batch(body.as_bytes(), BodyFormat::Json, &rules)
        );
        // Invalid UTF-8 in a field the fast path skips is still malformed (found by fuzzing).
        let bad = b"{\"user_id\":\"a\",\"emoji\":\"\xf0\x9f\x94\xa5\",\"x\":\"\xe5\xff\"}";
        assert!(matches!(
            batch_body(bad, BodyFormat::Json, &rules),
            Err(GatewayError::Malformed { .. })
        ));
        // So is a lone surrogate in an unknown field; known extra fields are fine.
        let lone = br#"{"user_id":"a","emoji":"\ud83d\udd25","x":"\udd25"}"#;
        assert!(matches!(
            batch_body(lone, BodyFormat::Json, &rules),
            Err(GatewayError::Malformed { .. })
        ));
        let extra = br#"{"user_id":"a","emoji":"\ud83d\udd25","x":[1]}"#;
        assert_eq!(
            batch_body(extra, BodyFormat::Json, &rules).unwrap()[0].emoji,
            "🔥"
        );
        // A duplicate field is the slow path's call (the last one wins), as before.
        let dup = r#"{"user_id":"a","user_id":"b","emoji":"🔥"}"#;
        assert!(fast_batch(dup.as_bytes(), BodyFormat::Json, &rules).is_none());
        assert_eq!(
            batch_body(dup.as_bytes(), BodyFormat::Json, &rules).unwrap()[0].user_id,
            "b"
        );
    }

    #[test]
    fn every_field_refusal_names_its_field() {
        let rules = Rules::default();
        let cases: [(&str, &str, &str); 9] = [
            (r#"{"emoji":"🔥"}"#, "user_id", "user_id is required"),
            (
                r#"{"user_id":7,"emoji":"🔥"}"#,
                "user_id",
                "user_id must be a string",
            ),
            (
                r#"{"user_id":"a b","emoji":"🔥"}"#,
                "user_id",
                "user_id must be 1 to 128 visible characters",
            ),
            (
                r#"{"user_id":"a\u200bb","emoji":"🔥"}"#,
                "user_id",
                "user_id must be 1 to 128 visible characters",
            ),
            (r#"{"user_id":"a"}"#, "emoji", "emoji is required"),
            (
                r#"{"user_id":"a","emoji":"🔥🔥"}"#,
                "emoji",
                "emoji must be exactly one emoji",
            ),
            (
                r#"{"user_id":"a","emoji":"🔥","timestamp":-1}"#,
                "timestamp",
                "timestamp must be ISO-8601 or Unix milliseconds",
            ),
            (
                r#"{"user_id":"a","emoji":"🔥","timestamp":"yesterday"}"#,
                "timestamp",
                "timestamp must be ISO-8601 or Unix milliseconds",
            ),
            (
                r#"{"user_id":"a","emoji":"🔥","timestamp":true}"#,
                "timestamp",
                "timestamp must be ISO-8601 or Unix milliseconds",
            ),
        ];
        for (body, field, error) in cases {
            assert_eq!(
                batch_body(body.as_bytes(), BodyFormat::Json, &rules),
                Err(GatewayError::invalid(field, error)),
                "{body}"
            );
        }
        let long = format!(r#"{{"user_id":"{}","emoji":"🔥"}}"#, "x".repeat(129));
        assert_eq!(
            batch_body(long.as_bytes(), BodyFormat::Json, &rules),
            Err(GatewayError::invalid(
                "user_id",
                "user_id must be 1 to 128 visible characters"
            ))
        );
        let ok = format!(r#"{{"user_id":"{}","emoji":"🔥"}}"#, "é".repeat(128));
        assert!(batch_body(ok.as_bytes(), BodyFormat::Json, &rules).is_ok());
        assert_eq!(
            batch_body(b"[1]", BodyFormat::Json, &rules),
            Err(GatewayError::invalid(
                "items[0]",
                "each emoji must be a JSON object"
            ))
        );
    }

    #[test]
    fn stream_ids() {
        assert!(stream_id("main").is_ok());
        assert!(stream_id("ipl-2026_final").is_ok());
        assert!(stream_id("").is_err());
        assert!(stream_id("Main").is_err());
        assert!(stream_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=utf-8")),
            Ok(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/x-ndjson")),
            Ok(BodyFormat::NdJson)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("text/plain")),
            Err(GatewayError::UnsupportedMediaType)
        );
        assert_eq!(
            BodyFormat::from_content_type(None),
            Err(GatewayError::UnsupportedMediaType)
        );
    }
}
