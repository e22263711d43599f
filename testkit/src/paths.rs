//! Where things are: the repository (for its scripts and `cluster.toml`) and the workspace
//! binaries built next to the running test or benchmark.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

/// `target/<profile>`, where cargo put the running executable (a test or bench as
/// `…/deps/name-hash`, a binary such as `emostream-bench-e2e` straight in it) and, built with the
/// same profile, the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the executable knows its own path");
    let dir = exe.parent().expect("an executable lives in a folder");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent()
            .expect("tests and benches run from target/<profile>/deps")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A binary of this workspace, from the target directory the test runs from.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; \
         scripts/test.sh does)",
        path.display()
    );
    path
}
