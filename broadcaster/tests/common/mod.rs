//! What the broadcaster's process-level tests share on top of `emostream-testkit`: a
//! configuration file, the broadcaster binary as a real process, HTTP answers as
//! (status, body), a role's listener and stop signal, and reading an SSE stream.

#![allow(dead_code)] // each test binary uses its own part of this module

use emostream_broadcaster::{RegistrationLimit, Retention, Settings, ViewerLimits};
use emostream_protocol::client::TrustedProxies;
use emostream_testkit::{http, Process, Scratch};
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

/// How long any one expected thing may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Writes a cluster.toml whose `[broadcaster]` section is `broadcaster` into `scratch`.
pub fn config(scratch: &Scratch, broadcaster: &str) -> PathBuf {
    let path = scratch.join("cluster.toml");
    let text = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n\
         [dataflow]\nprocesses = [\"127.0.0.1:0\"]\n{broadcaster}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// One broadcaster process (`args`: its role), killed when dropped; its log goes to
/// `<scratch>/<name>.log`.
pub fn broadcaster(scratch: &Scratch, config: &Path, name: &str, args: &[&str]) -> Process {
    Process::spawn(
        name,
        Command::new(env!("CARGO_BIN_EXE_emostream-broadcaster"))
            .arg("--config")
            .arg(config)
            .args(args),
        &scratch.join(format!("{name}.log")),
    )
}

/// One HTTP/1.1 request (JSON body) on its own connection: the status and the body, or `None`
/// if nothing listens there.
pub async fn http(
    addr: impl Display,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    http::request(
        &addr.to_string(),
        method,
        path,
        Some("application/json"),
        body.as_bytes(),
    )
    .await
    .ok()
    .map(|r| (r.status, r.body))
}

/// The value of one Prometheus sample line of `metrics`, e.g. `name{tier="subscriber"}`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// A listener on a free loopback port, and its address.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A role's shutdown future: resolves once `stop` says true.
pub fn until(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// Reads an HTTP response's head, byte by byte so that nothing after it is taken from the
/// socket, each byte within `deadline`.
pub async fn response_head(conn: &mut TcpStream, deadline: Duration) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        timeout(deadline, conn.read_exact(&mut byte))
            .await
            .expect("the answer in time")
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads an SSE response until `want` has appeared in it (or the deadline passes); returns all
/// of it.
pub async fn sse_until(conn: &mut TcpStream, want: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&seen).contains(want) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the SSE stream ended early: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} in {}", String::from_utf8_lossy(&seen)));
    String::from_utf8(seen).unwrap()
}

/// A role's settings for an in-process test: a ring of `ring_epochs`, no stream forgotten, no
/// tokens or link secret, room for 1,000 viewers over 64 streams, the default registration
/// limit with no trusted proxy.
pub fn settings(ring_epochs: usize) -> Settings {
    Settings {
        retention: Retention::ring(ring_epochs),
        missed_before: 0,
        tokens: None,
        link_secret: None,
        page: None,
        user_tokens: None,
        viewer_limits: ViewerLimits::new(64 * 1024, Duration::from_secs(4)),
        bundle_wait: Duration::from_millis(30),
        subscriber_threads: 0,
        max_viewers: 1000,
        max_streams: 64,
        header_read_timeout: Duration::from_secs(5),
        max_pending: 512,
        registrations: registrations(&[]),
    }
}

/// The main publisher's registration limit at its defaults (1,000 a second, 2,000 at once),
/// believing the forwarding headers of `trusted_proxies`.
pub fn registrations(trusted_proxies: &[&str]) -> RegistrationLimit {
    let entries: Vec<String> = trusted_proxies.iter().map(|s| s.to_string()).collect();
    RegistrationLimit {
        per_s: 1_000,
        burst: 2_000,
        trusted_proxies: Arc::new(TrustedProxies::new(&entries).unwrap()),
    }
}
