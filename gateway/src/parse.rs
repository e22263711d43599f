//! Request bodies into validated taps. Bodies are parsed into `serde_json::Value` first so every
//! refusal can name the exact field (and the item's index in a batch) instead of echoing serde.

use crate::GatewayError;
use emostream_protocol::wire::ClientTs;
use serde_json::{Map, Value};
use unicode_segmentation::UnicodeSegmentation;

/// One tap that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    pub user_id: String,
    pub emoji: String,
    pub ts: Option<ClientTs>,
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
        let mime = value
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json" => Ok(BodyFormat::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Ok(BodyFormat::NdJson)
            }
            _ => Err(GatewayError::UnsupportedMediaType),
        }
    }
}

/// `POST /send_emoji`: the seeds' `{"user_id","emoji_type","timestamp"}`.
pub fn seed_body(body: &[u8]) -> Result<Tap, GatewayError> {
    let value = json(body, None)?;
    tap(&value, "emoji_type", "")
}

/// `POST /v1/streams/{stream}/emojis`: one object, an array, or NDJSON. One bad item refuses all.
pub fn batch_body(body: &[u8], format: BodyFormat) -> Result<Vec<Tap>, GatewayError> {
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
        .map(|(v, prefix)| tap(v, "emoji", prefix))
        .collect()
}

/// A stream id: `[a-z0-9_-]{1,64}`, so it is safe in a URL, a Kafka key and a metric label.
pub fn stream_id(stream: &str) -> Result<(), GatewayError> {
    let ok = (1..=64).contains(&stream.len())
        && stream
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(GatewayError::invalid(
            "stream",
            "stream must match [a-z0-9_-]{1,64}",
        ))
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

fn tap(value: &Value, emoji_field: &str, prefix: &str) -> Result<Tap, GatewayError> {
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
    if user_id.is_empty()
        || user_id.chars().count() > 128
        || user_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(GatewayError::invalid(
            field("user_id"),
            "user_id must be 1 to 128 visible characters",
        ));
    }
    let emoji = text(emoji_field)?;
    if !is_one_emoji(emoji) {
        return Err(GatewayError::invalid(
            field(emoji_field),
            format!("{emoji_field} must be exactly one emoji"),
        ));
    }
    let ts = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ms) => Some(ClientTs::Millis(ms)),
            None => {
                return Err(GatewayError::invalid(
                    field("timestamp"),
                    "timestamp must be ISO-8601 or Unix milliseconds",
                ))
            }
        },
        Some(Value::String(s)) if looks_iso8601(s) => Some(ClientTs::Iso(s.clone())),
        Some(_) => {
            return Err(GatewayError::invalid(
                field("timestamp"),
                "timestamp must be ISO-8601 or Unix milliseconds",
            ))
        }
    };
    Ok(Tap {
        user_id: user_id.to_string(),
        emoji: emoji.to_string(),
        ts,
    })
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
        let t = seed_body(br#"{"user_id":"user_42","emoji_type":"\ud83d\udd25","timestamp":"2024-11-05T10:00:00.123Z"}"#).unwrap();
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
            batch_body(body, BodyFormat::Json),
            Err(GatewayError::invalid(
                "items[1].emoji",
                "emoji must be exactly one emoji"
            ))
        );
        let nd = "{\"user_id\":\"a\",\"emoji\":\"🔥\"}\n{\"user_id\":\"\",\"emoji\":\"🔥\"}\n";
        assert_eq!(
            batch_body(nd.as_bytes(), BodyFormat::NdJson),
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
            batch_body(nd.as_bytes(), BodyFormat::NdJson).unwrap().len(),
            2
        );
        assert!(matches!(
            batch_body(b"[]", BodyFormat::Json),
            Err(GatewayError::Malformed { .. })
        ));
        assert!(matches!(
            batch_body(b"{", BodyFormat::Json),
            Err(GatewayError::Malformed { .. })
        ));
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
