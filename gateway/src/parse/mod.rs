//! Request bodies into validated taps.
//!
//! Two paths give one answer. The fast path deserializes straight into borrowed, typed structs
//! (no `serde_json::Value` tree, no copy of a string without escapes); it only ever says "all
//! good". Anything it cannot take (malformed JSON, a wrong type, a missing or invalid field)
//! goes to the slow path, which parses into `serde_json::Value` so every refusal can name the
//! exact field and the item's index in a batch. Both validate with the same functions, and the
//! fuzz target (`gateway/fuzz`) checks that they agree.
//!
//! - `fast`: the fast path's borrowed structs and its two entry points.
//! - `slow`: the slow path over `serde_json::Value`, naming each refusal's field.
//! - `validate`: the field rules both paths share (user id, emoji, allow-list, timestamp).
//! - `emoji`: what counts as exactly one emoji.

mod emoji;
mod fast;
mod slow;
#[cfg(test)]
mod tests;
mod validate;

pub use emoji::is_one_emoji;

use crate::{GatewayError, StartError};
use emostream_protocol::wire::ClientTs;
use fast::{fast_batch, fast_seed};
use slow::{slow_batch, slow_seed};
use std::borrow::Cow;
use std::collections::HashSet;

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
    pub fn new(allow_list: &[String]) -> Result<Self, StartError> {
        if let Some(bad) = allow_list.iter().find(|e| !is_one_emoji(e)) {
            return Err(StartError::AllowList(bad.clone()));
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
