//! The timely cluster as `scripts/run_workers.sh` runs it: the supervisor's command line and
//! the dataflow processes it started.

use crate::{bin_dir, repo_root};
use std::path::Path;
use std::process::Command;

/// `scripts/run_workers.sh -n PROCESSES -c CONFIG`, running the dataflow binary built next to
/// the running test. Add `-p i,j` to run only some of the processes (one supervisor per host).
pub fn command(processes: usize, config: &Path) -> Command {
    let mut command = Command::new(repo_root().join("scripts/run_workers.sh"));
    command
        .args(["-n", &processes.to_string(), "-c"])
        .arg(config)
        .env("EMOSTREAM_BIN_DIR", bin_dir());
    command
}

/// The running dataflow processes started with `config` (children of the supervisors; the
/// configuration path tells one test's cluster from another's).
pub fn pids(config: &Path) -> Vec<u32> {
    crate::procfs::pids_with(&["emostream-dataflow", &config.to_string_lossy()])
}
