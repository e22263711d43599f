//! The development broker of one test: started by `scripts/broker.sh` on a free port with its
//! data in the test's folder, stopped on drop. `start` after `stop` (or `kill`) resumes on the
//! same data.

use crate::{free_port, repo_root};
use emostream_protocol::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Broker {
    pub port: u16,
    pub data: PathBuf,
    config_path: PathBuf,
    /// Extra `scripts/broker.sh start` flags (e.g. `--cert`, `--key`).
    start_flags: Vec<String>,
}

impl Broker {
    /// Starts a broker for `config_path`, whose `[kafka] brokers` must be `127.0.0.1:port`.
    pub fn start(port: u16, data: &Path, config_path: &Path, start_flags: &[&str]) -> Broker {
        let broker = Broker {
            port,
            data: data.to_path_buf(),
            config_path: config_path.to_path_buf(),
            start_flags: start_flags.iter().map(|f| f.to_string()).collect(),
        };
        broker.run("start");
        broker
    }

    /// A broker with a minimal configuration of its own in `dir` (`extra` is appended to it):
    /// for tests of the broker contract rather than of the whole system.
    pub fn standalone(dir: &Path, extra: &str, start_flags: &[&str]) -> (Broker, Config) {
        std::fs::create_dir_all(dir).expect("a scratch folder");
        let port = free_port();
        let text = format!(
            "[kafka]\nbrokers = \"127.0.0.1:{port}\"\n{extra}\n[gateway]\nlisten = \
             \"127.0.0.1:{}\"\n[dataflow]\nprocesses = [\"127.0.0.1:2101\"]\n[broadcaster]\n\
             main = \"127.0.0.1:9000\"\nclusters = []\n",
            free_port()
        );
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, &text).expect("writing cluster.toml");
        let config = Config::from_toml(&text).expect("a valid test configuration");
        (
            Broker::start(port, &dir.join("broker"), &config_path, start_flags),
            config,
        )
    }

    /// `scripts/broker.sh ACTION` for this broker: `start`, `stop` (SIGTERM, then SIGKILL if it
    /// lingers) or `kill` (SIGKILL).
    pub fn run(&self, action: &str) {
        let status = self
            .script(action)
            .status()
            .expect("scripts/broker.sh runs");
        assert!(status.success(), "scripts/broker.sh {action} failed");
    }

    fn script(&self, action: &str) -> Command {
        let mut command = Command::new(repo_root().join("scripts/broker.sh"));
        command
            // The script reads the configuration with this build's emostream-config.
            .env("EMOSTREAM_BIN_DIR", crate::bin_dir())
            .args([action, "--port", &self.port.to_string(), "--data"])
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config_path);
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

    /// Stops the broker without asserting anything: for `Drop`, which may run while a test
    /// panics. Stopping a stopped broker does nothing.
    pub fn stop_quietly(&self) {
        let _ = self.script("stop").status();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_quietly();
    }
}
