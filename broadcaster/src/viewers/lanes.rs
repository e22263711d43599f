//! A subscriber's fan-out: every published frame written to every viewer of its stream.
//!
//! A few lanes (one per runtime worker) split the viewers between them; each lane reads the hub's
//! feed of every frame, in publication order. It takes every frame already there at once, and
//! after an epoch frame waits a few milliseconds for the same epoch's trend frames, so that a
//! viewer gets its epoch in one write: on loopback and on a real NIC alike the cost of a fan-out
//! is writes per viewer, and an epoch is four frames. Each viewer is then offered its stream's
//! frames of the batch; for a viewer that keeps up that is one non-blocking write of bytes shared
//! by every viewer ([`crate::viewers::outlet`]), without a task wake-up or an allocation per
//! viewer. A lane gives its worker back every [`YIELD_EVERY`] offers so the same thread keeps
//! answering pings, joins and HTTP while it writes.
//!
//! A lane that falls behind its feed (thousands of streams closing an epoch at once, on a busy
//! core) catches up from the hub's rings, as a link does: its viewers get every frame the rings
//! still hold, and only the viewers of a stream whose ring has since pushed out an epoch they
//! did not get are told they missed something. A lane's own delay is never a viewer's `lagged`.

use crate::hub::{Frame, Hub, Kind};
use crate::metrics::{Deliveries, Metrics};
use crate::viewers::outlet::Offer;
use emostream_protocol::trends::ALL_STREAMS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};

/// Offers a lane makes before it yields to the other tasks on its worker: about a millisecond of
/// writes.
const YIELD_EVERY: usize = 256;

/// How often a lane forgets the viewers that left: a leaver is otherwise forgotten at the next
/// frame of its stream, which on a quiet stream may never come, and its outlet holds its
/// socket's descriptor until then.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A viewer joining a lane: its stream, and its outlet.
type Join = (Arc<str>, Arc<dyn Offer>);

pub struct Fanout {
    lanes: Vec<mpsc::UnboundedSender<Join>>,
    next: AtomicUsize,
}

