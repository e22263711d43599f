//! The viewer page's way back to a subscriber, over real processes: the subscriber that serves
//! the page tells it where the main publisher is (`/config.json`), the main publisher lets the
//! page, loaded from the subscriber's origin, register cross-origin (CORS), and in a real browser
//! the page registers again and resumes elsewhere when its subscriber loses its upstream (1012).
//!
//! The browser test needs Chromium, Node.js and playwright-core, as `e2e/tests/browser.rs` does:
//! `scripts/install_browser_deps.sh` installs whichever is missing, and the test runs it first.

mod common;

use common::{broadcaster, config, http, DEADLINE};
use emostream_protocol::wire::{Admission, TopologyView};
use emostream_testkit::http::{parse, Response};
use emostream_testkit::{free_port, repo_root, wait_for, Scratch};
use serde::Deserialize;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Chromium's first start on a cold disk takes seconds; reregister.mjs has tighter deadlines of
/// its own for each step.
const BROWSER_DEADLINE: Duration = Duration::from_secs(180);

/// One request with the headers a browser would send, on its own connection.
async fn browser(addr: &str, head: &str, body: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw).unwrap()
}

#[tokio::test]
async fn the_page_learns_the_main_publisher_and_may_register_there_cross_origin() {
    let scratch = Scratch::new("broadcaster-page");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let (main, c0, s0) = (addr(free_port()), addr(free_port()), addr(free_port()));
    let config = config(
        &scratch,
        &format!(
            "[broadcaster]\nmain = \"{main}\"\n\
             [[broadcaster.clusters]]\nname = \"c0\"\nlisten = \"{c0}\"\nsubscribers = [\"{s0}\"]\n"
        ),
    );
    let _main = broadcaster(
        &scratch,
        &config,
        "main",
        &["main", "--synthetic-ms", "200"],
    );
    let _c0 = broadcaster(&scratch, &config, "c0", &["cluster", "--name", "c0"]);
    let _s0 = broadcaster(
        &scratch,
        &config,
        "c0-s0",
        &["subscriber", "--name", "c0-s0"],
    );
    wait_for("the subscriber in the topology", DEADLINE, || async {
        let (status, body) = http(&main, "GET", "/v1/topology", "").await?;
        let view: TopologyView = serde_json::from_str(&body).ok()?;
        (status == 200 && view.clusters.iter().any(|c| !c.subscribers.is_empty())).then_some(())
    })
    .await;

    // The page asks the subscriber that served it.
    let (status, body) = http(&s0, "GET", "/config.json", "").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(r#"{{"gateway":"http://127.0.0.1:0","main":"http://{main}"}}"#)
    );

    // A JSON POST from another origin: the browser asks first.
    let origin = format!("http://{s0}");
    let preflight = browser(
        &main,
        &format!(
            "OPTIONS /register HTTP/1.1\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type"
        ),
        "",
    )
    .await;
    assert_eq!(preflight.status, 200, "{}", preflight.body);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type")
    );

    let registered = browser(
        &main,
        &format!("POST /register HTTP/1.1\r\nOrigin: {origin}\r\nContent-Type: application/json"),
        r#"{"user_id":"web-page","stream":"main"}"#,
    )
    .await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    assert_eq!(registered.header("access-control-allow-origin"), Some("*"));
    let admission: Admission = registered.json();
    assert_eq!(
        (
            admission.assignment.subscriber.as_str(),
            admission.assignment.subscriber_name.as_str()
        ),
        (format!("ws://{s0}").as_str(), "c0-s0")
    );
}

/// Waits until the main publisher's topology lists `n` subscribers.
async fn subscribers_live(main: &str, n: usize) {
    wait_for(
        &format!("{n} subscribers in the topology"),
        DEADLINE,
        || async {
            let (status, body) = http(main, "GET", "/v1/topology", "").await?;
            let view: TopologyView = serde_json::from_str(&body).ok()?;
            let live: usize = view.clusters.iter().map(|c| c.subscribers.len()).sum();
            (status == 200 && live == n).then_some(())
        },
    )
    .await;
}

