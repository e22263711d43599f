//! A subscriber's fan-out: every published frame written to every viewer of its stream.
//!
//! A few lanes (one per runtime worker) split the viewers between them; each lane reads the hub's
//! feed of every frame, in publication order, and offers each frame to its viewers of that frame's
//! stream. An offer to a viewer that keeps up is one non-blocking write of bytes shared by every
//! viewer ([`crate::outlet`]), so a frame reaches thousands of sockets without a task wake-up or
//! an allocation per viewer. A lane gives its worker back every [`YIELD_EVERY`] offers so the
//! same thread keeps answering pings, joins and HTTP while it writes.

use crate::hub::{Frame, Hub};
use crate::metrics::{Deliveries, Metrics};
use crate::outlet::Offer;
use emostream_protocol::trends::ALL_STREAMS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

/// Offers a lane makes before it yields to the other tasks on its worker: about a millisecond of
/// writes.
const YIELD_EVERY: usize = 256;

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
    loop {
        let next = tokio::select! {
            join = joins.recv() => match join {
                Some(join) => {
                    audiences.add(join);
                    continue;
                }
                None => return,
            },
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
}
