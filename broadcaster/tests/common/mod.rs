//! What the broadcaster's process-level tests share on top of `emostream-testkit`: a
//! configuration file, the broadcaster binary as a real process, and HTTP answers as
//! (status, body).

#![allow(dead_code)] // each test binary uses its own part of this module

use emostream_testkit::{http, Process, Scratch};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
