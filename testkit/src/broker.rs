//! The development broker of one test or benchmark: started by `scripts/broker.sh` on a free
//! port with its data in the caller's folder, stopped on drop. `start_again` after `stop` (or
//! `kill`) resumes on the same data.

use crate::{bin_dir, free_port, procfs, repo_root};
use emostream_protocol::Config;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Broker {
    pub port: u16,
    data: PathBuf,
    config_path: PathBuf,
    /// Extra `scripts/broker.sh start` flags (e.g. `--cert`, `--key`).
    start_flags: Vec<String>,
}

impl Broker {
    /// Starts a broker on a free port for the configuration `config(address)` returns (its
    /// `[kafka] brokers` must be `address`), written to `dir/cluster.toml`; its data goes to
    /// `dir/broker`. The script creates the topics that configuration names.
    pub fn start(dir: &Path, config: impl FnOnce(&str) -> String) -> (Broker, Config) {
        Broker::start_with_flags(dir, &[], config)
    }

    /// [`Broker::start`] with extra `scripts/broker.sh start` flags (`--cert`, `--key`).
    pub fn start_with_flags(
        dir: &Path,
        start_flags: &[&str],
        config: impl FnOnce(&str) -> String,
    ) -> (Broker, Config) {
        let port = free_port();
        let text = config(&format!("127.0.0.1:{port}"));
        let parsed = Config::from_toml(&text).expect("the test's configuration is valid");
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, &text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let broker = Broker {
            port,
            data: dir.join("broker"),
            config_path,
            start_flags: start_flags.iter().map(|f| f.to_string()).collect(),
        };
        broker.run("start");
        (broker, parsed)
    }

    /// `127.0.0.1:port`, the `[kafka] brokers` of its configuration.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The configuration file the broker was started for (the tiers can read it too).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Creates the topics another configuration names (same broker address), starting the
    /// broker first if it is not running.
    pub fn create_topics(&self, config: &Path) {
        let status = self
            .script("start", config)
            .status()
            .expect("scripts/broker.sh runs");
        assert!(
            status.success(),
            "scripts/broker.sh start --config {} failed",
            config.display()
        );
    }

    /// SIGTERM, then SIGKILL if it lingers.
    pub fn stop(&self) {
        self.run("stop");
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&self) {
        self.run("kill");
    }

    /// Starts it again on the same port and data, after `stop` or `kill`.
    pub fn start_again(&self) {
        self.run("start");
    }

    /// `scripts/broker.sh ACTION` for this broker: `start`, `stop` or `kill`.
    pub fn run(&self, action: &str) {
        let status = self
            .script(action, &self.config_path)
            .status()
            .expect("scripts/broker.sh runs");
        assert!(status.success(), "scripts/broker.sh {action} failed");
    }

    fn script(&self, action: &str, config: &Path) -> Command {
        let mut command = Command::new(repo_root().join("scripts/broker.sh"));
        command
            // The script reads the configuration with this build's emostream-config.
            .env("EMOSTREAM_BIN_DIR", bin_dir())
            .args([action, "--port", &self.port.to_string(), "--data"])
            .arg(&self.data)
            .arg("--config")
            .arg(config);
        // What the script says goes to stderr: a benchmark's stdout is its report.
        if let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() {
            command.stdout(Stdio::from(stderr));
        }
        if action == "start" {
            command.args(&self.start_flags);
        }
        command
    }

    /// The broker's process id, from the script's pid file.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("broker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// CPU seconds the broker has used so far, its storage included: Nisshi, and the PostgreSQL
    /// server it stores in (the server and every backend, exited ones too) when it uses one.
    pub fn cpu_secs(&self) -> f64 {
        let postmaster = std::fs::read_to_string(self.data.join("pg").join("postmaster.pid"))
            .ok()
            .and_then(|pidfile| pidfile.lines().next()?.trim().parse::<u32>().ok());
        self.pid().map_or(0.0, procfs::cpu_secs)
            + postmaster.map_or(0.0, procfs::cpu_secs_with_children)
    }

    /// Stops the broker without asserting anything: for `Drop`, which may run while a test
    /// panics. Stopping a stopped broker does nothing.
    pub fn stop_quietly(&self) {
        let _ = self.script("stop", &self.config_path).status();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_quietly();
    }
}

/// The smallest configuration every tier accepts around a broker at `address`, with
/// `gateway` appended to its `[gateway]` section, which comes last: tables such as
/// `[kafka.client]` may follow it.
pub fn minimal_config(address: &str, gateway: &str) -> String {
    minimal_config_with(address, "", gateway)
}

/// [`minimal_config`] with `kafka` lines in its `[kafka]` section too (other topic names or
/// partition counts).
pub fn minimal_config_with(address: &str, kafka: &str, gateway: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{address}\"\n{kafka}\n[dataflow]\nprocesses = [\"127.0.0.1:2101\"]\n\
         [broadcaster]\nmain = \"127.0.0.1:9000\"\nclusters = []\n[gateway]\nlisten = \
         \"127.0.0.1:{}\"\n{gateway}\n",
        free_port()
    )
}
