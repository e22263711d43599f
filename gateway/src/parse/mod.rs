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
//! - `emoji`: what counts as one emoji (Unicode's RGI list), and its canonical form.

mod emoji;
mod fast;
mod slow;
#[cfg(test)]
mod tests;
mod validate;

pub use emoji::{canonical_emoji, MAX_EMOJI_BYTES};
pub use validate::MAX_TIMESTAMP_BYTES;

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
    /// Canonical: the fully-qualified form of an RGI emoji.
    pub emoji: &'static str,
    pub ts: Option<ClientTs>,
}

/// What a valid emoji is, beyond "one RGI emoji": the optional allow-list from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Canonical forms, so an entry written `❤` admits a tap of `❤️` and the other way round.
    allow: Option<HashSet<&'static str>>,
}

impl Rules {
    /// Refuses an allow-list entry that is not itself one emoji: it could never match.
    pub fn new(allow_list: &[String]) -> Result<Self, StartError> {
        let allow = allow_list
            .iter()
            .map(|e| canonical_emoji(e).ok_or_else(|| StartError::AllowList(e.clone())))
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(Rules {
            allow: (!allow.is_empty()).then_some(allow),
        })
    }

    /// Whether the configuration restricts the emojis, and to which (canonical forms).
    pub fn allowed(&self) -> Option<&HashSet<&'static str>> {
        self.allow.as_ref()
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
