//! The viewer page in a real browser: headless Chromium (driven by `e2e/browser/tap.mjs` through
//! playwright-core) loads the page, taps 🔥 and ❤️, sees the gateway answer 202, and sees its own
//! taps counted in that epoch's row on screen. The dataflow runs with a frame bound of one emoji,
//! so the frame lists ❤️ and sums 🔥 in `other`, and the page must show that part too. A
//! WebSocket viewer of the same subscriber checks that what the page showed is what the system
//! published. Screenshots go to `target/browser/`.
//!
//! Needs Chromium, a colour emoji font, Node.js and playwright-core:
//! `scripts/install_browser_deps.sh` installs whichever is missing, and this test runs it first.

use emostream_e2e::viewer::Viewer;
use emostream_e2e::{System, Topology};
use emostream_protocol::wire::{EpochFrame, OtherEmojis};
use emostream_testkit::{repo_root, wait_for};
use serde::Deserialize;
use std::process::Stdio;
use std::time::Duration;

/// A stream nothing else writes to, so the page's tap is the only one in its epoch.
const STREAM: &str = "browser";
/// The emoji a one-emoji frame lists of the two the page taps (🔥 and ❤️, once each): equal
/// counts go by UTF-8 bytes, and ❤️'s are lower.
const LISTED: &str = "❤️";
/// Generous: Chromium's first start on a cold disk takes seconds, and the epoch must close and
/// pass three tiers; tap.mjs has tighter deadlines of its own for each step.
const BROWSER_DEADLINE: Duration = Duration::from_secs(180);

/// The last stdout line of tap.mjs.
#[derive(Debug, Deserialize)]
struct Outcome {
    status: u16,
    accepted: u64,
    epoch: u64,
    count: u64,
    user_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_in_the_page_is_counted_on_screen() {
    let root = repo_root();
    let installed = tokio::process::Command::new(root.join("scripts/install_browser_deps.sh"))
        .status()
        .await
        .expect("scripts/install_browser_deps.sh runs");
    assert!(
        installed.success(),
        "installing the browser test's deps failed"
    );

    let system = System::start(Topology {
        worker_env: vec![("EMOSTREAM_EPOCHS__MAX_FRAME_EMOJIS", "1".into())],
        ..Topology::default()
    })
    .await;
    let subscriber = system.subscribers()[0].clone();
    let viewer = Viewer::connect(&format!("ws://{subscriber}"), STREAM).await;
    // Each subscriber serves the page; it reads the gateway from the subscriber's /config.json.
    let page = format!("http://{subscriber}/?stream={STREAM}");

    let shots = root.join("target/browser");
    let run = tokio::process::Command::new("node")
        .arg(root.join("e2e/browser/tap.mjs"))
        .arg(&page)
        .arg(&shots)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("tap.mjs did not finish within {BROWSER_DEADLINE:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tap.mjs against {page} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let outcome: Outcome = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: tap.mjs's last line is not its outcome:\n{stdout}"));
    assert_eq!((outcome.status, outcome.accepted), (202, 2), "{outcome:?}");
    assert_eq!(outcome.count, 1, "the page showed {outcome:?}");
    assert!(outcome.user_id.starts_with("web-"), "{outcome:?}");

    // What the page showed is what the subscriber sent for that epoch.
    let frame = wait_for(
        &format!("epoch {} at the viewer", outcome.epoch),
        Duration::from_secs(30),
        || {
            let frame = viewer
                .frames()
                .iter()
                .filter_map(|f| serde_json::from_str::<EpochFrame>(&f.text).ok())
                .find(|f| f.epoch == outcome.epoch);
            async move { frame }
        },
    )
    .await;
    assert_eq!(frame.stream, STREAM);
    assert_eq!(frame.total, 2, "{frame:?}");
    assert_eq!(frame.emojis.len(), 1, "{frame:?}");
    assert_eq!(
        (frame.emojis[0].emoji.as_str(), frame.emojis[0].count),
        (LISTED, 1)
    );
    assert_eq!(
        frame.other,
        Some(OtherEmojis {
            distinct: 1,
            count: 1,
            scaled: 1
        })
    );

    for name in ["page.png", "page-phone.png"] {
        let png = std::fs::read(shots.join(name)).expect("tap.mjs saved a screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is a PNG");
    }
    eprintln!("screenshots in {}", shots.display());
}
