//! `PublishTrends` against a real broker (scripts/broker.sh), with the published frontier and the
//! gate driven by hand: a trends frame leaves only once both have passed its epoch, and at a
//! stop (both frontiers empty) the frames of epochs the gate had not passed are dropped, however
//! far the published frontier had gone. At a graceful stop with three or more workers the
//! published frontier passes epochs `PublishEpochs` dropped, which can be partial; the gate
//! never passes them.

use emostream_dataflow::trends::publish::{self, PublishTrends};
use emostream_protocol::trends::{Sentiment, SentimentIndex, TrendFrame};
use emostream_testkit::broker::minimal_config;
use emostream_testkit::topic::read_to_end;
use emostream_testkit::{Broker, Scratch};
use std::time::{Duration, Instant};
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

/// Far beyond the round trip to a local broker a frame waits on, even on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn frame(epoch: u64) -> TrendFrame {
    let none = SentimentIndex {
        index: None,
        scored: 0,
        taps: 0,
    };
    TrendFrame::Sentiment(Sentiment {
        stream: "main".into(),
        epoch,
        start_ms: epoch * 2000,
        end_ms: (epoch + 1) * 2000,
        window_epochs: 1,
        this_epoch: none.clone(),
        window: none,
    })
}

/// Steps `worker` until `done`, within the deadline.
fn step_until(worker: &mut Worker, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
}

#[test]
fn a_trends_frame_waits_for_the_gate_and_is_dropped_at_a_stop_the_gate_had_not_passed() {
    let dir = Scratch::new("dataflow-publish-trends");
    let (_broker, config) = Broker::start(dir.path(), |address| minimal_config(address, ""));
    let kafka = config.kafka.clone();
    let epochs_on_topic = move || -> Vec<u64> {
        let mut epochs: Vec<u64> = read_to_end(&kafka.brokers, &kafka.trends_topic)
            .iter()
            .map(|r| match serde_json::from_slice(&r.payload).unwrap() {
                TrendFrame::Sentiment(f) => f.epoch,
                other => panic!("not a frame of this test: {other:?}"),
            })
            .collect();
        epochs.sort();
        epochs
    };
    let kafka = config.kafka.clone();
    timely::execute(timely::Config::thread(), move |worker| {
        let producer = publish::connect(&kafka, &kafka.trends_topic)
            .unwrap()
            .expect("broker.sh made the trends topic");
        let mut frames = InputHandleVec::<u64, TrendFrame>::new();
        let mut published = InputHandleVec::<u64, ()>::new();
        let mut gate = InputHandleVec::<u64, ()>::new();
        let answered = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let (published, gate) = (published.to_stream(scope), gate.to_stream(scope));
            frames
                .to_stream(scope)
                .publish_trends(published, gate, 0, 0, producer)
                .probe_with(&answered);
        });
        for epoch in [5, 6, 7] {
            frames.advance_to(epoch);
            frames.send(frame(epoch));
        }
        frames.advance_to(8);
        // Every epoch up to 7 published, but the gate only past 5: only 5 may leave.
        published.advance_to(8);
        gate.advance_to(6);
        step_until(worker, "epoch 5's frame answered", || {
            !answered.less_than(&6)
        });
        assert_eq!(epochs_on_topic(), [5], "the gate holds 6 and 7");
        gate.advance_to(7);
        step_until(worker, "epoch 6's frame answered", || {
            !answered.less_than(&7)
        });
        assert_eq!(epochs_on_topic(), [5, 6]);
        // A stop: the gate's last frontier was 7, so epoch 7 (maybe partial) never goes out.
        drop((frames, published, gate));
        step_until(worker, "the stop", || answered.done());
        assert_eq!(
            epochs_on_topic(),
            [5, 6],
            "epoch 7's frame dropped at the stop"
        );
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("the worker ends"));
}
