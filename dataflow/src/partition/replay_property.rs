//! The replay rule as a property, over random logs: a run reads part of each partition's log
//! (a crash), advancing its floors on record times and on "read to the end" claims at random
//! points, and is told at random that the log ended before it did (a high watermark briefly
//! behind). Its marks give a progress record for every epoch E they cover (worker 0's ledger);
//! each of them is resumed from, and so is a chain of restarts, each from the newest record
//! before it crashed (or the same one again when it crashed before writing any).
//!
//! Each record's floor schedule reaches k epochs past it (1 to `IN_FLIGHT` + 2, at random), as
//! far as the marks cover.
//!
//! What must hold: a restart from the record for E counts each epoch of its schedule, E + 1 …
//! E + j (which may all have been published), with exactly the taps the run that wrote the record
//! counted in it; no run counts a tap into an epoch below its first; and over the published
//! epochs of the chain (each run's from its first epoch to the last of the schedule of the record
//! the next run resumes from, the last run's from its first on) every tap of every log is counted
//! exactly once. A record that does not
//! name every partition of the events topic (partitions added) is refused, not replayed.

use super::{Assignment, Partition};
use crate::progress::{MarkLedger, IN_FLIGHT};
use crate::recovery;
use emostream_protocol::progress::{Counting, Progress};
use emostream_testkit::Rng;
use std::collections::BTreeMap;

const W: u64 = 1000;
const LATENESS: u64 = 300;

/// One record: its offset and timestamp, and each tap's own epoch.
#[derive(Debug, Clone)]
struct Record {
    offset: i64,
    timestamp_ms: u64,
    taps: Vec<u64>,
}

/// A tap: (partition, offset, index in its record).
type Tap = (i32, i64, usize);

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

/// Mostly in time order, a batch now and then spanning two epochs, and now and then a record
/// seconds behind (a straggling producer).
fn random_log(rng: &mut Rng) -> Vec<Record> {
    let length = 1 + below(rng, 40) as i64;
    let mut now_ms = 3 * W + below(rng, W);
    (0..length)
        .map(|offset| {
            now_ms += below(rng, 700);
            let timestamp_ms = if below(rng, 10) == 0 {
                now_ms.saturating_sub(below(rng, 3 * W))
            } else {
                now_ms
            };
            let own = timestamp_ms / W;
            let taps = (0..1 + below(rng, 3))
                .map(|_| {
                    if below(rng, 4) == 0 {
                        own.saturating_sub(1)
                    } else {
                        own
                    }
                })
                .collect();
            Record {
                offset,
                timestamp_ms,
                taps,
            }
        })
        .collect()
}

/// One run over `partitions`, reading each from its position up to `limit` records (all of it
/// with `None`). Returns every tap's assignment and the marks, as worker 0 gathers them.
fn run(
    logs: &[Vec<Record>],
    mut partitions: Vec<Partition>,
    limit: Option<usize>,
    rng: &mut Rng,
) -> (BTreeMap<Tap, Assignment>, MarkLedger) {
    let mut assigned = BTreeMap::new();
    let mut ledger = MarkLedger::default();
    for (log, p) in logs.iter().zip(partitions.iter_mut()) {
        let from = p.position() as usize;
        let to = limit.map_or(log.len(), |n| (from + n).min(log.len()));
        let mut newest_ms = 0;
        for record in &log[from..to] {
            p.begin_record(record.offset);
            for (i, own) in record.taps.iter().enumerate() {
                assigned.insert((p.id(), record.offset, i), p.assign(record.offset, *own));
            }
            p.end_record(record.offset, record.timestamp_ms);
            newest_ms = newest_ms.max(record.timestamp_ms);
            match below(rng, 8) {
                0..=3 => p.advance(LATENESS, W),
                // The probe's claim that everything before `asked_ms` was read (records further
                // on were "appended later", some of them now late).
                4 => {
                    p.end_reported(p.position(), newest_ms + below(rng, 2 * W));
                    p.advance(LATENESS, W);
                }
                // An end of log at or below the true one.
                5 => p.reached_end(),
                _ => {}
            }
        }
        if to == log.len() {
            p.reached_end();
            p.advance(LATENESS, W);
        }
        for mark in p.take_marks() {
            ledger.add(mark);
        }
    }
    (assigned, ledger)
}

fn epoch_taps(assigned: &BTreeMap<Tap, Assignment>, epoch: u64) -> Vec<Tap> {
    assigned
        .iter()
        .filter(|(_, a)| matches!(a, Assignment::Count { epoch: e, .. } if *e == epoch))
        .map(|(tap, _)| *tap)
        .collect()
}

