//! Deterministic crash points for fault tests. `EMOSTREAM_CRASH_AT=<point>`, read once when the
//! process starts, makes it crash the first time a worker reaches that point: a panic, which
//! the binary turns into an abort, as abrupt as a SIGKILL. With `EMOSTREAM_CRASH_MARKER=<file>`
//! too, only the first process to reach it crashes, creating `<file>.0`, so a cluster restarted by
//! its supervisor (with the same environment) runs on. A list, `EMOSTREAM_CRASH_AT=a,b`, crashes
//! at each point in turn, once each (markers `<file>.0`, `<file>.1`, …): crash `k` waits until
//! crash `k − 1` has happened, so `after-progress-write,during-replay` crashes in the replay that
//! follows the first crash, and `x,x` crashes at `x` twice in a row. Unset, every point is inert.
//! Compiled into every build: the fault tests drive the binaries as they ship.
//!
//! Holds, for tests that must act while the protocol stands at a point:
//! `EMOSTREAM_HOLD_AT=<point>` with `EMOSTREAM_HOLD_FILE=<file>` holds at that point (one of
//! [`HOLDS`]) while `<file>` exists; it creates `<file>.held` when it first holds. A list,
//! `EMOSTREAM_HOLD_AT=a,b`, holds at each point `p` while `<file>.p` exists (creating
//! `<file>.p.held`), so a test can hold the protocol at one point and then at another. The
//! operator does not block: it returns and looks again at its next activation, so the rest of the
//! worker runs on.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Every crash point, by the name `EMOSTREAM_CRASH_AT` takes.
pub const POINTS: [&str; 4] = [
    // Worker 0 is about to send a progress record.
    "before-progress-write",
    // A progress record is acknowledged; the gate has not let the next epoch out yet.
    "after-progress-write",
    // The first frame of an epoch with several is acknowledged; the others are not sent.
    "between-frames",
    // A restarted source has read a record below its partition's hold offset: the replay of the
    // epoch after the progress record is under way.
    "during-replay",
];

struct Armed {
    points: Vec<&'static str>,
    marker: Option<PathBuf>,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Reads `EMOSTREAM_CRASH_AT` and `EMOSTREAM_CRASH_MARKER`; an unknown point, or a list without
/// a marker, is an error. Call once, before the workers start; later calls change nothing.
/// Returns the points armed.
pub fn arm_from_env() -> Result<Option<String>, String> {
    let armed = match std::env::var("EMOSTREAM_CRASH_AT") {
        Err(_) => None,
        Ok(names) => {
            let points = names
                .split(',')
                .map(|name| {
                    POINTS.iter().copied().find(|p| *p == name).ok_or_else(|| {
                        format!("EMOSTREAM_CRASH_AT={names}: {name} is not a crash point (one of {POINTS:?})")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let marker = std::env::var_os("EMOSTREAM_CRASH_MARKER").map(PathBuf::from);
            if points.len() > 1 && marker.is_none() {
                return Err(format!(
                    "EMOSTREAM_CRASH_AT={names}: a list needs EMOSTREAM_CRASH_MARKER, which counts the crashes"
                ));
            }
            Some(Armed { points, marker })
        }
    };
    Ok(ARMED
        .get_or_init(|| armed)
        .as_ref()
        .map(|a| a.points.join(",")))
}

fn nth_marker(marker: &Path, k: usize) -> PathBuf {
    let mut name = marker.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// Whether reaching `point` now crashes the process (see the module's header).
pub fn armed(point: &str) -> bool {
    let Some(Some(armed)) = ARMED.get() else {
        return false;
    };
    let Some(marker) = &armed.marker else {
        return armed.points[0] == point;
    };
    // The crashes so far; the next one is due at its point.
    let done = (0..armed.points.len())
        .take_while(|k| nth_marker(marker, *k).exists())
        .count();
    armed.points.get(done) == Some(&point)
        // Only one process ever wins the creation.
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(nth_marker(marker, done))
            .is_ok()
}

/// Crashes the process if `point` is armed.
pub fn reached(point: &str) {
    if armed(point) {
        panic!("crash point {point} reached (EMOSTREAM_CRASH_AT)");
    }
}

/// Every hold point, by the name `EMOSTREAM_HOLD_AT` takes.
pub const HOLDS: [&str; 3] = [
    // The progress writer, before sending a record (as the crash point).
    "before-progress-write",
    // The progress writer, once its record is acknowledged, before the chain check (as the crash
    // point): the gate stays closed.
    "after-progress-write",
    // A publisher that sent two epochs of the floor schedule the gate opened last sends no more
    // while at least two more are let out: the schedule is half published.
    "mid-schedule",
];

struct Hold {
    /// Each point held, with the file that holds it while it exists.
    points: Vec<(&'static str, PathBuf)>,
}

static HOLD: OnceLock<Option<Hold>> = OnceLock::new();

/// Reads `EMOSTREAM_HOLD_AT` and `EMOSTREAM_HOLD_FILE`; an unknown point, or a point without a
/// file, is an error. Call once, before the workers start. Returns the points armed.
pub fn hold_from_env() -> Result<Option<String>, String> {
    let hold = match std::env::var("EMOSTREAM_HOLD_AT") {
        Err(_) => None,
        Ok(names) => {
            let file = std::env::var_os("EMOSTREAM_HOLD_FILE")
                .map(PathBuf::from)
                .ok_or_else(|| format!("EMOSTREAM_HOLD_AT={names} needs EMOSTREAM_HOLD_FILE"))?;
            let list = names.contains(',');
            let points = names
                .split(',')
                .map(|name| {
                    let point = HOLDS.iter().copied().find(|p| *p == name).ok_or_else(|| {
                        format!("EMOSTREAM_HOLD_AT={names}: {name} is not a hold point (one of {HOLDS:?})")
                    })?;
                    let file = if list {
                        let mut file = file.as_os_str().to_owned();
                        file.push(format!(".{point}"));
                        PathBuf::from(file)
                    } else {
                        file.clone()
                    };
                    Ok((point, file))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Some(Hold { points })
        }
    };
    Ok(HOLD.get_or_init(|| hold).as_ref().map(|h| {
        let names: Vec<&str> = h.points.iter().map(|(p, _)| *p).collect();
        names.join(",")
    }))
}

/// Whether the protocol holds at `point` now (see the module's header).
pub fn held(point: &str) -> bool {
    let Some(Some(hold)) = HOLD.get() else {
        return false;
    };
    let Some((_, file)) = hold.points.iter().find(|(p, _)| *p == point) else {
        return false;
    };
    if !file.exists() {
        return false;
    }
    let mut marker = file.as_os_str().to_owned();
    marker.push(".held");
    // Only the first look creates it; a failure shows as a test waiting in vain.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(PathBuf::from(marker));
    true
}
