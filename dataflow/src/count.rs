//! Closing epochs on the frontier: pre-counts are exchanged by stream, summed per epoch, and an
//! epoch's counts leave exactly once, when the frontier has passed it on every worker.

use crate::{EpochCount, PartialCount};
use std::collections::{BTreeMap, HashMap};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// Per stream: emoji → (count, late).
type StreamCounts = HashMap<String, (HashMap<String, u64>, u64)>;

pub trait CountEpochs<'scope> {
    /// Sums the pre-counts of each (stream, epoch) across all workers and emits one
    /// [`EpochCount`] per (stream, epoch) once the frontier has passed the epoch.
    ///
    /// An epoch that is still open when the input ends (shutdown) is not emitted: its counts
    /// would be partial, and a restart counts it again in full.
    fn count_epochs(self) -> Stream<'scope, u64, Vec<EpochCount>>;
}

impl<'scope> CountEpochs<'scope> for Stream<'scope, u64, Vec<PartialCount>> {
    fn count_epochs(self) -> Stream<'scope, u64, Vec<EpochCount>> {
        let by_stream = Exchange::new(|c: &PartialCount| stream_hash(&c.stream));
        self.unary_frontier(by_stream, "CountEpochs", |_cap, _info| {
            let mut open: BTreeMap<u64, (Capability<u64>, StreamCounts)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(output.output_index()) else {
                        return;
                    };
                    let (_, streams) = open
                        .entry(*cap.time())
                        .or_insert_with(|| (cap, HashMap::new()));
                    for batch in data {
                        for c in batch.drain(..) {
                            let (emojis, late) = streams.entry(c.stream).or_default();
                            *emojis.entry(c.emoji).or_default() += c.count;
                            *late += c.late;
                        }
                    }
                });
                if frontier.frontier().is_empty() {
                    open.clear();
                    return;
                }
                while let Some(entry) = open.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (epoch, (cap, streams)) = entry.remove_entry();
                    let mut session = output.session(&cap);
                    for (stream, (emojis, late)) in streams {
                        let total = emojis.values().sum();
                        session.give(EpochCount {
                            stream,
                            epoch,
                            total,
                            late,
                            emojis: emojis.into_iter().collect(),
                        });
                    }
                }
            }
        })
        .container::<Vec<EpochCount>>()
    }
}

/// Which worker sums a stream's counts: 64-bit FNV-1a of the stream's UTF-8 bytes (offset basis
/// 0xcbf29ce484222325, prime 0x100000001b3). Written out here rather than taken from `std`,
/// whose `DefaultHasher` may change between Rust releases: every process of a cluster must route
/// a stream to the same worker even when two toolchains built them.
fn stream_hash(stream: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    stream.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::stream_hash;

    /// FNV-1a's published test vectors, and the streams of the tests and the seeds.
    #[test]
    fn stream_hash_is_64_bit_fnv_1a() {
        let table = [
            ("", 0xcbf2_9ce4_8422_2325),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
            ("main", 0x1f59_62a2_ce98_03c8),
            ("cricket", 0x1501_6471_1960_7c30),
            ("alpha", 0x8ac6_25bb_85ed_202b),
        ];
        for (stream, hash) in table {
            assert_eq!(stream_hash(stream), hash, "{stream:?}");
        }
    }
}
