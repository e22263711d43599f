//! `CountEpochs` on its own, at 1, 2 and 3 worker threads: pre-counts of one (stream, epoch)
//! spread over every worker meet on one, each closed epoch leaves exactly once with the whole
//! sum, at its own time, only when the frontier has passed it, and an epoch still open when the
//! input ends is never emitted.

use emostream_dataflow::count::CountEpochs;
use emostream_dataflow::PartialCount;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::capture::{Capture, Event, Extract};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandleVec, ProbeHandle};

/// (stream, epoch, total, late, emojis sorted by emoji): an `EpochCount` with its emojis in a
/// canonical order, since the operator leaves them in hash order.
type Row = (String, u64, u64, u64, Vec<(String, u64)>);

fn pre(stream: &str, emoji: &str, count: u64, late: u64) -> PartialCount {
    PartialCount {
        stream: stream.into(),
        emoji: emoji.into(),
        count,
        late,
    }
}

fn row(stream: &str, epoch: u64, total: u64, late: u64, emojis: &[(&str, u64)]) -> Row {
    let emojis = emojis.iter().map(|(e, n)| (e.to_string(), *n)).collect();
    (stream.into(), epoch, total, late, emojis)
}

/// Gives this worker its share (item `i` goes to worker `i % peers`), so every worker count sees
/// the same inputs in all and consecutive pre-counts of one key start on different workers.
fn send_share(
    input: &mut InputHandleVec<u64, PartialCount>,
    items: Vec<PartialCount>,
    index: usize,
    peers: usize,
) {
    for (i, item) in items.into_iter().enumerate() {
        if i % peers == index {
            input.send(item);
        }
    }
}

fn count_with(workers: usize) -> Vec<(u64, Vec<Row>)> {
    let (send, recv) = mpsc::channel::<Event<u64, Vec<Row>>>();
    let send = Arc::new(Mutex::new(send));
    timely::execute(timely::Config::process(workers), move |worker| {
        let send = send.lock().unwrap().clone();
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandleVec::<u64, PartialCount>::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .count_epochs()
                .probe_with(&probe)
                .map(|mut c| {
                    c.emojis.sort();
                    (c.stream, c.epoch, c.total, c.late, c.emojis)
                })
                .capture_into(send);
        });

        send_share(
            &mut input,
            vec![
                pre("main", "🔥", 3, 0),
                pre("main", "🔥", 4, 1),
                pre("main", "👍🏽", 2, 0),
                pre("cricket", "❤️", 1, 0),
            ],
            index,
            peers,
        );
        input.advance_to(1);
        send_share(
            &mut input,
            vec![pre("main", "🔥", 1000, 0), pre("cricket", "❤️", 2, 2)],
            index,
            peers,
        );
        // Epoch 0 closes; epoch 1 is still open, and more of it arrives after this.
        worker.step_while(|| probe.less_than(&1));
        send_share(
            &mut input,
            vec![pre("main", "🔥", 785, 2), pre("cricket", "❤️", 3, 3)],
            index,
            peers,
        );
        // Epoch 2 has no taps at all; epoch 3 has taps folded in late from earlier epochs.
        input.advance_to(3);
        send_share(
            &mut input,
            vec![pre("cricket", "😂", 7, 0), pre("main", "👍🏽", 4, 4)],
            index,
            peers,
        );
        worker.step_while(|| probe.less_than(&3));
        input.advance_to(4);
        send_share(&mut input, vec![pre("main", "🔥", 9, 0)], index, peers);
        worker.step_while(|| probe.less_than(&4));
        // Epoch 4 is open when the input ends (a shutdown): its counts are partial, never sent.
    })
    .unwrap();
    recv.extract()
}

fn expected() -> Vec<(u64, Vec<Row>)> {
    vec![
        (
            0,
            vec![
                row("cricket", 0, 1, 0, &[("❤️", 1)]),
                row("main", 0, 9, 1, &[("👍🏽", 2), ("🔥", 7)]),
            ],
        ),
        (
            1,
            vec![
                row("cricket", 1, 5, 5, &[("❤️", 5)]),
                row("main", 1, 1785, 2, &[("🔥", 1785)]),
            ],
        ),
        (
            3,
            vec![
                row("cricket", 3, 7, 0, &[("😂", 7)]),
                row("main", 3, 4, 4, &[("👍🏽", 4)]),
            ],
        ),
    ]
}

#[test]
fn one_worker_closes_each_epoch_once_on_the_frontier() {
    assert_eq!(count_with(1), expected());
}

#[test]
fn two_workers_sum_each_stream_on_one_worker() {
    assert_eq!(count_with(2), expected());
}

#[test]
fn three_workers_sum_each_stream_on_one_worker() {
    assert_eq!(count_with(3), expected());
}
