//! The figures, from three records of one run, all on this machine's wall clock (Unix ms):
//! - each acknowledged tap request: when it was sent, how many taps it carried, the epoch the
//!   gateway's answer named;
//! - each epoch of the bench stream: when this tool's own consumer read its frame off
//!   `emoji-epochs` ("published"), with the frame's count;
//! - each viewer's read of each epoch frame (the swarms' `--epoch-reads`), with the count it saw.
//!
//! Tap → screen is taken over every (tap, viewer) pair of an epoch: the epoch's taps' waits
//! (send → epoch end) convolved with its viewers' reads (epoch end → read), in 1 ms buckets, so
//! no pair is left out and none is sampled.

pub use emostream_e2e::taps::Tap;
use emostream_testkit::bucket_percentile;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The bench stream's frame of one epoch as the tool's consumer read it off `emoji-epochs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    pub at_ms: u64,
    pub total: u64,
    pub late: u64,
}

/// A swarm's `--epoch-reads` file: per stream, per epoch.
#[derive(Debug, Default, Deserialize)]
pub struct EpochReads {
    pub streams: BTreeMap<String, BTreeMap<u64, EpochRead>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct EpochRead {
    pub end_ms: u64,
    pub read_ms: Vec<u64>,
    /// (total, late, viewer-reads that saw them).
    pub counts: Vec<(u64, u64, u64)>,
}

impl EpochReads {
    pub fn add(&mut self, other: EpochReads) {
        for (stream, epochs) in other.streams {
            let mine = self.streams.entry(stream).or_default();
            for (epoch, read) in epochs {
                add_read(mine.entry(epoch).or_default(), read);
            }
        }
    }
}

fn add_read(into: &mut EpochRead, read: EpochRead) {
    into.end_ms = read.end_ms;
    into.read_ms.extend(read.read_ms);
    for (total, late, n) in read.counts {
        match into.counts.iter_mut().find(|c| (c.0, c.1) == (total, late)) {
            Some(c) => c.2 += n,
            None => into.counts.push((total, late, n)),
        }
    }
}

/// Counts per 1 ms bucket.
#[derive(Debug, Default, Clone)]
pub struct Histogram(Vec<u64>);

impl Histogram {
    pub fn add(&mut self, ms: u64, n: u64) {
        let ms = ms as usize;
        if self.0.len() <= ms {
            self.0.resize(ms + 1, 0);
        }
        self.0[ms] += n;
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn percentile(&self, q: f64) -> Option<u64> {
        bucket_percentile(&self.0, q)
    }

    /// Every pair of a sample of `self` and one of `other`, each pair's sum counted once.
    fn convolve_into(&self, other: &Histogram, into: &mut Histogram) {
        let nonzero = |h: &Histogram| -> Vec<(u64, u64)> {
            (h.0.iter().enumerate())
                .filter(|(_, n)| **n > 0)
                .map(|(ms, n)| (ms as u64, *n))
                .collect()
        };
        let b = nonzero(other);
        for (a_ms, a_n) in nonzero(self) {
            for &(b_ms, b_n) in &b {
                into.add(a_ms + b_ms, a_n * b_n);
            }
        }
    }

    /// `p50 / p99 / max` in ms, or `-` when empty.
    pub fn summary(&self) -> String {
        match (
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0),
        ) {
            (Some(p50), Some(p99), Some(max)) => format!("{p50} / {p99} / {max} ms"),
            _ => "-".into(),
        }
    }
}

/// One epoch's row of the report.
#[derive(Debug, Clone, Default)]
pub struct EpochRow {
    pub epoch: u64,
    pub acked: u64,
    pub published: Option<Published>,
    pub viewer_reads: u64,
    /// The (total, late) values viewers saw, with how many saw each.
    pub seen: Vec<(u64, u64, u64)>,
    pub end_to_read: Histogram,
}

/// Everything the report prints.
#[derive(Debug, Default)]
pub struct Figures {
    /// Tap sent → the epoch holding it read by a viewer, over (tap, viewer) pairs.
    pub tap_to_screen: Histogram,
    /// Tap sent → its epoch's end, over taps.
    pub tap_to_end: Histogram,
    /// Epoch end → its frame consumed from `emoji-epochs`, over epochs.
    pub end_to_published: Histogram,
    /// Frame consumed from `emoji-epochs` → read by a viewer, over viewer-reads.
    pub published_to_read: Histogram,
    /// Viewer-reads before this tool's consumer had the frame (the main publisher's own fetch
    /// was quicker): counted as 0 in `published_to_read`.
    pub read_before_published: u64,
    /// Epoch end → read by a viewer, over viewer-reads.
    pub end_to_read: Histogram,
    pub epochs: Vec<EpochRow>,
    /// What does not add up: each line a mismatch (empty: exact).
    pub mismatches: Vec<String>,
}

/// Joins the three records. `viewers` is how many viewers were connected throughout; every one
/// must have read every epoch a tap went into, once, with the count the gateway acknowledged.
pub fn compute(
    taps: &[Tap],
    window_ms: u64,
    published: &BTreeMap<u64, Published>,
    reads: &BTreeMap<u64, EpochRead>,
    viewers: u64,
) -> Figures {
    let mut figures = Figures::default();
    let mut per_epoch: BTreeMap<u64, (u64, Histogram)> = BTreeMap::new();
    for tap in taps {
        let end_ms = (tap.epoch + 1) * window_ms;
        let wait = end_ms.saturating_sub(tap.send_ms);
        let (acked, waits) = per_epoch.entry(tap.epoch).or_default();
        *acked += tap.taps;
        waits.add(wait, tap.taps);
        figures.tap_to_end.add(wait, tap.taps);
    }
    for (&epoch, (acked, waits)) in &per_epoch {
        let end_ms = (epoch + 1) * window_ms;
        let mut row = EpochRow {
            epoch,
            acked: *acked,
            published: published.get(&epoch).copied(),
            ..EpochRow::default()
        };
        match row.published {
            Some(p) => {
                figures
                    .end_to_published
                    .add(p.at_ms.saturating_sub(end_ms), 1);
                if (p.total, p.late) != (*acked, 0) {
                    figures.mismatches.push(format!(
                        "epoch {epoch}: emoji-epochs has total {} (late {}), the gateway acknowledged {acked}",
                        p.total, p.late
                    ));
                }
            }
            None => figures
                .mismatches
                .push(format!("epoch {epoch}: no frame on emoji-epochs")),
        }
        let read = reads.get(&epoch);
        for &read_ms in read.map_or(&[][..], |r| &r.read_ms) {
            row.end_to_read.add(read_ms.saturating_sub(end_ms), 1);
            figures.end_to_read.add(read_ms.saturating_sub(end_ms), 1);
            if let Some(p) = row.published {
                figures
                    .published_to_read
                    .add(read_ms.saturating_sub(p.at_ms), 1);
                figures.read_before_published += u64::from(read_ms < p.at_ms);
            }
        }
        row.viewer_reads = row.end_to_read.count();
        row.seen = read.map_or_else(Vec::new, |r| r.counts.clone());
        if row.viewer_reads != viewers {
            figures.mismatches.push(format!(
                "epoch {epoch}: {} viewer reads of its frame, {viewers} viewers connected",
                row.viewer_reads
            ));
        }
        for &(total, late, n) in &row.seen {
            if (total, late) != (*acked, 0) {
                figures.mismatches.push(format!(
                    "epoch {epoch}: {n} viewers saw total {total} (late {late}), the gateway acknowledged {acked}"
                ));
            }
        }
        waits.convolve_into(&row.end_to_read, &mut figures.tap_to_screen);
        figures.epochs.push(row);
    }
    // A frame of the bench stream no acknowledged tap named: taps landed that were never
    // acknowledged (an answer lost), or counted in another epoch than their answer said.
    for (epoch, p) in published {
        if !per_epoch.contains_key(epoch) {
            figures.mismatches.push(format!(
                "epoch {epoch}: emoji-epochs has total {} (late {}), no acknowledged tap named it",
                p.total, p.late
            ));
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tap_viewer_pair_counts_once_and_exact_counts_pass() {
        // Epoch 5 ends at 12,000. Taps: 1 sent at 10,500 (wait 1,500), 2 at 11,900 (wait 100).
        let taps = [
            Tap {
                stream: 0,
                send_ms: 10_500,
                taps: 1,
                epoch: 5,
            },
            Tap {
                stream: 0,
                send_ms: 11_900,
                taps: 2,
                epoch: 5,
            },
        ];
        let published = BTreeMap::from([(
            5,
            Published {
                at_ms: 12_400,
                total: 3,
                late: 0,
            },
        )]);
        // Two viewers read it at 12,500 and 12,700.
        let reads = BTreeMap::from([(
            5,
            EpochRead {
                end_ms: 12_000,
                read_ms: vec![12_500, 12_700],
                counts: vec![(3, 0, 2)],
            },
        )]);
        let f = compute(&taps, 2000, &published, &reads, 2);
        assert!(f.mismatches.is_empty(), "{:?}", f.mismatches);
        // Pairs: 3 taps × 2 viewers = 6; latencies 2000, 2200 (×1) and 600, 800 (×2 each).
        assert_eq!(f.tap_to_screen.count(), 6);
        assert_eq!(f.tap_to_screen.percentile(0.5), Some(800));
        assert_eq!(f.tap_to_screen.percentile(1.0), Some(2200));
        assert_eq!(f.tap_to_screen.percentile(0.1), Some(600));
        assert_eq!(f.tap_to_end.percentile(0.5), Some(100));
        assert_eq!(f.end_to_published.percentile(1.0), Some(400));
        assert_eq!(f.published_to_read.percentile(0.5), Some(100));
        assert_eq!(f.end_to_read.percentile(1.0), Some(700));
    }

    #[test]
    fn a_wrong_count_a_missing_viewer_and_an_unnamed_epoch_are_mismatches() {
        let taps = [Tap {
            stream: 0,
            send_ms: 10_500,
            taps: 4,
            epoch: 5,
        }];
        let published = BTreeMap::from([
            (
                5,
                Published {
                    at_ms: 12_400,
                    total: 4,
                    late: 0,
                },
            ),
            (
                6,
                Published {
                    at_ms: 14_400,
                    total: 1,
                    late: 0,
                },
            ),
        ]);
        let reads = BTreeMap::from([(
            5,
            EpochRead {
                end_ms: 12_000,
                read_ms: vec![12_500],
                counts: vec![(3, 0, 1)],
            },
        )]);
        let f = compute(&taps, 2000, &published, &reads, 2);
        assert_eq!(f.mismatches.len(), 3, "{:?}", f.mismatches);
    }
}
