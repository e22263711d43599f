//! A subscriber's fan-out: every published frame written to every viewer of its stream.
//!
//! A few lanes (one per runtime worker) split the viewers between them; each lane reads the hub's
//! feed of every frame, in publication order, and offers each frame to its viewers of that frame's
//! stream. An offer to a viewer that keeps up is one non-blocking write of bytes shared by every
//! viewer ([`crate::viewers::outlet`]), so a frame reaches thousands of sockets without a task wake-up or
//! an allocation per viewer. A lane gives its worker back every [`YIELD_EVERY`] offers so the
//! same thread keeps answering pings, joins and HTTP while it writes.

use crate::hub::{Frame, Hub};
use crate::metrics::{Deliveries, Metrics};
use crate::viewers::outlet::Offer;
use emostream_protocol::trends::ALL_STREAMS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

/// Offers a lane makes before it yields to the other tasks on its worker: about a millisecond of
/// writes.
const YIELD_EVERY: usize = 256;

/// How often a lane forgets the viewers that left: a leaver is otherwise forgotten at the next
/// frame of its stream, which on a quiet stream may never come, and its outlet holds its
/// socket's descriptor until then.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A viewer joining a lane: its stream, and its outlet.
type Join = (Arc<str>, Arc<dyn Offer>);

pub struct Fanout {
    lanes: Vec<mpsc::UnboundedSender<Join>>,
    next: AtomicUsize,
}

impl Fanout {
    /// Starts `lanes` lanes fed by `hub`; they end when the hub does.
    pub fn start(hub: &Hub, lanes: usize, metrics: Arc<Metrics>) -> Self {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (joins_tx, joins) = mpsc::unbounded_channel();
                tokio::spawn(lane(hub.link(), joins, Arc::clone(&metrics)));
                joins_tx
            })
            .collect();
        Self {
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// Adds a viewer of `stream`: it is offered every frame published from now on. Call it under
    /// the hub's lock ([`Hub::join`]'s `attach`), so that the lane hears of it before any frame
    /// published after its replay.
    pub fn add(&self, stream: &str, outlet: Arc<dyn Offer>) {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        // Fails only once the lane has ended with the hub, when nothing is published any more.
        let _ = self.lanes[lane].send((stream.into(), outlet));
    }
}

/// Which viewers a lane has, by stream.
#[derive(Default)]
struct Audiences(HashMap<Arc<str>, Vec<Arc<dyn Offer>>>);

impl Audiences {
    fn add(&mut self, (stream, outlet): Join) {
        self.0.entry(stream).or_default().push(outlet);
    }

    /// Forgets every viewer whose task has ended: the lane holds the last reference to its
    /// outlet (the task holds one for as long as it serves the viewer).
    fn sweep(&mut self) -> usize {
        let mut gone = 0;
        self.0.retain(|_, audience| {
            let before = audience.len();
            audience.retain(|outlet| Arc::strong_count(outlet) > 1);
            gone += before - audience.len();
            !audience.is_empty()
        });
        gone
    }

    /// The streams whose viewers get `frame`: its own, or every one for a frame about all
    /// streams (`popular`).
    fn streams_of(&self, frame: &Frame) -> Vec<Arc<str>> {
        if &*frame.stream == ALL_STREAMS {
            self.0.keys().cloned().collect()
        } else if self.0.contains_key(&frame.stream) {
            vec![Arc::clone(&frame.stream)]
        } else {
            Vec::new()
        }
    }
}

async fn lane(
    mut feed: broadcast::Receiver<Frame>,
    mut joins: mpsc::UnboundedReceiver<Join>,
    metrics: Arc<Metrics>,
) {
    let mut audiences = Audiences::default();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            join = joins.recv() => match join {
                Some(join) => {
                    audiences.add(join);
                    continue;
                }
                None => return,
            },
            _ = sweep.tick() => {
                let gone = audiences.sweep();
                if gone > 0 {
                    tracing::debug!(gone, "forgot viewers that left quiet streams");
                }
                continue;
            }
            next = feed.recv() => next,
        };
        // A viewer attached before this frame was published is in the queue by now.
        while let Ok(join) = joins.try_recv() {
            audiences.add(join);
        }
        match next {
            Ok(frame) => deliver(&mut audiences, &frame, &metrics).await,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "the fan-out fell behind its feed");
                let mut counted = Deliveries::default();
                for audience in audiences.0.values_mut() {
                    audience.retain(|outlet| outlet.missed(missed, &mut counted));
                }
                metrics.add(&counted);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Offers `frame` to each of its viewers, forgetting the ones that are gone.
