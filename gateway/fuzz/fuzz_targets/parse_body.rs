//! The body parser on arbitrary bytes: it never panics, and its fast path (typed, borrowed)
//! never disagrees with its slow path (the `serde_json::Value` one that names every field).
//! The first byte picks the rules: no allow-list, or one that admits only 🔥 and 👍🏽.
#![no_main]

use emostream_gateway::parse::{assert_paths_agree, Rules};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static ALLOW: OnceLock<Rules> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let rules = if pick & 1 == 0 {
        Rules::default()
    } else {
        ALLOW
            .get_or_init(|| Rules::new(&["🔥".into(), "👍🏽".into()]).expect("both are emojis"))
            .clone()
    };
    assert_paths_agree(body, &rules);
});
