//! The slow path: through `serde_json::Value`, so every refusal names its field and item.
//!
//! A list is checked item by item as it is read: a body of 300,000 bad items costs the `Value`
//! of the first and a syntax check of the rest (which allocates nothing), not a `Value` tree and
//! a field prefix per item before the first is looked at. The answer is the same as checking
//! the whole body first: a body that is not well-formed JSON anywhere is 400, else the first
//! invalid item is 422.

use super::fast::RawTs;
use super::validate::{bad_timestamp, check_user_id, validate};
use super::{BodyFormat, Rules, Tap};
use crate::GatewayError;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;

pub(super) fn slow_seed<'a>(body: &[u8], rules: &Rules) -> Result<Tap<'a>, GatewayError> {
    tap(&json(body, None)?, "emoji_type", Place::Body, rules)
}

/// The slow path: every refusal names its field.
pub(super) fn slow_batch<'a>(
    body: &'a [u8],
    format: BodyFormat,
    rules: &Rules,
) -> Result<Vec<Tap<'a>>, GatewayError> {
    let mut items = Items {
        rules,
        taps: Vec::new(),
        read: 0,
        refused: None,
    };
    match format {
        BodyFormat::Json if super::is_list(body, format) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            (&mut de)
                .deserialize_seq(List(&mut items))
                .and_then(|()| de.end())
                .map_err(|e| malformed(&format!("malformed JSON: {e}"), None))?;
        }
        BodyFormat::Json => items.take(json(body, None)?, Place::Body),
        BodyFormat::NdJson => {
            let text =
                std::str::from_utf8(body).map_err(|_| malformed("body is not UTF-8", None))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let place = Place::Item(items.read);
                if items.refused.is_none() {
                    items.take(json(line.as_bytes(), Some(place))?, place);
                } else {
                    // Only whether the line is JSON still matters: a malformed line anywhere
                    // is the answer.
                    serde_json::from_slice::<Checked>(line.as_bytes())
                        .map_err(|e| malformed(&format!("malformed JSON: {e}"), Some(place)))?;
                    items.read += 1;
                }
            }
        }
    }
    if items.read == 0 {
        return Err(malformed("the body holds no emoji", None));
    }
    match items.refused {
        Some(refusal) => Err(refusal),
        None => Ok(items.taps),
    }
}

/// Where a tap's object is: the body itself, or item `i` of a list (`items[i]` in a refusal).
#[derive(Clone, Copy)]
enum Place {
    Body,
    Item(usize),
}

/// The taps of a list so far, and its first refusal: past it items are only read.
struct Items<'r> {
    rules: &'r Rules,
    taps: Vec<Tap<'static>>,
    read: usize,
    refused: Option<GatewayError>,
}

impl Items<'_> {
    fn take(&mut self, value: Value, place: Place) {
        match tap(&value, "emoji", place, self.rules) {
            Ok(tap) => self.taps.push(tap),
            Err(refusal) => self.refused = Some(refusal),
        }
        self.read += 1;
    }
}

/// A JSON array read one item at a time: each item's `Value` until one is refused, after it
/// only [`Checked`].
struct List<'i, 'r>(&'i mut Items<'r>);

impl<'de> Visitor<'de> for List<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let items = self.0;
        loop {
            if items.refused.is_none() {
                let Some(value) = seq.next_element::<Value>()? else {
                    return Ok(());
                };
                let place = Place::Item(items.read);
                items.take(value, place);
            } else if seq.next_element::<Checked>()?.is_none() {
                return Ok(());
            }
        }
    }
}

/// Any JSON value, read and checked as `serde_json::Value` reads it (the same `deserialize_any`:
/// string escapes, number range, nesting depth) but never built, so reading it allocates
/// nothing beyond the parser's scratch for an escaped string.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

fn malformed(reason: &str, place: Option<Place>) -> GatewayError {
    GatewayError::Malformed {
        reason: reason.into(),
        field: match place {
            Some(Place::Item(i)) => Some(format!("items[{i}]")),
            Some(Place::Body) | None => None,
        },
    }
}

fn json(body: &[u8], place: Option<Place>) -> Result<Value, GatewayError> {
    serde_json::from_slice(body).map_err(|e| malformed(&format!("malformed JSON: {e}"), place))
}

/// The slow path's item: every type error names its field (`items[i].field` in a list, the
/// prefix written only for a refusal), then [`validate`] as on the fast path.
fn tap<'a>(
    value: &Value,
    emoji_field: &str,
    place: Place,
    rules: &Rules,
) -> Result<Tap<'a>, GatewayError> {
    let Some(object) = value.as_object() else {
        return Err(match place {
            // The body itself: there is no field to name (found by the fuzz target's oracle).
            Place::Body => malformed(
                if emoji_field == "emoji_type" {
                    "the body must be a JSON object"
                } else {
                    "the body must be a JSON object or array of objects"
                },
                None,
            ),
            Place::Item(i) => {
                GatewayError::invalid(format!("items[{i}]"), "each emoji must be a JSON object")
            }
        });
    };
    fields(object, emoji_field, rules).map_err(|refusal| match (place, refusal) {
        (Place::Item(i), GatewayError::Invalid { reason, field }) => GatewayError::Invalid {
            reason,
            field: format!("items[{i}].{field}"),
        },
        (_, refusal) => refusal,
    })
}

/// One object's fields, refusals naming the field alone.
fn fields<'a>(
    object: &Map<String, Value>,
    emoji_field: &str,
    rules: &Rules,
) -> Result<Tap<'a>, GatewayError> {
    let text = |name: &str| -> Result<&str, GatewayError> {
        match object.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(GatewayError::invalid(
                name,
                format!("{name} must be a string"),
            )),
            None => Err(GatewayError::invalid(name, format!("{name} is required"))),
        }
    };
    // The seed route also takes an integer user id, as its decimal text (see `SeedUserId`).
    let seed = emoji_field == "emoji_type";
    let user_id: Cow<'_, str> = match object.get("user_id") {
        Some(Value::Number(n)) if seed && (n.is_u64() || n.is_i64()) => Cow::Owned(n.to_string()),
        Some(v) if seed && !v.is_string() => {
            return Err(GatewayError::invalid(
                "user_id",
                "user_id must be a string or an integer",
            ))
        }
        _ => Cow::Borrowed(text("user_id")?),
    };
    check_user_id(&user_id, "")?;
    let emoji = text(emoji_field)?;
    let ts = match object.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => Some(RawTs::Int(n)),
            (None, Some(f)) => Some(RawTs::Float(f)),
            (None, None) => return Err(bad_timestamp("")),
        },
        Some(Value::String(s)) => Some(RawTs::Text(Cow::Borrowed(s.as_str()))),
        Some(_) => return Err(bad_timestamp("")),
    };
    let tap = validate(user_id, Cow::Borrowed(emoji), ts, "", emoji_field, rules)?;
    Ok(Tap {
        user_id: Cow::Owned(tap.user_id.into_owned()),
        emoji: tap.emoji,
        ts: tap.ts,
    })
}
