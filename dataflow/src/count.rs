//! Closing epochs on the frontier: pre-counts are exchanged by stream, summed per epoch, and an
//! epoch's counts leave exactly once, when the frontier has passed it on every worker.

use crate::{EpochCount, PartialCount};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
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

/// The same on every process of the cluster (SipHash with fixed keys), so a stream's counts
/// meet on one worker.
fn stream_hash(stream: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    stream.hash(&mut h);
    h.finish()
}
