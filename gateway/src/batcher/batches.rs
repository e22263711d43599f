//! The batching policy: which (partition, stream, epoch) batch is due when.

use super::budget::Held;
use super::{Ack, Submission};
use std::collections::hash_map::{Entry, HashMap};

#[derive(Clone, Hash, PartialEq, Eq)]
pub(super) struct BatchKey {
    pub(super) partition: i32,
    pub(super) stream: String,
    pub(super) epoch: u64,
}

pub(super) struct OpenBatch {
    /// The newest receive time in the batch: the record's timestamp, which the dataflow's
    /// watermark follows. (The first receive time would trail it by up to `flush_ms`, and every
    /// epoch would close that much later.)
    pub(super) newest_recv_ms: u64,
    pub(super) events: usize,
    pub(super) lines: Vec<u8>,
    pub(super) acks: Vec<Ack>,
    /// The budget its requests hold, until the broker has answered for the record.
    pub(super) held: Held,
}

/// Which batches go out when (the group commit and the caps), apart from the producer that
/// sends them.
pub(super) struct Batches {
    max_events: usize,
    /// A batch is due once its lines reach this …
    max_bytes: usize,
    /// … and its lines never grow past this, the producer's `message.max.bytes` less the key
    /// and framing librdkafka adds (`MAX_RECORD_LINES`): a record over it would be refused for
    /// good, and every request in it answered 500.
    max_record_bytes: usize,
    /// Records of one partition awaiting the broker at once: while fewer are, a batch goes at
    /// once; at this many, the partition's batches gather until an answer.
    max_unacked: usize,
    open: HashMap<BatchKey, OpenBatch>,
    /// Records awaiting the broker, per partition.
    unacked: HashMap<i32, usize>,
}

impl Batches {
    pub(super) fn new(
        max_events: usize,
        max_bytes: usize,
        max_record_bytes: usize,
        max_unacked: usize,
    ) -> Self {
        Batches {
            max_events,
            max_bytes,
            max_record_bytes,
            max_unacked,
            open: HashMap::new(),
            unacked: HashMap::new(),
        }
    }

    /// The open batch `s` would join, due now (even while its partition is busy) when `s`'s
    /// lines would take it past the record cap: it goes as it is, and `s` opens the next one.
    /// So a record holds at most the larger of the cap and one request's lines, and one client's
    /// large request can never make a record that fails the requests of others.
    pub(super) fn room_for(&mut self, s: &Submission) -> Option<(BatchKey, OpenBatch)> {
        let key = BatchKey {
            partition: s.partition,
            stream: s.stream.clone(),
            epoch: s.epoch,
        };
        let open = self.open.get(&key)?;
        (open.lines.len() + s.lines.len() > self.max_record_bytes)
            .then(|| self.open.remove_entry(&key).expect("just found"))
    }

    /// Adds a submission to its batch; the batch is due at once when it is full or its partition
    /// has no record awaiting the broker.
    pub(super) fn add(&mut self, s: Submission) -> Option<(BatchKey, OpenBatch)> {
        let key = BatchKey {
            partition: s.partition,
            stream: s.stream,
            epoch: s.epoch,
        };
        let mut entry = match self.open.entry(key) {
            Entry::Occupied(e) => e,
            Entry::Vacant(e) => e.insert_entry(OpenBatch {
                newest_recv_ms: s.recv_ms,
                events: 0,
                lines: Vec::with_capacity(s.lines.len() * 4),
                acks: Vec::new(),
                held: Held::default(),
            }),
        };
        let batch = entry.get_mut();
        batch.newest_recv_ms = batch.newest_recv_ms.max(s.recv_ms);
        batch.events += s.events;
        batch.lines.extend_from_slice(&s.lines);
        batch.acks.extend(s.ack);
        batch.held.add(s.permit);
        let full = batch.events >= self.max_events || batch.lines.len() >= self.max_bytes;
        let idle = self
            .unacked
            .get(&s.partition)
            .is_none_or(|&n| n < self.max_unacked);
        (full || idle).then(|| entry.remove_entry())
    }

    /// A record of `partition` is now awaiting the broker.
    pub(super) fn sent(&mut self, partition: i32) {
        *self.unacked.entry(partition).or_default() += 1;
    }

    /// A record of `partition` was answered: if that leaves room for another, what gathered
    /// meanwhile is due.
    pub(super) fn acknowledged(&mut self, partition: i32) -> Vec<(BatchKey, OpenBatch)> {
        let n = self.unacked.entry(partition).or_default();
        *n -= 1;
        if *n >= self.max_unacked {
            return Vec::new();
        }
        let ready: Vec<BatchKey> = self
            .open
            .keys()
            .filter(|k| k.partition == partition)
            .cloned()
            .collect();
        ready
            .into_iter()
            .map(|key| {
                let batch = self.open.remove(&key).expect("the key was just listed");
                (key, batch)
            })
            .collect()
    }

    /// The open batches of epochs before `epoch`, due now: at an epoch's end its batches go
    /// whatever the group commit says, so the dataflow's lateness bound need not cover
    /// `flush_ms` (see `Packer::run`).
    pub(super) fn take_ended(&mut self, epoch: u64) -> Vec<(BatchKey, OpenBatch)> {
        let ended: Vec<BatchKey> = (self.open.keys())
            .filter(|k| k.epoch < epoch)
            .cloned()
            .collect();
        ended
            .into_iter()
            .map(|key| {
                let batch = self.open.remove(&key).expect("the key was just listed");
                (key, batch)
            })
            .collect()
    }

    /// Every open batch, due now (the flush tick and the shutdown).
    pub(super) fn take_all(&mut self) -> Vec<(BatchKey, OpenBatch)> {
        self.open.drain().collect()
    }
}
