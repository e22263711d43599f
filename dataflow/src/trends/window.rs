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
    /// A retraction is emitted once the frontier reaches its time rather than at once, so that at
    /// shutdown (the frontier empties without the later epochs closing) a window is never shown
    /// draining: only retractions due by the newest epoch this worker saw are let out then.
    fn slide(self, epochs: u64) -> VecCollection<'scope, u64, EpochCount, i64>;
}

impl<'scope> SlideWindow<'scope> for Stream<'scope, u64, Vec<EpochCount>> {
    fn slide(self, epochs: u64) -> VecCollection<'scope, u64, EpochCount, i64> {
        assert!(epochs >= 1, "a window spans at least one epoch");
        // The input is already exchanged by stream (CountEpochs), and the collections built on
        // this one are exchanged by their own keys: no exchange here.
        self.unary_frontier(Pipeline, "SlideWindow", move |_cap, _info| {
            // retraction time → (its capability, the epochs leaving then)
            let mut leaving: BTreeMap<u64, (Capability<u64>, Vec<EpochCount>)> = BTreeMap::new();
            let mut newest: Option<u64> = None;
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(output.output_index()) else {
                        return;
                    };
                    let epoch = *cap.time();
                    newest = newest.max(Some(epoch));
                    let leaves = epoch + epochs;
                    let (_, gone) = leaving
                        .entry(leaves)
                        .or_insert_with(|| (cap.delayed(&leaves), Vec::new()));
                    let mut session = output.session(&cap);
                    for batch in data {
                        for count in batch.drain(..) {
                            gone.push(count.clone());
                            session.give((count, epoch, 1));
                        }
                    }
                });
                let shutdown = frontier.frontier().is_empty();
                while let Some(entry) = leaving.first_entry() {
                    let time = *entry.key();
                    let due = if shutdown {
                        newest.is_some_and(|n| time <= n)
                    } else {
                        !frontier.less_than(&time)
                    };
                    if !due {
                        break;
                    }
                    let (cap, gone) = entry.remove();
                    output
                        .session(&cap)
                        .give_iterator(gone.into_iter().map(|count| (count, time, -1)));
                }
                if shutdown {
                    leaving.clear();
                }
            }
        })
        .as_collection()
    }
}