async fn deliver(audiences: &mut Audiences, frame: &Frame, metrics: &Metrics) {
    let started = std::time::Instant::now();
    let mut counted = Deliveries::default();
    let mut offered = 0;
    for stream in audiences.streams_of(frame) {
        let Some(audience) = audiences.0.get_mut(&stream) else {
            continue;
        };
        let mut i = 0;
        while i < audience.len() {
            if audience[i].offer(frame, &mut counted) {
                i += 1;
            } else {
                audience.swap_remove(i);
            }
            offered += 1;
            if offered % YIELD_EVERY == 0 {
                metrics.add(&std::mem::take(&mut counted));
                tokio::task::yield_now().await;
            }
        }
        if audience.is_empty() {
            audiences.0.remove(&stream);
        }
    }
    metrics.add(&counted);
    tracing::debug!(
        offered,
        since_received_ms = frame.at.elapsed().as_millis() as u64,
        took_ms = started.elapsed().as_millis() as u64,
        "frame fanned out"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An outlet that records the frames offered to it, and leaves after `lives` offers.
    struct Recorded {
        got: Mutex<Vec<(String, u64)>>,
        lives: AtomicUsize,
    }

    impl Recorded {
        fn new(lives: usize) -> Arc<Self> {
            Arc::new(Self {
                got: Mutex::new(Vec::new()),
                lives: AtomicUsize::new(lives),
            })
        }

        fn got(&self) -> Vec<(String, u64)> {
            self.got.lock().unwrap().clone()
        }
    }

    impl Offer for Recorded {
        fn offer(&self, frame: &Frame, _: &mut Deliveries) -> bool {
            self.got
                .lock()
                .unwrap()
                .push((frame.stream.to_string(), frame.epoch));
            self.lives.fetch_sub(1, Ordering::Relaxed) > 1
        }
        fn missed(&self, _: u64, _: &mut Deliveries) -> bool {
            true
        }
    }

    fn publish(hub: &Hub, kind: &str, stream: &str, epoch: u64) {
        let text = format!(r#"{{"type":"{kind}","stream":"{stream}","epoch":{epoch}}}"#);
        assert!(hub.publish(text.into()).unwrap());
    }

    #[tokio::test]
    async fn each_viewer_gets_its_streams_frames_and_popular_and_leavers_are_forgotten() {
        let hub = Hub::new(8);
        let metrics = Arc::new(Metrics::new("subscriber"));
        let fanout = Fanout::start(&hub, 2, Arc::clone(&metrics));
        let main: Vec<_> = (0..3).map(|_| Recorded::new(usize::MAX)).collect();
        let football = Recorded::new(usize::MAX);
        let leaver = Recorded::new(2);
        for viewer in &main {
            hub.join("main", None, |_, _, _| fanout.add("main", viewer.clone()));
        }
        hub.join("football", None, |_, _, _| {
            fanout.add("football", football.clone());
            fanout.add("football", leaver.clone());
        });
        publish(&hub, "epoch", "main", 1);
        publish(&hub, "epoch", "football", 1);
        publish(&hub, "popular", ALL_STREAMS, 1);
        publish(&hub, "epoch", "football", 2);
        publish(&hub, "epoch", "main", 2);

        let want_main = [("main", 1), ("*", 1), ("main", 2)].map(|(s, e)| (s.to_owned(), e));
        let want_football =
            [("football", 1), ("*", 1), ("football", 2)].map(|(s, e)| (s.to_owned(), e));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while main.iter().any(|m| m.got().len() < 3) || football.got().len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "frames never came");
            tokio::task::yield_now().await;
        }
        for viewer in &main {
            assert_eq!(viewer.got(), want_main);
        }
        assert_eq!(football.got(), want_football);
        // Gone after its second offer, so never offered the third.
        assert_eq!(leaver.got(), want_football[..2]);
    }

    #[tokio::test(start_paused = true)]
    async fn viewers_that_left_a_quiet_stream_are_forgotten() {
        let hub = Hub::new(8);
        let metrics = Arc::new(Metrics::new("subscriber"));
        let fanout = Fanout::start(&hub, 1, Arc::clone(&metrics));
        let stays = Recorded::new(usize::MAX);
        let leaves = Recorded::new(usize::MAX);
        let watch = Arc::downgrade(&leaves);
        hub.join("quiet", None, |_, _, _| {
            fanout.add("quiet", stays.clone());
            fanout.add("quiet", leaves.clone());
        });
        // The viewer's task ends: only the lane still holds its outlet.
        drop(leaves);
        // No frame of the stream comes; the sweep alone lets go of it.
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert!(watch.upgrade().is_none(), "the lane still holds a leaver");
        publish(&hub, "epoch", "quiet", 1);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while stays.got().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the frame never came"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(stays.got(), [("quiet".to_owned(), 1)]);
    }
}
