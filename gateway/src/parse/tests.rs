use super::*;

#[test]
fn rgi_emojis_are_taken_in_their_canonical_form() {
    // (as sent, as stored): ZWJ sequences, skin tones, flags (regional and tag), keycaps, and
    // the unqualified forms that map to one fully-qualified emoji.
    let cases = [
        ("🔥", "🔥"),
        ("👍🏽", "👍🏽"),
        ("❤️", "❤️"),
        ("❤", "❤️"),
        ("☺", "☺️"),
        ("👨‍👩‍👧", "👨‍👩‍👧"),
        (
            "🧑🏻\u{200D}❤️\u{200D}💋\u{200D}🧑🏼",
            "🧑🏻\u{200D}❤️\u{200D}💋\u{200D}🧑🏼",
        ),
        ("🇮🇳", "🇮🇳"),
        (
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        ),
        ("1️⃣", "1️⃣"),
        ("1\u{20E3}", "1️⃣"),
        ("#\u{20E3}", "#️⃣"),
        ("🏳️‍🌈", "🏳️‍🌈"),
        ("🏳\u{200D}🌈", "🏳️‍🌈"),
        ("⭐", "⭐"),
    ];
    for (sent, stored) in cases {
        assert_eq!(canonical_emoji(sent), Some(stored), "{sent:?}");
    }
}

#[test]
fn anything_but_one_rgi_emoji_is_refused() {
    let marks = format!("🔥{}", "\u{0300}".repeat(1000));
    let tags = format!("🏴{}\u{E007F}", "\u{E0061}".repeat(100));
    let long_tags = format!("🏴{}\u{E007F}", "\u{E0061}".repeat(10));
    for e in [
        "",
        "a",
        "🔥🔥",
        "1",
        "#",
        "hi🔥",
        "👍 ",
        "\u{200D}",
        "🏽",
        "🇦🇦",
        "🔥\u{0300}",
        "🔥\u{FE0F}\u{FE0F}",
        "👍🏽🏽",
        marks.as_str(),
        tags.as_str(),
        long_tags.as_str(),
    ] {
        assert_eq!(canonical_emoji(e), None, "{e:?} should be refused");
    }
}

/// The `emojis` crate (0.9.1) maps a few strings to another emoji than the one sent: `#`, `*` or
/// a digit with U+FE0F but no keycap mark U+20E3 (not an emoji: it shows as the plain
/// character) to the keycap, and a kiss or couple of two people with the same skin tone and an
/// unqualified heart to the fully-qualified one with the second person's tone changed. Each is
/// refused, and the emojis they were mistaken for are still taken.
#[test]
fn a_string_the_emoji_data_maps_to_another_emoji_is_refused() {
    for e in [
        "#\u{FE0F}",
        "*\u{FE0F}",
        "0\u{FE0F}",
        "7\u{FE0F}",
        "9\u{FE0F}",
    ] {
        assert_eq!(canonical_emoji(e), None, "{e:?} should be refused");
    }
    let same_tone = "👨🏼\u{200D}❤\u{200D}💋\u{200D}👨🏼";
    assert_eq!(canonical_emoji(same_tone), None);
    let kiss = "👨🏼\u{200D}❤\u{FE0F}\u{200D}💋\u{200D}👨🏼";
    for (sent, stored) in [
        ("7\u{FE0F}\u{20E3}", "7\u{FE0F}\u{20E3}"),
        ("7\u{20E3}", "7\u{FE0F}\u{20E3}"),
        ("*\u{20E3}", "*\u{FE0F}\u{20E3}"),
        (kiss, kiss),
    ] {
        assert_eq!(canonical_emoji(sent), Some(stored), "{sent:?}");
    }
}