fn resume(logs: &[Vec<Record>], progress: &Progress) -> Vec<Partition> {
    (0..logs.len() as i32)
        .map(|p| {
            Partition::resume(
                progress.epoch,
                progress
                    .partition(p)
                    .expect("a record names every partition"),
            )
        })
        .collect()
}

#[test]
fn replay_is_exact_over_random_logs_every_epoch_and_chained_restarts() {
    let mut records_checked = 0;
    for seed in 0..300 {
        let mut rng = Rng::seeded(seed);
        let partitions = 1 + below(&mut rng, 3) as u32;
        let counting = Counting {
            window_ms: W,
            divisor: 1000,
            events_partitions: partitions,
        };
        let logs: Vec<Vec<Record>> = (0..partitions).map(|_| random_log(&mut rng)).collect();
        let fresh = || (0..partitions as i32).map(Partition::fresh).collect();

        // Every epoch: a restart from each record the first run's marks give, with a schedule
        // of every length they cover.
        let limit = Some(below(&mut rng, 45) as usize);
        let (first, ledger) = run(&logs, fresh(), limit, &mut rng);
        for epoch in 0..100 {
            for k in 1..=IN_FLIGHT + 2 {
                let Some(progress) = ledger.progress(epoch, epoch + k, counting) else {
                    break;
                };
                records_checked += 1;
                assert_eq!(progress.last_reproducible(), epoch + k);
                let (again, _) = run(&logs, resume(&logs, &progress), None, &mut rng);
                for e in epoch + 1..=epoch + k {
                    assert_eq!(
                        epoch_taps(&again, e),
                        epoch_taps(&first, e),
                        "seed {seed}: epoch {e} after a restart from {epoch} with {k} in flight",
                    );
                }
                for (tap, a) in &again {
                    if let Assignment::Count { epoch: e, .. } = a {
                        assert!(*e > epoch, "seed {seed}: {tap:?} counted in {e} again");
                    }
                }
            }
        }

        // A chain of restarts, each crashing after a random number of records.
        let mut published: BTreeMap<Tap, u64> = BTreeMap::new();
        let mut record: Option<Progress> = None;
        let mut first_epoch = 0;
        // The last epoch the record resumed from reproduces (a fresh start: none before 0).
        let mut reproducible = 0;
        let restarts = 1 + below(&mut rng, 4);
        for k in 0..=restarts {
            let last = k == restarts;
            let start = match &record {
                Some(progress) => resume(&logs, progress),
                None => fresh(),
            };
            let limit = (!last).then(|| below(&mut rng, 30) as usize);
            let (assigned, ledger) = run(&logs, start, limit, &mut rng);
            // The newest record this run wrote, if any (else the next resumes from the same),
            // its schedule as long as a random k and the marks allow.
            let in_flight = 1 + below(&mut rng, IN_FLIGHT + 2);
            // The writer's first record is for the last epoch the resumed one lets out or later.
            let next = (reproducible..100).rev().find_map(|e| {
                (1..=in_flight)
                    .rev()
                    .find_map(|k| ledger.progress(e, e + k, counting))
            });
            // What this run may have published: up to the last epoch the record it resumed from
            // reproduces, and on to the last of its own newest record's schedule.
            let through = match (&next, last) {
                (_, true) => u64::MAX,
                (Some(progress), false) => progress.last_reproducible(),
                (None, false) => reproducible,
            };
            for (tap, a) in &assigned {
                let Assignment::Count { epoch, .. } = *a else {
                    continue;
                };
                assert!(
                    epoch >= first_epoch,
                    "seed {seed}, run {k}: {tap:?} counted in {epoch}, below {first_epoch}"
                );
                if epoch > through {
                    continue; // not published by this run: the next counts it again
                }
                if let Some(before) = published.insert(*tap, epoch) {
                    // Only the epochs of the record's schedule may go out twice, and identically.
                    assert!(
                        before == epoch && epoch <= reproducible,
                        "seed {seed}, run {k}: {tap:?} published in {before} and in {epoch}"
                    );
                }
            }
            if let Some(progress) = next.filter(|_| !last) {
                first_epoch = progress.epoch + 1;
                reproducible = progress.last_reproducible();
                record = Some(progress);
            }
        }
        let taps: usize = logs
            .iter()
            .flat_map(|log| log.iter().map(|r| r.taps.len()))
            .sum();
        assert_eq!(
            published.len(),
            taps,
            "seed {seed}: every tap published exactly once"
        );

        // Partitions added since the record: refused, never replayed.
        if let Some(progress) = ledger.progress(0, 1, counting).or(record) {
            let added = Counting {
                events_partitions: partitions + 1,
                ..counting
            };
            assert!(recovery::check(&progress, added, "emoji-progress").is_err());
        }
    }
    assert!(
        records_checked > 300,
        "the logs gave {records_checked} records"
    );
}
