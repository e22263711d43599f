//! `SlideWindow`: closed epochs as a differential collection over a sliding window — each epoch's
//! counts enter at their epoch with `+1` and leave `epochs` epochs later with `-1`, so at time `t`
//! the collection holds exactly the epochs `t - epochs + 1 ..= t`.

use crate::EpochCount;
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::BTreeMap;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

pub trait SlideWindow<'scope> {
    /// The epochs of the last `epochs` epochs as a collection (diff `+1` while inside).
    ///
    /// Both the entry and the exit of an epoch wait until the frontier has passed their time:
    /// then every worker agrees that the time is over, and at a stop (the frontier empties at
    /// once) nothing pending is let out, so a window is never shown draining while the epochs
    /// simply stopped being counted. The cost is that an epoch closed in the same instant as a
    /// stop gets no trends; the epochs' own frames are unaffected.
    fn slide(self, epochs: u64) -> VecCollection<'scope, u64, EpochCount, i64>;
}

impl<'scope> SlideWindow<'scope> for Stream<'scope, u64, Vec<EpochCount>> {
    fn slide(self, epochs: u64) -> VecCollection<'scope, u64, EpochCount, i64> {
        assert!(epochs >= 1, "a window spans at least one epoch");
        // The input is already exchanged by stream (CountEpochs), and the collections built on
        // this one are exchanged by their own keys: no exchange here.
        self.unary_frontier(Pipeline, "SlideWindow", move |_cap, _info| {
            // time → (its capability, the epochs entering (+1) or leaving (-1) then)
            type Moves = Vec<(EpochCount, i64)>;
            let mut pending: BTreeMap<u64, (Capability<u64>, Moves)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(output.output_index()) else {
                        return;
                    };
                    let (enters, leaves) = (*cap.time(), *cap.time() + epochs);
                    let mut exits = Vec::new();
                    {
                        let (_, entries) = pending
                            .entry(enters)
                            .or_insert_with(|| (cap.clone(), Vec::new()));
                        for batch in data {
                            for count in batch.drain(..) {
                                exits.push((count.clone(), -1));
                                entries.push((count, 1));
                            }
                        }
                    }
                    pending
                        .entry(leaves)
                        .or_insert_with(|| (cap.delayed(&leaves), Vec::new()))
                        .1
                        .append(&mut exits);
                });
                if frontier.frontier().is_empty() {
                    pending.clear(); // a stop: see above
                    return;
                }
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (cap, moves) = entry.remove();
                    output
                        .session(&cap)
                        .give_iterator(moves.into_iter().map(|(count, diff)| (count, time, diff)));
                }
            }
        })
        .as_collection()
    }
}
