//! A temporary folder of one test or benchmark run: configuration, logs, broker data.

use crate::free_port;
use std::path::{Path, PathBuf};

/// A fresh folder under the system's temporary directory, removed on drop, except when the
/// thread is panicking (a failed test's logs and broker data are what one looks at next) or
/// `EMOSTREAM_KEEP_LOGS` is set (to look at a passing run's timings).
pub struct Scratch(PathBuf);

impl Scratch {
    /// `$TMPDIR/emostream-{name}-{pid}-{n}`: unique across processes and within one.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "emostream-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("EMOSTREAM_KEEP_LOGS").is_some() {
            eprintln!("logs and data kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
