//! Deterministic crash points for fault tests. `EMOSTREAM_CRASH_AT=<point>`, read once when the
//! process starts, makes it crash the first time a worker reaches that point: a panic, which
//! the binary turns into an abort, as abrupt as a SIGKILL. With `EMOSTREAM_CRASH_MARKER=<file>`
//! too, only the first process to reach it crashes, creating the file, so a cluster restarted by
//! its supervisor (with the same environment) runs on. Unset, every point is inert. Compiled into
//! every build: the fault tests drive the binaries as they ship.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Every crash point, by the name `EMOSTREAM_CRASH_AT` takes.
pub const POINTS: [&str; 3] = [
    // Worker 0 is about to send a progress record.
    "before-progress-write",
    // A progress record is acknowledged; the gate has not let the next epoch out yet.
    "after-progress-write",
    // The first frame of an epoch with several is acknowledged; the others are not sent.
    "between-frames",
];

struct Armed {
    point: &'static str,
    marker: Option<PathBuf>,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Reads `EMOSTREAM_CRASH_AT` and `EMOSTREAM_CRASH_MARKER`; an unknown point is an error. Call
/// once, before the workers start; later calls change nothing.
pub fn arm_from_env() -> Result<Option<&'static str>, String> {
    let armed = match std::env::var("EMOSTREAM_CRASH_AT") {
        Err(_) => None,
        Ok(name) => {
            let point = POINTS.iter().find(|p| **p == name).ok_or_else(|| {
                format!("EMOSTREAM_CRASH_AT={name}: not a crash point (one of {POINTS:?})")
            })?;
            Some(Armed {
                point,
                marker: std::env::var_os("EMOSTREAM_CRASH_MARKER").map(PathBuf::from),
            })
        }
    };
    Ok(ARMED.get_or_init(|| armed).as_ref().map(|a| a.point))
}

/// Whether reaching `point` now crashes the process (see the module's header).
pub fn armed(point: &str) -> bool {
    let Some(Some(armed)) = ARMED.get() else {
        return false;
    };
    if armed.point != point {
        return false;
    }
    match &armed.marker {
        None => true,
        // Only one process ever wins the creation.
        Some(marker) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok(),
    }
}

/// Crashes the process if `point` is armed.
pub fn reached(point: &str) {
    if armed(point) {
        panic!("crash point {point} reached (EMOSTREAM_CRASH_AT)");
    }
}