#[test]
fn seed_body_as_the_seeds_send_it() {
    let t = seed_body(br#"{"user_id":"user_42","emoji_type":"\ud83d\udd25","timestamp":"2024-11-05T10:00:00.123Z"}"#, &Rules::default()).unwrap();
    assert_eq!(
        t,
        Tap {
            user_id: "user_42".into(),
            emoji: "🔥",
            ts: Some(ClientTs::Iso("2024-11-05T10:00:00.123Z".into()))
        }
    );
}

#[test]
fn the_seeds_clients_request_shapes() {
    // (body as the clients send it, user id, stored timestamp). Python's `json.dumps` escapes
    // every non-ASCII character; its `datetime.isoformat()` of a naive datetime has no zone.
    let cases = [
        (
            r#"{"user_id": 42, "emoji_type": "\u2764\ufe0f", "timestamp": 1764540000}"#,
            "42",
            ClientTs::Millis(1_764_540_000_000),
        ),
        (
            r#"{"user_id": 7, "emoji_type": "\u2764", "timestamp": 1764540000.25}"#,
            "7",
            ClientTs::Millis(1_764_540_000_250),
        ),
        (
            r#"{"user_id": "user_9", "emoji_type": "❤️", "timestamp": 1764540000123}"#,
            "user_9",
            ClientTs::Millis(1_764_540_000_123),
        ),
        (
            r#"{"user_id": -3, "emoji_type": "❤️", "timestamp": 1764540000123.9}"#,
            "-3",
            ClientTs::Millis(1_764_540_000_124),
        ),
        (
            r#"{"user_id": 42, "emoji_type": "❤️", "timestamp": "2026-11-30T22:00:00.123456"}"#,
            "42",
            ClientTs::Iso("2026-11-30T22:00:00.123456".into()),
        ),
        (
            r#"{"user_id": 42, "emoji_type": "❤️", "timestamp": "2026-11-30 22:00:00"}"#,
            "42",
            ClientTs::Iso("2026-11-30 22:00:00".into()),
        ),
        (
            r#"{"user_id": 42, "emoji_type": "❤️", "timestamp": "2026-11-30T22:00:00+05:30"}"#,
            "42",
            ClientTs::Iso("2026-11-30T22:00:00+05:30".into()),
        ),
        (
            r#"{"user_id": 42, "emoji_type": "❤️", "timestamp": "2026-11-30 22:00:00Z"}"#,
            "42",
            ClientTs::Iso("2026-11-30 22:00:00Z".into()),
        ),
    ];
    for (body, user, ts) in cases {
        let fast = fast_seed(body.as_bytes(), &Rules::default());
        let tap = seed_body(body.as_bytes(), &Rules::default()).unwrap();
        assert_eq!(fast.as_ref(), Some(&tap), "{body}: the fast path takes it");
        assert_eq!(
            tap,
            Tap {
                user_id: user.into(),
                emoji: "❤️",
                ts: Some(ts)
            },
            "{body}"
        );
        assert_eq!(slow_seed(body.as_bytes(), &Rules::default()), Ok(tap));
    }
}

#[test]
fn bad_seed_user_ids_and_timestamps_name_their_field() {
    let user_rule = "user_id must be a string or an integer";
    let cases = [
        (r#"{"user_id":4.5,"emoji_type":"🔥"}"#, "user_id", user_rule),
        (
            r#"{"user_id":true,"emoji_type":"🔥"}"#,
            "user_id",
            user_rule,
        ),
        (
            r#"{"user_id":1e300,"emoji_type":"🔥"}"#,
            "user_id",
            user_rule,
        ),
        (
            r#"{"user_id":1,"emoji_type":"🔥","timestamp":-1}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":1,"emoji_type":"🔥","timestamp":1e300}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":1,"emoji_type":"🔥","timestamp":253402300800000}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":1,"emoji_type":"🔥","timestamp":"2026-11-30"}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":1,"emoji_type":"🔥","timestamp":"2026-13-30T22:00:00"}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":1,"emoji_type":"🔥","timestamp":"2026-11-30T22:00:00Z junk"}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":1,"emoji_type":"🔥","timestamp":"1764540000"}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
    ];
    for (body, field, error) in cases {
        assert_eq!(
            seed_body(body.as_bytes(), &Rules::default()),
            Err(GatewayError::invalid(field, error)),
            "{body}"
        );
    }
    let long = format!(
        r#"{{"user_id":1,"emoji_type":"🔥","timestamp":"2026-11-30T22:00:00.{}Z"}}"#,
        "1".repeat(40)
    );
    assert_eq!(
        seed_body(long.as_bytes(), &Rules::default()),
        Err(GatewayError::invalid("timestamp", validate::TIMESTAMP_RULE))
    );
    // The batch route keeps its string user ids.
    assert_eq!(
        batch_body(
            br#"{"user_id":42,"emoji":"x"}"#,
            BodyFormat::Json,
            &Rules::default()
        ),
        Err(GatewayError::invalid("user_id", "user_id must be a string"))
    );
}

#[test]
fn batch_refusal_names_the_item() {
    let body = r#"[{"user_id":"a","emoji":"🔥"},{"user_id":"b","emoji":"xx"}]"#.as_bytes();
    assert_eq!(
        batch_body(body, BodyFormat::Json, &Rules::default()),
        Err(GatewayError::invalid(
            "items[1].emoji",
            "emoji must be exactly one emoji of Unicode's RGI list"
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
            emoji: "❤️",
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
    // An entry and a tap in different qualifications are one emoji.
    let hearts = Rules::new(&["❤".to_string()]).unwrap();
    assert_eq!(
        seed_body(r#"{"user_id":"a","emoji_type":"❤️"}"#.as_bytes(), &hearts)
            .unwrap()
            .emoji,
        "❤️"
    );
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
            "emoji must be exactly one emoji of Unicode's RGI list",
        ),
        (
            r#"{"user_id":"a","emoji":"🔥","timestamp":-1}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":"a","emoji":"🔥","timestamp":"yesterday"}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
        ),
        (
            r#"{"user_id":"a","emoji":"🔥","timestamp":true}"#,
            "timestamp",
            validate::TIMESTAMP_RULE,
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

#[test]
fn a_user_id_with_any_default_ignorable_code_point_is_refused() {
    let rules = Rules::default();
    // Both ends of every range of Default_Ignorable_Code_Point (Unicode 16.0).
    let ignorable = [
        0xAD, 0x34F, 0x61C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180F, 0x200B, 0x200F, 0x202A,
        0x202E, 0x2060, 0x206F, 0x3164, 0xFE00, 0xFE0F, 0xFEFF, 0xFFA0, 0xFFF0, 0xFFF8, 0x1BCA0,
        0x1BCA3, 0x1D173, 0x1D17A, 0xE0000, 0xE0041, 0xE0100, 0xE0FFF,
    ];
    for code in ignorable {
        let c = char::from_u32(code).unwrap();
        let body = serde_json::json!({ "user_id": format!("a{c}b"), "emoji": "🔥" }).to_string();
        assert_eq!(
            batch_body(body.as_bytes(), BodyFormat::Json, &rules),
            Err(GatewayError::invalid(
                "user_id",
                "user_id must be 1 to 128 visible characters"
            )),
            "U+{code:04X}"
        );
    }
    // Their neighbours outside the property are ordinary characters.
    for code in [
        0xAC, 0x34E, 0x1161, 0x17B6, 0x2070, 0x3165, 0xFE10, 0xFFF9, 0x1D17B, 0xE1000,
    ] {
        let c = char::from_u32(code).unwrap();
        let body = serde_json::json!({ "user_id": format!("a{c}b"), "emoji": "🔥" }).to_string();
        assert!(
            batch_body(body.as_bytes(), BodyFormat::Json, &rules).is_ok(),
            "U+{code:04X}"
        );
    }
}
