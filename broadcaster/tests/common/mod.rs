//! What the process-level tests share: the broadcaster binary as real processes, a config file,
//! plain HTTP, and waiting on conditions with deadlines.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// How long any one expected thing may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub use emostream_e2e::free_port;

/// A folder of this test's own, deleted however the test ends.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "emostream-broadcaster-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes a cluster.toml whose `[broadcaster]` section is `broadcaster`.
    pub fn config(&self, broadcaster: &str) -> PathBuf {
        let path = self.0.join("cluster.toml");
        let text = format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n\
             [dataflow]\nprocesses = [\"127.0.0.1:0\"]\n{broadcaster}"
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One broadcaster process, killed when dropped. Its log goes to `<scratch>/<name>.log`.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn start(scratch: &Scratch, config: &Path, name: &str, args: &[&str]) -> Self {
        let log = std::fs::File::create(scratch.0.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_emostream-broadcaster"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            name: name.into(),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Sends `signal` (SIGKILL: dies on the spot; SIGTERM: leaves cleanly) and waits for the exit.
    pub fn signal(&mut self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
        self.child.wait().unwrap();
    }

    /// Resident memory now, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection: the status and the body, or `None` if nothing
/// listens there.
pub async fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    timeout(DEADLINE, conn.read_to_string(&mut response))
        .await
        .expect("an HTTP answer")
        .ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Polls `probe` until it yields, failing the test after `deadline`.
pub async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let until = Instant::now() + deadline;
    let mut poll = tokio::time::interval(Duration::from_millis(25));
    loop {
        poll.tick().await;
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
    }
}

/// The value of one Prometheus sample line of `metrics`, e.g. `name{tier="subscriber"}`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}
