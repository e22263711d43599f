//! Forgetting idle streams: what the stage's arrangements hold, and the setting that lets them
//! give it back.
//!
//! A stream's state lives in the differential arrangements of the stage (its emojis for the
//! top-k, its tallies, its taps in the ranking, and the operators' outputs). Once every epoch of
//! it has left the window, each of those holds its `+1` and `-1` and nothing else: the
//! collection no longer has the stream, and its frames said so (an empty trending list and a
//! sentiment without taps at the epoch the window emptied). What remains is bookkeeping: the
//! updates cancel only when the batches holding them are merged, and differential merges as new
//! updates arrive and pay for the work — so after a burst of streams goes quiet, merges in
//! progress can stall with the cancelled updates still in them (10,000 streams for 20 epochs on 2
//! workers: in one run 86,867 updates were still held at the epoch every window had emptied).
//!
//! [`configure`] makes each arrangement keep merging on its own until it is one batch, so a
//! stream is forgotten once its window has emptied: the window's length is the dataflow's idle
//! time. Forgetting changes no frame: merging only drops updates that sum to nothing, so the
//! collections, and the frames read from them, are the same with it as without it.
//! [`count_held`] counts the updates the arrangements hold, for the metric and the tests.
//!
//! Freed is not yet given back: glibc keeps what the workers' threads freed in their arenas (the
//! stage alone on 2 workers, 10,000 streams for 10 epochs, debug build: 81–88 MiB resident with
//! the arrangements empty, 12–13 MiB after `malloc_trim(0)`, which took 7 ms).
//! [`trim_after_forgetting`] trims once the stage has let go of most of what it held.

use crate::metrics::Metrics;
use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use std::sync::Arc;
use std::time::Duration;
use timely::worker::Worker;

/// Updates' worth of merging per activation of an arrangement that is not yet one batch, when
/// nothing new arrived: a small slice, so the epochs' path is not held up behind a long merge;
/// the operator is activated again until it is done.
pub const IDLE_MERGE_EFFORT: isize = 4096;

/// Sets differential's idle merging on a worker configuration: every arrangement built on it
/// merges its batches down to one, and so drops the updates that cancel, without waiting for new
/// updates to pay for the work.
pub fn configure(worker: &mut timely::WorkerConfig) {
    differential_dataflow::configure(
        worker,
        &differential_dataflow::Config {
            idle_merge_effort: Some(IDLE_MERGE_EFFORT),
        },
    );
}

/// Counts, into `metrics`' `trend_updates_held`, the updates held by the arrangements built on
/// this worker from now on. Differential reports every batch formed, merged and dropped; their
/// lengths balance to what the traces hold. Call it before the dataflow is built: an operator
/// takes its logger when it is built. The cost is one addition per batch, not per update.
pub fn count_held(worker: &mut Worker, metrics: Arc<Metrics>) {
    let Some(mut register) = worker.log_register() else {
        return;
    };
    register.insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, events| {
        let mut change: i64 = 0;
        for (_, event) in events.iter().flatten() {
            change += match event {
                DifferentialEvent::Batch(b) => b.length as i64,
                DifferentialEvent::Merge(m) => match m.complete {
                    Some(merged) => merged as i64 - m.length1 as i64 - m.length2 as i64,
                    None => 0,
                },
                DifferentialEvent::Drop(d) => -(d.length as i64),
                _ => 0,
            };
        }
        if change != 0 {
            metrics.trend_updates(change);
        }
    });
}

/// How often the trim thread looks at what the stage holds.
const TRIM_CHECK: Duration = Duration::from_secs(5);

/// Below this many updates held at the peak, what was freed is not worth a trim (a few MiB at
/// most: about 150 bytes per update, strings included).
const TRIM_FROM_PEAK: i64 = 20_000;

/// Whether to give freed memory back now: the stage held at least [`TRIM_FROM_PEAK`] updates
/// since the last trim and has let go of at least half of them (streams forgotten), or it has let
/// go of everything it held since the last trim, however little: the last trim may have come
/// halfway down, and what was freed after it would otherwise stay with the allocator.
pub fn worth_trimming(peak: i64, held: i64) -> bool {
    (peak >= TRIM_FROM_PEAK && held <= peak / 2) || (peak > 0 && held == 0)
}

/// Starts the thread that hands the memory of forgotten streams back to the system: every
/// [`TRIM_CHECK`] it reads `trend_updates_held`, and when [`worth_trimming`] says so, calls
/// `malloc_trim(0)` (milliseconds, on this thread: the workers only wait for an arena lock
/// while it trims that arena), and once more at the next check: the other stages (the last
/// epochs' counts and frames, the consumer's buffers) let go of theirs around the trends stage's
/// last forgetting, after the first trim. In steady state, live or idle, it never trims.
pub fn trim_after_forgetting(metrics: Arc<Metrics>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("trim".into())
        .spawn(move || {
            let mut peak = 0;
            let mut trim_next_check = false;
            loop {
                std::thread::sleep(TRIM_CHECK);
                let held = metrics.trend_updates_held();
                peak = peak.max(held);
                if std::mem::take(&mut trim_next_check) {
                    trim();
                }
                if worth_trimming(peak, held) {
                    trim_next_check = true;
                    let before = resident_kib();
                    trim();
                    tracing::info!(
                        peak,
                        held,
                        resident_kib_before = before,
                        resident_kib_after = resident_kib(),
                        "streams forgotten: freed memory given back to the system"
                    );
                    peak = held;
                }
            }
        })?;
    Ok(())
}

/// This process's resident memory (`VmRSS`), for the log; 0 where /proc cannot say.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Gives the pages glibc holds free in every arena back to the system (other allocators: no-op).
fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::worth_trimming;

    #[test]
    fn trims_once_most_of_a_large_peak_is_forgotten() {
        assert!(!worth_trimming(0, 0), "an idle stage");
        assert!(!worth_trimming(19_999, 1), "a small peak, not all let go");
        assert!(
            !worth_trimming(200_000, 100_001),
            "still more than half held"
        );
        assert!(worth_trimming(200_000, 100_000));
        assert!(worth_trimming(20_000, 0));
    }

    #[test]
    fn trims_again_once_the_rest_is_forgotten() {
        // The first trim came at 15,000 of a 30,000 peak, which becomes the next peak.
        assert!(worth_trimming(30_000, 15_000));
        assert!(!worth_trimming(15_000, 10_000), "a small peak, still held");
        assert!(worth_trimming(15_000, 0), "everything since let go");
        assert!(!worth_trimming(0, 0), "nothing since the last trim");
    }
}
