//! A process a test or benchmark starts: its output in a log file, signals, a stop with a
//! deadline, and killed on drop however the test ends.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    name: String,
    child: Child,
    /// Set once the exit status has been collected, so drop does not signal a reused pid.
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr written to `log`. `RUST_LOG`
    /// is the caller's, or this process's, or `info`.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> Process {
        let file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
            command.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a second handle on the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
            exited: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`libc::SIGTERM`, `libc::SIGKILL`, …) without waiting.
    pub fn signal(&self, signal: i32) {
        if self.exited.is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped (`exited` is unset), so
        // its pid cannot have been reused.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("waitpid on our own child");
        }
        self.exited
    }

    /// Waits for the exit until `deadline`; past it, SIGKILL and `None` (it did not exit by
    /// itself).
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                eprintln!("{} did not exit in time; killing it", self.name);
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then up to `grace` for a clean exit (SIGKILL after it).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_until(Instant::now() + grace)
    }

    /// Sends `signal` and waits however long the exit takes (SIGKILL: at once).
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        self.signal(signal);
        let status = self.child.wait().expect("waitpid on our own child");
        self.exited = Some(status);
        status
    }

    /// Resident memory now, in KiB; `None` once the process has exited.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::procfs::rss_kib(self.pid())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
