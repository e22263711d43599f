//! The dataflow's recovery state on the progress topic: one record per acknowledged epoch,
//! written by worker 0 only after every frame of every epoch up to `epoch` is acknowledged on
//! `emoji-epochs`. Each record names the one it continues (`follows`), so that two clusters
//! writing into the same topics cannot both continue one record: the first to land does, the
//! other stops. A restart reads the newest record of that chain.

use serde::{Deserialize, Serialize};

/// Everything a restarted cluster needs to publish each epoch after `epoch` exactly as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Every epoch up to and including this one is published and acknowledged.
    pub epoch: u64,
    /// The settings the published epochs were counted with. Absent from records written before
    /// they were recorded: such a record is accepted with any settings (its partition list
    /// still tells the partition count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counting: Option<Counting>,
    /// One entry per partition of the events topic, `0..events_partitions` in order.
    pub partitions: Vec<PartitionProgress>,
    /// The offset, on the progress topic, of the record this one continues ([`FIRST`] on an
    /// empty topic). Of the records following one offset, only the first in the log counts: a
    /// later one was written by another cluster that lost the race, and is ignored. Absent from
    /// records written before it was recorded; those all count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<i64>,
    /// The id of the cluster run that wrote it, random per start. A record that lost the race
    /// for the chain is another cluster's only while its run goes on writing; a run that wrote
    /// nothing more was the cluster's own predecessor, killed with the record in flight. Absent
    /// from records written before runs had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
}

/// The `follows` of a cluster's first record on an empty progress topic.
pub const FIRST: i64 = -1;

/// The settings that decide which epoch a tap is published in and how: a restart with other
/// values would renumber, split or recount epochs already published, so it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counting {
    /// `epochs.window_ms`.
    pub window_ms: u64,
    /// `epochs.divisor`.
    pub divisor: u64,
    /// `kafka.events_partitions`.
    pub events_partitions: u32,
}

/// One partition's part of [`Progress`].
///
/// On replay a record at offset `o` whose own epoch is `≤ epoch` and `o < skip_before` was already
/// counted in a published epoch and is skipped; every other record is counted. Records below
/// `hold_until` were read, in the run that wrote this, while the partition's floor was at most
/// `epoch + 1`; holding it there again until `hold_until` makes epoch `epoch + 1` (which may
/// already be published) come out identical. `later_holds` continues that floor schedule for
/// the further epochs the record lets out before the next one: its `i`-th offset is where the
/// floor passed `epoch + 2 + i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgress {
    pub partition: i32,
    /// Where to resume reading: no record below it is needed by an unpublished epoch.
    pub resume_offset: i64,
    pub skip_before: i64,
    pub hold_until: i64,
    /// Absent when the record lets out one epoch only (and from records written before epochs
    /// went out several at a time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later_holds: Vec<i64>,
}

impl PartitionProgress {
    /// The floor schedule: where the floor passed `epoch + 1`, `epoch + 2`, … in turn.
    pub fn holds(&self) -> impl Iterator<Item = i64> + '_ {
        std::iter::once(self.hold_until).chain(self.later_holds.iter().copied())
    }
}

impl Progress {
    pub fn partition(&self, partition: i32) -> Option<&PartitionProgress> {
        self.partitions.iter().find(|p| p.partition == partition)
    }

    /// The last epoch a restart from this record reproduces byte for byte: the run that wrote it
    /// may have published every epoch up to here, and no later one.
    pub fn last_reproducible(&self) -> u64 {
        let schedule = self
            .partitions
            .iter()
            .map(|p| p.later_holds.len() as u64)
            .min()
            .unwrap_or(0);
        self.epoch + 1 + schedule
    }
}
