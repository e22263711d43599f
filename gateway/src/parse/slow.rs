//! The slow path: through `serde_json::Value`, so every refusal names its field and item.

use super::fast::RawTs;
use super::validate::{bad_timestamp, check_user_id, validate};
use super::{BodyFormat, Rules, Tap};
use crate::GatewayError;
use serde_json::{Map, Value};
use std::borrow::Cow;

pub(super) fn slow_seed<'a>(body: &[u8], rules: &Rules) -> Result<Tap<'a>, GatewayError> {
    tap(&json(body, None)?, "emoji_type", "", rules)
}

/// The slow path: every refusal names its field.
pub(super) fn slow_batch<'a>(
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
        if prefix.is_empty() {
            // The body itself: there is no field to name (found by the fuzz target's oracle).
            malformed(
                if emoji_field == "emoji_type" {
                    "the body must be a JSON object"
                } else {
                    "the body must be a JSON object or array of objects"
                },
                None,
            )
        } else {
            GatewayError::invalid(
                prefix.trim_end_matches('.'),
                "each emoji must be a JSON object",
            )
        }
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
    // The seed route also takes an integer user id, as its decimal text (see `SeedUserId`).
    let seed = emoji_field == "emoji_type";
    let user_id: Cow<'_, str> = match object.get("user_id") {
        Some(Value::Number(n)) if seed && (n.is_u64() || n.is_i64()) => Cow::Owned(n.to_string()),
        Some(v) if seed && !v.is_string() => {
            return Err(GatewayError::invalid(
                field("user_id"),
                "user_id must be a string or an integer",
            ))
        }
        _ => Cow::Borrowed(text("user_id")?),
    };
    check_user_id(&user_id, prefix)?;
    let emoji = text(emoji_field)?;
    let ts = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => Some(RawTs::Int(n)),
            (None, Some(f)) => Some(RawTs::Float(f)),
            (None, None) => return Err(bad_timestamp(prefix)),
        },
        Some(Value::String(s)) => Some(RawTs::Text(Cow::Borrowed(s.as_str()))),
        Some(_) => return Err(bad_timestamp(prefix)),
    };
    let tap = validate(
        user_id,
        Cow::Borrowed(emoji),
        ts,
        prefix,
        emoji_field,
        rules,
    )?;
    Ok(Tap {
        user_id: Cow::Owned(tap.user_id.into_owned()),
        emoji: tap.emoji,
        ts: tap.ts,
    })
}
