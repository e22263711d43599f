//! `Snapshot`: from a collection's changes back to states. The trends collections hold at most one
//! value per key (a top-k list, an aggregate), so the value a key holds at epoch `t` is the one
//! added at `t`; a key whose value is only retracted at `t` is now empty.

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::VecCollection;
use std::collections::BTreeMap;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

pub trait Snapshot<'scope, K, V> {
    /// Emits `(key, epoch, value)` for every key whose value changed at `epoch`, once the
    /// frontier has passed it; `None` when the key no longer holds a value. Keys come out in
    /// order within an epoch. The work per epoch is the number of changed keys: no state is kept.
    fn snapshot(self) -> Stream<'scope, u64, Vec<(K, u64, Option<V>)>>;
}

impl<'scope, K, V> Snapshot<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: Ord + Clone + 'static,
    V: Ord + Clone + 'static,
{
    fn snapshot(self) -> Stream<'scope, u64, Vec<(K, u64, Option<V>)>> {
        // Differential operators emit each key's changes on the worker that owns the key: no
        // exchange needed.
        self.inner
            .unary_frontier(Pipeline, "Snapshot", |_cap, _info| {
                // epoch → (its capability, the changes at it)
                type Changes<K, V> = Vec<((K, V), isize)>;
                let mut pending: BTreeMap<u64, (Capability<u64>, Changes<K, V>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        for batch in data {
                            for ((key, value), time, diff) in batch.drain(..) {
                                let (_, changes) = pending.entry(time).or_insert_with(|| {
                                    let held = cap
                                        .retain_least(output.output_index())
                                        .expect("a message carries a capability");
                                    (held.delayed(&time), Vec::new())
                                });
                                changes.push(((key, value), diff));
                            }
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (time, (cap, mut changes)) = entry.remove_entry();
                        // Changes to one key may reach us split over messages; net them first.
                        consolidate(&mut changes);
                        let mut states: BTreeMap<K, Option<V>> = BTreeMap::new();
                        for ((key, value), diff) in changes {
                            if diff > 0 {
                                states.insert(key, Some(value));
                            } else {
                                states.entry(key).or_insert(None);
                            }
                        }
                        output.session(&cap).give_iterator(
                            states.into_iter().map(|(key, value)| (key, time, value)),
                        );
                    }
                }
            })
            .container::<Vec<(K, u64, Option<V>)>>()
    }
}
