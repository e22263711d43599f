//! The body parser on arbitrary bytes. Its oracle is the validation rules, stated here apart
//! from the parser: every accepted tap has a user id of 1 to 128 visible characters, an emoji of
//! Unicode's RGI list in its fully-qualified form (looked up in the `emojis` crate directly) and
//! within the byte cap, admitted by the allow-list, and a timestamp in range; every refusal is
//! one of the gateway's, and an invalid field is named (`items[i].…` in a list). It also checks
//! that the fast path (typed, borrowed) never disagrees with the slow one, and that nothing
//! panics. The first byte picks the rules: no allow-list, or one that admits only 🔥 and ❤️
//! (written `❤`, unqualified, so the allow-list's canonicalisation is exercised too).
#![no_main]

use emostream_gateway::parse::{
    assert_paths_agree, batch_body, is_list, seed_body, BodyFormat, Rules, Tap, MAX_EMOJI_BYTES,
    MAX_TIMESTAMP_BYTES,
};
use emostream_gateway::GatewayError;
use emostream_protocol::wire::ClientTs;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static ALLOW: OnceLock<Rules> = OnceLock::new();

/// Default_Ignorable_Code_Point, DerivedCoreProperties.txt of Unicode 16.0.
const DEFAULT_IGNORABLE: [std::ops::RangeInclusive<u32>; 17] = [
    0xAD..=0xAD,
    0x34F..=0x34F,
    0x61C..=0x61C,
    0x115F..=0x1160,
    0x17B4..=0x17B5,
    0x180B..=0x180F,
    0x200B..=0x200F,
    0x202A..=0x202E,
    0x2060..=0x206F,
    0x3164..=0x3164,
    0xFE00..=0xFE0F,
    0xFEFF..=0xFEFF,
    0xFFA0..=0xFFA0,
    0xFFF0..=0xFFF8,
    0x1BCA0..=0x1BCA3,
    0x1D173..=0x1D17A,
    0xE0000..=0xE0FFF,
];

/// 9999-12-31T23:59:59.999Z.
const MAX_MS: u64 = 253_402_300_799_999;

fn tap_obeys_the_rules(tap: &Tap<'_>, rules: &Rules, body: &[u8]) {
    let chars = tap.user_id.chars().count();
    assert!(
        (1..=128).contains(&chars),
        "user id length {chars}: {body:?}"
    );
    assert!(
        !tap.user_id.chars().any(|c| c.is_control()
            || c.is_whitespace()
            || DEFAULT_IGNORABLE.iter().any(|r| r.contains(&(c as u32)))),
        "invisible character in user id {:?}: {body:?}",
        tap.user_id
    );
    let rgi = emojis::get(tap.emoji).map(|e| e.as_str());
    assert_eq!(rgi, Some(tap.emoji), "not a canonical RGI emoji: {body:?}");
    assert!(tap.emoji.len() <= MAX_EMOJI_BYTES, "{body:?}");
    if let Some(allowed) = rules.allowed() {
        assert!(
            allowed.contains(tap.emoji),
            "{} is not allowed: {body:?}",
            tap.emoji
        );
    }
    match &tap.ts {
        None => {}
        Some(ClientTs::Millis(ms)) => assert!(*ms <= MAX_MS, "{ms}: {body:?}"),
        Some(ClientTs::Iso(text)) => {
            assert!(text.len() <= MAX_TIMESTAMP_BYTES, "{body:?}");
            assert!(
                matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')),
                "{text:?} is not a date-time: {body:?}"
            );
        }
    }
}

fn refusal_names_its_field(error: &GatewayError, list: bool, body: &[u8]) {
    const FIELDS: [&str; 4] = ["user_id", "emoji", "emoji_type", "timestamp"];
    match error {
        GatewayError::Invalid { field, .. } => {
            let last = field.rsplit('.').next().expect("rsplit yields one part");
            let item = field.strip_prefix("items[").is_some();
            assert!(
                FIELDS.contains(&last) || (item && field.ends_with(']')),
                "unnamed field {field:?}: {body:?}"
            );
            assert!(!list || item, "{field} in a list: {body:?}");
        }
        GatewayError::Malformed { field, .. } => {
            assert!(
                field.as_deref().is_none_or(|f| f.starts_with("items[")),
                "{field:?}: {body:?}"
            );
        }
        other => panic!("the parser answered {other:?}: {body:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let rules = if pick & 1 == 0 {
        Rules::default()
    } else {
        ALLOW
            .get_or_init(|| Rules::new(&["🔥".into(), "❤".into()]).expect("both are emojis"))
            .clone()
    };
    assert_paths_agree(body, &rules);
    match seed_body(body, &rules) {
        Ok(tap) => tap_obeys_the_rules(&tap, &rules, body),
        Err(e) => refusal_names_its_field(&e, false, body),
    }
    for format in [BodyFormat::Json, BodyFormat::NdJson] {
        match batch_body(body, format, &rules) {
            Ok(taps) => {
                assert!(!taps.is_empty(), "{body:?}");
                for tap in &taps {
                    tap_obeys_the_rules(tap, &rules, body);
                }
            }
            Err(e) => refusal_names_its_field(&e, is_list(body, format), body),
        }
    }
});