/// The last stdout line of reregister.mjs.
#[derive(Debug, Deserialize)]
struct Moved {
    /// The subscriber the page watched first.
    first: String,
    /// The subscriber `/register` answered, seen by the browser.
    registered: String,
    /// The subscriber the page watches in the end.
    now: String,
    /// Every epoch the page holds, in order.
    epochs: Vec<u64>,
    /// Every connection state the page showed after the first one went live.
    states: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_registers_again_and_resumes_when_its_subscriber_loses_its_upstream() {
    let root = repo_root();
    let installed = tokio::process::Command::new(root.join("scripts/install_browser_deps.sh"))
        .status()
        .await
        .expect("scripts/install_browser_deps.sh runs");
    assert!(
        installed.success(),
        "installing the browser test's deps failed"
    );

    let scratch = Scratch::new("broadcaster-page-moves");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let (main, c0, s0) = (addr(free_port()), addr(free_port()), addr(free_port()));
    let (c1, s1) = (addr(free_port()), addr(free_port()));
    // A cluster each, so that losing c0 cuts off s0 alone.
    let config = config(
        &scratch,
        &format!(
            "[broadcaster]\nmain = \"{main}\"\n\
             [[broadcaster.clusters]]\nname = \"c0\"\nlisten = \"{c0}\"\nsubscribers = [\"{s0}\"]\n\
             [[broadcaster.clusters]]\nname = \"c1\"\nlisten = \"{c1}\"\nsubscribers = [\"{s1}\"]\n"
        ),
    );
    // 500 ms epochs: the ring (60) holds 30 s, far longer than the move takes, so a resume with
    // `since` loses nothing.
    let _main = broadcaster(
        &scratch,
        &config,
        "main",
        &["main", "--synthetic-ms", "500"],
    );
    let c0_process = broadcaster(&scratch, &config, "c0", &["cluster", "--name", "c0"]);
    let _c1 = broadcaster(&scratch, &config, "c1", &["cluster", "--name", "c1"]);
    let _s0 = broadcaster(
        &scratch,
        &config,
        "c0-s0",
        &["subscriber", "--name", "c0-s0"],
    );
    let _s1 = broadcaster(
        &scratch,
        &config,
        "c1-s0",
        &["subscriber", "--name", "c1-s0"],
    );
    subscribers_live(&main, 2).await;

    let page = format!("http://{s0}/?stream=main");
    let mut node = tokio::process::Command::new("node")
        .arg(root.join("e2e/browser/reregister.mjs"))
        .arg(&page)
        .arg(format!("ws://{s1}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "LIVE" {
                break;
            }
        }
        // The page watches s0; its upstream goes away without a word.
        c0_process.signal(libc::SIGKILL);
        let mut last = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            last = Some(line);
        }
        let output = node.wait_with_output().await.unwrap();
        (last, output)
    };
    let (last, output) = tokio::time::timeout(BROWSER_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("reregister.mjs did not finish within {BROWSER_DEADLINE:?}"));
    assert!(
        output.status.success(),
        "reregister.mjs against {page} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = last.unwrap_or_default();
    let moved: Moved = serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("{e}: reregister.mjs's last line is not its outcome: {last}"));
    println!("the page moved: {moved:?}");
    let (from, to) = (format!("ws://{s0}"), format!("ws://{s1}"));
    assert_eq!(
        (
            moved.first.as_str(),
            moved.registered.as_str(),
            moved.now.as_str()
        ),
        (from.as_str(), to.as_str(), to.as_str()),
        "{moved:?}"
    );
    // Resumed with `since`: every epoch from the first the page saw to the newest, once.
    let (first, newest) = (moved.epochs[0], *moved.epochs.last().unwrap());
    assert_eq!(
        moved.epochs,
        (first..=newest).collect::<Vec<_>>(),
        "{moved:?}"
    );
    assert!(
        moved
            .states
            .iter()
            .any(|s| s
                .starts_with("reconnecting: Subscriber lost its upstream. Registering again in")),
        "{moved:?}"
    );
}