impl Fanout {
    /// Starts `lanes` lanes fed by `hub`, each waiting up to `bundle_wait` after an epoch frame
    /// for its trend frames; they end when the hub does.
    pub fn start(
        hub: &Arc<Hub>,
        lanes: usize,
        bundle_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (joins_tx, joins) = mpsc::unbounded_channel();
                let feed = Feed {
                    frames: hub.link(),
                    seen: hub.published(),
                    hub: Arc::clone(hub),
                    bundle_wait,
                };
                tokio::spawn(lane(feed, joins, Arc::clone(&metrics)));
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

/// A lane's view of the hub's feed: frames in batches.
struct Feed {
    frames: broadcast::Receiver<Frame>,
    /// The publication number of the newest frame read or caught up on.
    seen: u64,
    /// Where frames the feed lost are caught up from.
    hub: Arc<Hub>,
    bundle_wait: Duration,
}

/// What a lane read from its feed in one go.
enum Batch {
    /// Frames in publication order, and the streams whose ring pushed out an epoch the lane
    /// fell too far behind to get (usually none).
    Frames {
        frames: Vec<Frame>,
        broken: Vec<Arc<str>>,
    },
    Closed,
}

impl Feed {
    /// The frame that started a batch, every frame already behind it, and, when the batch holds
    /// an epoch frame without all its trend frames, whatever comes within `bundle_wait`.
    async fn batch(&mut self, first: Result<Frame, RecvError>) -> Batch {
        let (mut frames, mut lost) = (Vec::new(), 0);
        match first {
            Ok(frame) => frames.push(frame),
            Err(RecvError::Lagged(missed)) => lost += missed,
            Err(RecvError::Closed) => return Batch::Closed,
        }
        let deadline = tokio::time::Instant::now() + self.bundle_wait;
        loop {
            loop {
                match self.frames.try_recv() {
                    Ok(frame) => frames.push(frame),
                    Err(TryRecvError::Lagged(missed)) => lost += missed,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if self.bundle_wait.is_zero() || bundled(&frames) {
                break;
            }
            tokio::select! {
                next = self.frames.recv() => match next {
                    Ok(frame) => frames.push(frame),
                    Err(RecvError::Lagged(missed)) => lost += missed,
                    Err(RecvError::Closed) => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if lost == 0 {
            if let Some(last) = frames.last() {
                self.seen = last.seq;
            }
            return Batch::Frames {
                frames,
                broken: Vec::new(),
            };
        }
        // Every frame the rings still hold after the last one read, then those read that are
        // newer still; what the feed repeats of the catch-up is skipped.
        let held = self.hub.held_after(self.seen);
        tracing::warn!(
            lost,
            caught_up = held.frames.len(),
            lost_streams = held.broken.len(),
            "the fan-out fell behind its feed; caught up from the rings"
        );
        let mut caught_up = held.frames;
        caught_up.extend(frames.into_iter().filter(|f| f.seq > held.published));
        self.seen = caught_up.last().map_or(held.published, |f| f.seq);
        Batch::Frames {
            frames: caught_up,
            broken: held.broken,
        }
    }
}

/// Whether every epoch frame in `frames` has its epoch's trending and sentiment frames of its
/// stream and the popular frame beside it: then nothing of that epoch is left to wait for. One
/// pass over the batch, which at the close of an epoch holds every stream's frames at once.
fn bundled(frames: &[Frame]) -> bool {
    const TRENDING: u8 = 1;
    const SENTIMENT: u8 = 2;
    let mut seen: HashMap<(&str, u64), u8> = HashMap::new();
    let mut popular = Vec::new();
    for frame in frames {
        let bit = match frame.kind {
            Kind::Trending => TRENDING,
            Kind::Sentiment => SENTIMENT,
            Kind::Popular => {
                popular.push(frame.epoch);
                continue;
            }
            Kind::Gap | Kind::Epoch | Kind::Other => continue,
        };
        *seen.entry((&frame.stream, frame.epoch)).or_default() |= bit;
    }
    frames.iter().filter(|f| f.ring).all(|epoch| {
        seen.get(&(&*epoch.stream, epoch.epoch)) == Some(&(TRENDING | SENTIMENT))
            && popular.contains(&epoch.epoch)
    })
}

/// How long after a fan-out pass a lane asks the kernel what its viewers' peers acknowledged
/// ([`Offer::confirm`]): long enough for a viewer that keeps up to have acknowledged the epoch
/// (a round trip), well before the next epoch, whose write then need not ask. The question
/// costs about a tenth of a subscriber's fan-out CPU; asked here, it is not on the path of the
/// epoch every viewer waits for.
const CONFIRM_AFTER: Duration = Duration::from_millis(500);

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
}

async fn lane(mut feed: Feed, mut joins: mpsc::UnboundedReceiver<Join>, metrics: Arc<Metrics>) {
    let mut audiences = Audiences::default();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a fan-out pass, when to confirm what its viewers acknowledged; a new pass first
    // postpones it.
    let mut confirm_at = None;
    loop {
        let first = tokio::select! {
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
            () = tokio::time::sleep_until(confirm_at.unwrap_or_else(tokio::time::Instant::now)), if confirm_at.is_some() => {
                confirm_at = None;
                confirm(&audiences).await;
                continue;
            }
            first = feed.frames.recv() => first,
        };
        // Frames the feed still holds from before a catch-up: already delivered.
        if matches!(&first, Ok(frame) if frame.seq <= feed.seen) {
            continue;
        }
        let Batch::Frames { frames, broken } = feed.batch(first).await else {
            return;
        };
        // A viewer attached before these frames were published is in the queue by now.
        while let Ok(join) = joins.try_recv() {
            audiences.add(join);
        }
        if !broken.is_empty() {
            let mut counted = Deliveries::default();
            for stream in &broken {
                if let Some(audience) = audiences.0.get_mut(stream) {
                    // At least one epoch; the hub keeps no count of what its rings pushed out.
                    audience.retain(|outlet| outlet.missed(1, &mut counted));
                }
            }
            metrics.add(&counted);
        }
        if !frames.is_empty() {
            deliver(&mut audiences, &frames, &metrics).await;
            confirm_at = Some(tokio::time::Instant::now() + CONFIRM_AFTER);
        }
    }
}

/// Asks, for every viewer, what its peer has acknowledged ([`Offer::confirm`]), yielding as a
/// pass of writes does.
async fn confirm(audiences: &Audiences) {
    let mut asked = 0;
    for audience in audiences.0.values() {
        for outlet in audience {
            outlet.confirm();
            asked += 1;
            if asked % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Offers each viewer the frames of `batch` it gets (its stream's, and those about every
/// stream), all at once, forgetting the viewers that are gone.
async fn deliver(audiences: &mut Audiences, batch: &[Frame], metrics: &Metrics) {
    let started = std::time::Instant::now();
    let mut counted = Deliveries::default();
    let mut offered = 0;
    let mut own: HashMap<&str, Vec<Frame>> = HashMap::new();
    let mut everyone = Vec::new();
    for frame in batch {
        if &*frame.stream == ALL_STREAMS {
            everyone.push(Arc::clone(frame));
        } else if audiences.0.contains_key(&frame.stream) {
            own.entry(&frame.stream)
                .or_default()
                .push(Arc::clone(frame));
        }
    }
    let streams: Vec<Arc<str>> = if everyone.is_empty() {
        own.keys().map(|&stream| stream.into()).collect()
    } else {
        audiences.0.keys().cloned().collect()
    };
    for stream in streams {
        let frames = merged(own.remove(&*stream).unwrap_or_default(), &everyone);
        let Some(audience) = audiences.0.get_mut(&stream) else {
            continue;
        };
        let mut i = 0;
        while i < audience.len() {
            if audience[i].offer(&frames, &mut counted) {
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
        frames = batch.len(),
        since_received_ms = batch
            .first()
            .map_or(0, |f| f.at.elapsed().as_millis() as u64),
        took_ms = started.elapsed().as_millis() as u64,
        "batch fanned out"
    );
}

/// A stream's own frames and those about every stream, in publication order.
fn merged(own: Vec<Frame>, everyone: &[Frame]) -> Vec<Frame> {
    if everyone.is_empty() {
        return own;
    }
    let mut frames: Vec<Frame> = own.into_iter().chain(everyone.iter().cloned()).collect();
    frames.sort_by_key(|frame| frame.seq);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An outlet that records each offer's frames, and leaves after `lives` offers.
    struct Recorded {
        offers: Mutex<Vec<Vec<(String, u64)>>>,
        lives: AtomicUsize,
        /// How often it was told it missed frames.
        missed: AtomicUsize,
        /// How often it was asked to confirm what its peer acknowledged.
        confirmed: AtomicUsize,
    }

    impl Recorded {
        fn new(lives: usize) -> Arc<Self> {
            Arc::new(Self {
                offers: Mutex::new(Vec::new()),
                lives: AtomicUsize::new(lives),
                missed: AtomicUsize::new(0),
                confirmed: AtomicUsize::new(0),
            })
        }

        fn offers(&self) -> Vec<Vec<(String, u64)>> {
            self.offers.lock().unwrap().clone()
        }

        fn got(&self) -> Vec<(String, u64)> {
            self.offers().concat()
        }
    }

    impl Offer for Recorded {
        fn offer(&self, frames: &[Frame], _: &mut Deliveries) -> bool {
            let offer = frames
                .iter()
                .map(|frame| (frame.stream.to_string(), frame.epoch))
                .collect();
            self.offers.lock().unwrap().push(offer);
            self.lives.fetch_sub(1, Ordering::Relaxed) > 1
        }
        fn missed(&self, _: u64, _: &mut Deliveries) -> bool {
            self.missed.fetch_add(1, Ordering::Relaxed);
            true
        }
        fn confirm(&self) {
            self.confirmed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn publish(hub: &Hub, kind: &str, stream: &str, epoch: u64) {
        let text = format!(r#"{{"type":"{kind}","stream":"{stream}","epoch":{epoch}}}"#);
        assert!(hub.publish(text.into()).unwrap());
    }

    fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|&(s, e)| (s.to_owned(), e)).collect()
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what} never came");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn each_viewer_gets_its_streams_frames_and_popular_at_once_and_leavers_are_forgotten() {
        let hub = Arc::new(Hub::new(8));
        let metrics = Arc::new(Metrics::new("subscriber"));
        let fanout = Fanout::start(&hub, 2, Duration::ZERO, Arc::clone(&metrics));
        let main: Vec<_> = (0..3).map(|_| Recorded::new(usize::MAX)).collect();
        let football = Recorded::new(usize::MAX);
        let leaver = Recorded::new(1);
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
        until("the first batch", || {
            main.iter().all(|m| !m.got().is_empty()) && !leaver.got().is_empty()
        })
        .await;
        publish(&hub, "epoch", "football", 2);
        publish(&hub, "epoch", "main", 2);
        until("the second batch", || {
            main.iter().all(|m| m.got().len() == 3) && football.got().len() == 3
        })
        .await;
        for viewer in &main {
            assert_eq!(
                viewer.offers()[0],
                pairs(&[("main", 1), ("*", 1)]),
                "one offer"
            );
            assert_eq!(viewer.got(), pairs(&[("main", 1), ("*", 1), ("main", 2)]));
        }
        let want_football = pairs(&[("football", 1), ("*", 1), ("football", 2)]);
        assert_eq!(football.got(), want_football);
        // Gone after its first offer, so never offered the second.
        assert_eq!(leaver.offers(), [want_football[..2].to_vec()]);
    }

    /// One lane without a bundle wait, and a viewer of stream "a" and one of "b" on it.
    fn one_lane_watching_a_and_b(hub: &Arc<Hub>) -> (Fanout, Arc<Recorded>, Arc<Recorded>) {
        let fanout = Fanout::start(hub, 1, Duration::ZERO, Arc::new(Metrics::new("subscriber")));
        let (a, b) = (Recorded::new(usize::MAX), Recorded::new(usize::MAX));
        hub.join("a", None, |_, _, _| fanout.add("a", a.clone()));
        hub.join("b", None, |_, _, _| fanout.add("b", b.clone()));
        (fanout, a, b)
    }

    #[tokio::test]
    async fn a_lane_that_fell_behind_catches_up_from_the_rings_and_tells_only_who_lost_an_epoch() {
        let hub = Arc::new(Hub::new(2));
        let (_fanout, a, b) = one_lane_watching_a_and_b(&hub);
        // Published without a yield, so the lane reads none of it before its feed overflows:
        // stream a's epochs 1 to 3 leave its ring of 2 on the way, b's only epoch stays.
        for epoch in 1..=3 {
            publish(&hub, "epoch", "a", epoch);
        }
        for epoch in 1..=70_000 {
            publish(&hub, "trending", "unwatched", epoch);
        }
        for epoch in 4..=5 {
            publish(&hub, "epoch", "a", epoch);
        }
        publish(&hub, "epoch", "b", 1);
        until("the catch-up", || a.got().len() == 2 && b.got().len() == 1).await;
        assert_eq!(a.got(), pairs(&[("a", 4), ("a", 5)]));
        assert_eq!(b.got(), pairs(&[("b", 1)]));
        assert_eq!(a.missed.load(Ordering::Relaxed), 1, "a lost epochs 1 to 3");
        assert_eq!(b.missed.load(Ordering::Relaxed), 0, "b lost nothing");
        // Live again: the next frame comes once, and nothing of the catch-up comes twice.
        publish(&hub, "epoch", "b", 2);
        until("the next epoch", || b.got().len() == 2).await;
        assert_eq!(b.got(), pairs(&[("b", 1), ("b", 2)]));
        assert_eq!(a.got(), pairs(&[("a", 4), ("a", 5)]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_waits_briefly_for_an_epochs_trend_frames_and_offers_them_together() {
        for (wait, offers) in [(Duration::from_millis(5), 1), (Duration::ZERO, 2)] {
            let hub = Arc::new(Hub::new(8));
            let fanout = Fanout::start(&hub, 1, wait, Arc::new(Metrics::new("subscriber")));
            let viewer = Recorded::new(usize::MAX);
            hub.join("main", None, |_, _, _| fanout.add("main", viewer.clone()));
            publish(&hub, "epoch", "main", 1);
            // The lane reads the epoch frame and, with a wait, waits for the rest.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            publish(&hub, "trending", "main", 1);
            publish(&hub, "sentiment", "main", 1);
            publish(&hub, "popular", ALL_STREAMS, 1);
            until("the epoch", || viewer.got().len() == 4).await;
            assert_eq!(viewer.offers().len(), offers, "wait {wait:?}");
            assert_eq!(
                viewer.got(),
                pairs(&[("main", 1), ("main", 1), ("main", 1), ("*", 1)])
            );
        }

        // An epoch whose trend frames never come goes alone once the wait is over.
        let hub = Arc::new(Hub::new(8));
        let fanout = Fanout::start(
            &hub,
            1,
            Duration::from_millis(5),
            Arc::new(Metrics::new("subscriber")),
        );
        let viewer = Recorded::new(usize::MAX);
        hub.join("main", None, |_, _, _| fanout.add("main", viewer.clone()));
        publish(&hub, "epoch", "main", 7);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while viewer.got().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the epoch never came"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(viewer.offers(), [pairs(&[("main", 7)])]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_confirms_its_viewers_acknowledgements_once_after_each_pass() {
        let hub = Arc::new(Hub::new(8));
        let (_fanout, a, b) = one_lane_watching_a_and_b(&hub);
        let confirmed = || [&a, &b].map(|viewer| viewer.confirmed.load(Ordering::Relaxed));
        publish(&hub, "epoch", "a", 1);
        until("the first pass", || a.got().len() == 1).await;
        // A pass just before the question is due postpones it.
        tokio::time::advance(CONFIRM_AFTER - Duration::from_millis(1)).await;
        assert_eq!(confirmed(), [0, 0]);
        publish(&hub, "epoch", "b", 1);
        until("the second pass", || b.got().len() == 1).await;
        tokio::time::advance(CONFIRM_AFTER - Duration::from_millis(1)).await;
        assert_eq!(confirmed(), [0, 0], "asked during the second pass's wait");
        tokio::time::advance(Duration::from_millis(2)).await;
        until("the question", || confirmed() == [1, 1]).await;
        // Once per pass: nothing more until the next one.
        tokio::time::advance(CONFIRM_AFTER * 4).await;
        assert_eq!(confirmed(), [1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn viewers_that_left_a_quiet_stream_are_forgotten() {
        let hub = Arc::new(Hub::new(8));
        let metrics = Arc::new(Metrics::new("subscriber"));
        let fanout = Fanout::start(&hub, 1, Duration::ZERO, Arc::clone(&metrics));
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
        until("the frame", || !stays.got().is_empty()).await;
        assert_eq!(stays.got(), [("quiet".to_owned(), 1)]);
    }
}
