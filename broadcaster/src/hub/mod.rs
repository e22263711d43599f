//! One process's view of every stream: the newest epochs kept for resume, the newest trend frame
//! of each kind, the live feeds, and which streams this process's own viewers watch.
//!
//! Epoch frames and trend frames carry the same epoch numbers, so they are kept apart: epochs go
//! through the per-stream ring and its dedupe, trend frames replace the stored one of their
//! `(stream, type)`. Both reach every downstream link and this process's fan-out through one
//! feed, in publication order, each numbered in that order so a joining viewer knows where its
//! replay ends and its live frames begin.
//!
//! A frame enters once, as the exact text the dataflow wrote, and leaves as clones of one
//! refcounted [`FrameData`]: a hub never parses more than a frame's head and never re-serializes
//! it. The WebSocket frame and the SSE event are made here too, once per frame per tier, for the
//! same reason.

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use emostream_protocol::trends::ALL_STREAMS;
use emostream_protocol::wire::ViewerNotice;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{broadcast, watch};

/// Frames, across all streams, a downstream link or a fan-out lane may fall behind before it
/// loses some. They are few and read as soon as frames come, so this can be generous.
const LINK_CAPACITY: usize = 1024;

/// What a frame is, by its `type`: how the hub keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Trending,
    Sentiment,
    Popular,
    /// `epoch`, and any type this tier does not know: those go through the ring, as every frame
    /// did before trend frames existed.
    #[serde(other)]
    Epoch,
}

impl Kind {
    /// The slot of [`StreamState::latest`] a trend frame lives in; `None` for the ring's frames.
    fn trend_slot(self) -> Option<usize> {
        match self {
            Kind::Trending => Some(0),
            Kind::Sentiment => Some(1),
            Kind::Popular => Some(2),
            Kind::Epoch => None,
        }
    }
}

/// Just enough of any frame to route it. Missing `type` means an epoch, as before it was read.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type", default = "Head::epoch")]
    kind: Kind,
    stream: String,
    epoch: u64,
}

impl Head {
    fn epoch() -> Kind {
        Kind::Epoch
    }
}

/// One frame of one stream (an epoch, or a trend frame as of an epoch), shared by every
/// connection that sends it.
#[derive(Debug)]
pub struct FrameData {
    pub stream: Arc<str>,
    pub epoch: u64,
    pub kind: Kind,
    /// Where the frame falls in this hub's publication order, counting from 1.
    pub seq: u64,
    /// An epoch frame (kept in the ring, deduplicated by epoch), not a trend frame.
    pub ring: bool,
    /// The dataflow's exact bytes: what lower tiers get.
    pub text: Utf8Bytes,
    /// The text as a WebSocket text frame: what WebSocket viewers get.
    pub ws: Bytes,
    /// The text as `data:` lines, after `id: <epoch>` for an epoch frame: what SSE viewers get.
    pub sse: Bytes,
    /// When this tier got it, for the delivery-latency metric.
    pub at: Instant,
}

pub type Frame = Arc<FrameData>;

/// The SSE event for a frame. An epoch frame's id is its epoch, so `Last-Event-ID` resumes after
/// it; a trend frame has none, so that the browser keeps resuming from the last epoch frame (a
/// trend frame of epoch E can arrive before epoch E's own frame).
fn sse_event(id: Option<u64>, text: &str) -> Bytes {
    let mut event = match id {
        Some(epoch) => format!("id: {epoch}\n"),
        None => String::new(),
    };
    // A JSON frame is one line, but a line break inside one must not end the event early.
    for line in text.split('\n') {
        event.push_str("data: ");
        event.push_str(line);
        event.push('\n');
    }
    event.push('\n');
    event.into()
}

struct StreamState {
    /// Strictly increasing epochs, at most `ring_epochs` of them; the back is the newest.
    ring: VecDeque<Frame>,
    /// The newest epoch pushed out of the ring: a resume from before it has missed something.
    evicted: Option<u64>,
    /// The newest trend frame of each kind, by [`Kind::trend_slot`]; `popular` only under
    /// [`ALL_STREAMS`].
    latest: [Option<Frame>; 3],
    /// Viewers of this process watching (or about to watch) this stream.
    watchers: usize,
    /// The tier above has sent its whole ring of this stream since it was last subscribed.
    synced: bool,
}

impl StreamState {
    fn new() -> Self {
        Self {
            ring: VecDeque::new(),
            evicted: None,
            latest: Default::default(),
            watchers: 0,
            synced: false,
        }
    }
}

pub struct Hub {
    ring_epochs: usize,
    // A std mutex: every critical section is a few pointer moves with no await inside, and a
    // frame arrives every couple of seconds per stream, so there is nothing to contend on.
    // Publishing and joining both happen under it, which is what makes "subscribe, then take the
    // ring" atomic: a joiner can neither miss a frame nor see one twice.
    streams: Mutex<HashMap<Arc<str>, StreamState>>,
    /// Frames published so far; changed only under `streams`' lock.
    published: AtomicU64,
    /// Every published frame, in order: for links to lower tiers and the viewers' fan-out.
    links: broadcast::Sender<Frame>,
    /// The watched streams, sorted: what a subscriber asks of the tier above.
    wanted: watch::Sender<Vec<String>>,
    /// Bumped whenever a stream becomes synced, waking viewers waiting to join it.
    synced: watch::Sender<u64>,
}

impl Hub {
    /// `ring_epochs` below 1 still keeps one frame: the latest-on-join and the dedupe need it.
    pub fn new(ring_epochs: usize) -> Self {
        Self {
            ring_epochs: ring_epochs.max(1),
            streams: Mutex::new(HashMap::new()),
            published: AtomicU64::new(0),
            links: broadcast::channel(LINK_CAPACITY).0,
            wanted: watch::channel(Vec::new()).0,
            synced: watch::channel(0).0,
        }
    }

    /// Routes one frame by its head. Returns `Ok(false)` for a frame this tier already has or
    /// has passed: an epoch at or before the stream's newest (re-published epochs, ring replays
    /// from the tier above), or a trend frame older than the stored one of its `(stream, type)`
    /// or identical to it. A trend frame of the same epoch with other content replaces it: the
    /// dataflow re-published that epoch after a restart, and the newest wins.
    pub fn publish(&self, text: Utf8Bytes) -> Result<bool, serde_json::Error> {
        let head: Head = serde_json::from_str(&text)?;
        let mut streams = self.lock();
        let (stream, state) = match streams.get_key_value(head.stream.as_str()) {
            Some((name, _)) => {
                let name = Arc::clone(name);
                let state = streams.get_mut(&name).expect("just found");
                (name, state)
            }
            None => {
                let name: Arc<str> = head.stream.into();
                let state = streams
                    .entry(Arc::clone(&name))
                    .or_insert_with(StreamState::new);
                (name, state)
            }
        };
        let frame = match head.kind.trend_slot() {
            None => {
                if state
                    .ring
                    .back()
                    .is_some_and(|newest| newest.epoch >= head.epoch)
                {
                    return Ok(false);
                }
                let frame = self.frame(stream, head.epoch, head.kind, text);
                if state.ring.len() == self.ring_epochs {
                    state.evicted = state.ring.pop_front().map(|f| f.epoch);
                }
                state.ring.push_back(Arc::clone(&frame));
                frame
            }
            Some(slot) => {
                if let Some(stored) = &state.latest[slot] {
                    if stored.epoch > head.epoch
                        || (stored.epoch == head.epoch && stored.text == text)
                    {
                        return Ok(false);
                    }
                }
                let frame = self.frame(stream, head.epoch, head.kind, text);
                state.latest[slot] = Some(Arc::clone(&frame));
                frame
            }
        };
        // Fails only when nobody listens, which is normal.
        let _ = self.links.send(frame);
        Ok(true)
    }

    /// The next frame in publication order; a ring frame's SSE event id is its epoch. Called
    /// under the lock.
    fn frame(&self, stream: Arc<str>, epoch: u64, kind: Kind, text: Utf8Bytes) -> Frame {
        let ring = kind.trend_slot().is_none();
        Arc::new(FrameData {
            stream,
            epoch,
            kind,
            seq: self.published.fetch_add(1, Ordering::Relaxed) + 1,
            ring,
            sse: sse_event(ring.then_some(epoch), &text),
            ws: crate::viewers::websocket::text(&text),
            text,
            at: Instant::now(),
        })
    }

    /// A viewer of this process is about to watch `stream`: the stream is wanted from upstream
    /// until the returned guard is dropped.
    /// `None` when `stream` is not watched yet and `max_streams` others are.
    pub fn watch(self: &Arc<Self>, stream: &str, max_streams: usize) -> Option<Watching> {
        let mut streams = self.lock();
        let watched = streams.get(stream).is_some_and(|s| s.watchers > 0);
        if !watched && streams.values().filter(|s| s.watchers > 0).count() >= max_streams {
            return None;
        }
        let state = streams
            .entry(stream.into())
            .or_insert_with(StreamState::new);
        state.watchers += 1;
        if state.watchers == 1 {
            self.update_wanted(&streams);
        }
        Some(Watching {
            hub: Arc::clone(self),
            stream: stream.into(),
        })
    }

    fn unwatch(&self, stream: &str) {
        let mut streams = self.lock();
        let Some(state) = streams.get_mut(stream) else {
            return;
        };
        state.watchers -= 1;
        if state.watchers > 0 {
            return;
        }
        // Frames stop coming once the tier above hears of this; a later watcher must wait for
        // the ring again.
        state.synced = false;
        if state.ring.is_empty() && state.latest.iter().all(Option::is_none) {
            // Nothing published and nobody watching: made-up stream names leave nothing behind.
            streams.remove(stream);
        }
        self.update_wanted(&streams);
    }

    fn update_wanted(&self, streams: &HashMap<Arc<str>, StreamState>) {
        let mut wanted: Vec<String> = streams
            .iter()
            .filter(|(_, s)| s.watchers > 0)
            .map(|(name, _)| name.to_string())
            .collect();
        wanted.sort();
        self.wanted.send_replace(wanted);
    }

    /// The streams this process's viewers watch, as it changes.
    pub fn wanted(&self) -> watch::Receiver<Vec<String>> {
        self.wanted.subscribe()
    }

    /// The tier above has sent its whole ring of `stream`.
    pub fn mark_synced(&self, stream: &str) {
        if let Some(state) = self.lock().get_mut(stream) {
            state.synced = true;
        }
        self.synced.send_modify(|n| *n += 1);
    }

    /// Forgets every stream's sync: the link to the tier above is new, and will sync them again.
    pub fn unsync_all(&self) {
        for state in self.lock().values_mut() {
            state.synced = false;
        }
    }

    /// Waits until `stream` is synced or `wait` has passed, whichever is first, and says which;
    /// a joiner then takes what the ring holds either way.
    pub async fn until_synced(&self, stream: &str, wait: std::time::Duration) -> bool {
        let mut changes = self.synced.subscribe();
        let synced = async {
            loop {
                if self.lock().get(stream).is_some_and(|s| s.synced) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(wait, synced).await.is_ok()
            && self.lock().get(stream).is_some_and(|s| s.synced)
    }

    /// A viewer joins `stream`. With `since`, its replay is every ring frame after `since`;
    /// without, the latest frame alone. Either way the newest trend frames a viewer of `stream`
    /// gets follow: they are state, not history, so a resuming viewer needs them as much as a new
    /// one. `attach` gets the replay and the publication number it runs up to, under this hub's
    /// lock: a viewer attached to the fan-out there misses no later frame and gets none twice.
    /// When `since` cannot be served in full, `attach` also gets the [`ViewerNotice::Gap`] that
    /// says so. Returns whether `since` could be served in full (`None` without `since`).
    pub fn join(
        &self,
        stream: &str,
        since: Option<u64>,
        attach: impl FnOnce(u64, Vec<Frame>, Option<ViewerNotice>),
    ) -> Option<bool> {
        let mut streams = self.lock();
        let popular = popular(&streams);
        let state = streams
            .entry(stream.into())
            .or_insert_with(StreamState::new);
        let (mut replay, resumed): (Vec<Frame>, _) = match since {
            Some(since) => {
                let replay = state
                    .ring
                    .iter()
                    .filter(|f| f.epoch > since)
                    .cloned()
                    .collect();
                // Served in full unless an epoch after `since` has already left the ring: this
                // one's, or (a full ring synced from the tier above, which evicted them there)
                // the ring above's.
                let full_ring = state.ring.len() == self.ring_epochs;
                let older_gone =
                    full_ring && state.ring.front().is_some_and(|f| f.epoch > since + 1);
                let in_full = state.evicted.is_none_or(|e| e <= since) && !older_gone;
                (replay, Some(in_full))
            }
            None => (state.ring.back().cloned().into_iter().collect(), None),
        };
        let gap = match (since, resumed) {
            (Some(since), Some(false)) => Some(ViewerNotice::Gap {
                since,
                oldest: state.ring.front().map(|f| f.epoch),
            }),
            _ => None,
        };
        replay.extend(state.latest.iter().flatten().cloned().chain(popular));
        attach(self.published.load(Ordering::Relaxed), replay, gap);
        resumed
    }

    /// Every frame published from now on, in order: a downstream tier's live feed (it asks for
    /// rings separately, once it has said which streams it wants), or a fan-out lane's.
    pub fn link(&self) -> broadcast::Receiver<Frame> {
        self.links.subscribe()
    }

    /// The number of the newest frame published so far.
    pub fn published(&self) -> u64 {
        let _streams = self.lock();
        self.published.load(Ordering::Relaxed)
    }

    /// The newest epoch held of each of `streams` that has one (`None`: of every stream): what a
    /// lower tier tells the tier above it already has.
    pub fn newest_epochs<'a>(
        &self,
        streams: Option<impl IntoIterator<Item = &'a str>>,
    ) -> BTreeMap<String, u64> {
        let held = self.lock();
        let newest = |(name, state): (&str, &StreamState)| {
            Some((name.to_string(), state.ring.back()?.epoch))
        };
        match streams {
            Some(streams) => streams
                .into_iter()
                .filter_map(|name| held.get(name).and_then(|s| newest((name, s))))
                .collect(),
            None => held
                .iter()
                .filter_map(|(name, s)| newest((name, s)))
                .collect(),
        }
    }

    /// What a downstream tier taking every stream lacks, given the newest epoch it `has` of each:
    /// every ring's later epochs, each ring in epoch order, then every newest trend frame (a
    /// handful per stream; which of them it has is not worth tracking).
    pub fn backlog(&self, has: &BTreeMap<String, u64>) -> Vec<Frame> {
        let streams = self.lock();
        let rings = streams.iter().flat_map(|(name, s)| {
            let after = has.get(&**name).copied();
            s.ring
                .iter()
                .filter(move |f| after.is_none_or(|after| f.epoch > after))
                .cloned()
        });
        let trends = streams
            .values()
            .flat_map(|s| s.latest.iter().flatten().cloned());
        rings.chain(trends).collect()
    }

    /// What a downstream tier starting to want `stream` lacks, given the newest epoch of it it
    /// has (`after`): the ring's later epochs in epoch order, then the newest trend frames its
    /// viewers get (the stream's own and `popular`).
    pub fn backlog_of(&self, stream: &str, after: Option<u64>) -> Vec<Frame> {
        let streams = self.lock();
        let own = streams.get(stream).into_iter().flat_map(|s| {
            let ring = s
                .ring
                .iter()
                .filter(move |f| after.is_none_or(|after| f.epoch > after));
            ring.chain(s.latest.iter().flatten()).cloned()
        });
        own.chain(popular(&streams)).collect()
    }

    /// Every frame still held (rings and newest trend frames) that was published after frame
    /// `seq`, in publication order, and the number of the newest frame published: what a link
    /// whose feed lost frames after `seq` can still send, and up to where the feed then repeats
    /// what was sent.
    pub fn held_after(&self, seq: u64) -> (Vec<Frame>, u64) {
        let streams = self.lock();
        let mut held: Vec<Frame> = streams
            .values()
            .flat_map(|s| s.ring.iter().chain(s.latest.iter().flatten()))
            .filter(|f| f.seq > seq)
            .cloned()
            .collect();
        held.sort_by_key(|f| f.seq);
        (held, self.published.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, StreamState>> {
        // Nothing under this lock can panic half-way through an update, so a poisoned lock still
        // holds consistent state.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The newest `popular` frame, which every stream's viewers get.
fn popular(streams: &HashMap<Arc<str>, StreamState>) -> Option<Frame> {
    let slot = Kind::Popular
        .trend_slot()
        .expect("popular is a trend frame");
    streams.get(ALL_STREAMS)?.latest[slot].clone()
}

/// A stream watched by one viewer; dropping it stops watching.
pub struct Watching {
    hub: Arc<Hub>,
    stream: String,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.hub.unwatch(&self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: &str, epoch: u64) -> Utf8Bytes {
        format!(r#"{{"type":"epoch","stream":"{stream}","epoch":{epoch},"total":{epoch}}}"#).into()
    }

    fn epochs(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(|f| f.epoch).collect()
    }

    fn has_newest(stream: &str, epoch: u64) -> BTreeMap<String, u64> {
        BTreeMap::from([(stream.to_string(), epoch)])
    }

    fn texts(frames: &[Frame]) -> Vec<Utf8Bytes> {
        frames.iter().map(|f| f.text.clone()).collect()
    }

    /// What [`Hub::join`] hands a viewer.
    struct Joined {
        replay: Vec<Frame>,
        after: u64,
        resumed: Option<bool>,
        gap: Option<ViewerNotice>,
    }

    fn join(hub: &Hub, stream: &str, since: Option<u64>) -> Joined {
        let mut attached = None;
        let resumed = hub.join(stream, since, |after, replay, gap| {
            attached = Some((after, replay, gap));
        });
        let (after, replay, gap) = attached.expect("attach runs on every join");
        Joined {
            replay,
            after,
            resumed,
            gap,
        }
    }

    #[test]
    fn ring_keeps_only_the_newest_epochs() {
        let hub = Hub::new(3);
        for e in 1..=5 {
            assert!(hub.publish(frame("main", e)).unwrap());
        }
        let joined = join(&hub, "main", Some(0));
        assert_eq!(epochs(&joined.replay), [3, 4, 5]);
        assert_eq!(joined.replay[0].text, frame("main", 3));
        assert_eq!(
            texts(&hub.backlog(&BTreeMap::new())),
            [frame("main", 3), frame("main", 4), frame("main", 5)]
        );
        let has = BTreeMap::from([("main".to_string(), 4)]);
        assert_eq!(texts(&hub.backlog(&has)), [frame("main", 5)]);
        assert_eq!(hub.newest_epochs(None::<[&str; 0]>), has_newest("main", 5));
    }

    #[test]
    fn a_resume_is_a_miss_only_when_a_wanted_epoch_left_the_ring() {
        let hub = Hub::new(3);
        assert_eq!(
            join(&hub, "main", Some(0)).resumed,
            Some(true),
            "empty ring"
        );
        for e in 1..=5 {
            hub.publish(frame("main", e)).unwrap();
        }
        // Epochs 1 and 2 have left the ring.
        let cases = [(0, false), (1, false), (2, true), (4, true), (9, true)];
        for (since, served) in cases {
            let joined = join(&hub, "main", Some(since));
            assert_eq!(joined.resumed, Some(served), "{since}");
            // A viewer that missed epochs is told which, before its replay.
            let gap = (!served).then_some(ViewerNotice::Gap {
                since,
                oldest: Some(3),
            });
            assert_eq!(joined.gap, gap, "{since}");
        }
        assert_eq!(join(&hub, "main", None).resumed, None);
        assert_eq!(join(&hub, "main", None).gap, None);
    }

    #[test]
    fn an_epoch_already_passed_is_dropped() {
        let hub = Hub::new(8);
        let mut live = hub.link();
        assert!(hub.publish(frame("main", 10)).unwrap());
        assert!(!hub.publish(frame("main", 10)).unwrap());
        assert!(!hub.publish(frame("main", 9)).unwrap());
        assert!(hub.publish(frame("main", 11)).unwrap());
        // Other streams keep their own newest epoch.
        assert!(hub.publish(frame("football", 9)).unwrap());

        assert_eq!(live.try_recv().unwrap().epoch, 10);
        assert_eq!(live.try_recv().unwrap().epoch, 11);
        assert_eq!(live.try_recv().unwrap().epoch, 9);
        assert!(matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        assert_eq!(epochs(&join(&hub, "main", Some(0)).replay), [10, 11]);
    }

    #[test]
    fn since_replays_exactly_the_frames_after_it_in_order() {
        let hub = Hub::new(10);
        for e in [3, 5, 8, 13] {
            hub.publish(frame("main", e)).unwrap();
        }
        let cases: [(u64, &[u64]); 6] = [
            (0, &[3, 5, 8, 13]),
            (3, &[5, 8, 13]),
            (4, &[5, 8, 13]),
            (8, &[13]),
            (13, &[]),
            (99, &[]),
        ];
        for (since, want) in cases {
            let joined = join(&hub, "main", Some(since));
            assert_eq!(epochs(&joined.replay), want, "since={since}");
        }
    }

    #[test]
    fn joining_without_since_gets_the_latest_frame_only() {
        let hub = Hub::new(10);
        assert!(join(&hub, "main", None).replay.is_empty());
        hub.publish(frame("main", 1)).unwrap();
        hub.publish(frame("main", 2)).unwrap();
        hub.publish(frame("football", 7)).unwrap();
        let joined = join(&hub, "main", None);
        assert_eq!(texts(&joined.replay), [frame("main", 2)]);
        assert_eq!(
            joined.replay[0].sse,
            "id: 2\ndata: ".to_owned() + &frame("main", 2) + "\n\n"
        );
    }

    #[test]
    fn rings_come_per_stream_in_epoch_order_and_links_get_every_new_frame() {
        let hub = Hub::new(2);
        for (stream, e) in [("a", 1), ("b", 7), ("a", 2), ("a", 3), ("b", 8)] {
            hub.publish(frame(stream, e)).unwrap();
        }
        assert_eq!(
            texts(&hub.backlog_of("a", None)),
            [frame("a", 2), frame("a", 3)]
        );
        assert_eq!(texts(&hub.backlog_of("a", Some(2))), [frame("a", 3)]);
        assert!(hub.backlog_of("a", Some(3)).is_empty());
        assert_eq!(
            texts(&hub.backlog_of("b", Some(1))),
            [frame("b", 7), frame("b", 8)]
        );
        assert!(hub.backlog_of("c", None).is_empty());
        assert_eq!(hub.newest_epochs(Some(["a", "c"])), has_newest("a", 3));
        // Five frames were published; after the third (a 2), the rings still hold a 3 and b 8.
        let (held, published) = hub.held_after(3);
        assert_eq!(published, 5);
        assert_eq!(texts(&held), [frame("a", 3), frame("b", 8)]);
        let mut live = hub.link();
        hub.publish(frame("b", 9)).unwrap();
        hub.publish(frame("b", 9)).unwrap();
        assert_eq!(live.try_recv().unwrap().text, frame("b", 9));
        assert!(live.try_recv().is_err());
    }

    #[tokio::test]
    async fn watched_streams_are_wanted_until_the_last_watcher_leaves() {
        let hub = Arc::new(Hub::new(2));
        let wanted = hub.wanted();
        let a1 = hub.watch("a", 2).unwrap();
        let a2 = hub.watch("a", 2).unwrap();
        let b = hub.watch("b", 2).unwrap();
        assert_eq!(*wanted.borrow(), ["a", "b"]);
        // Past the most streams, only another stream is refused.
        assert!(hub.watch("c", 2).is_none());
        drop(hub.watch("b", 2).unwrap());
        // Not synced: the wait runs out and says so.
        let short = std::time::Duration::from_millis(20);
        assert!(!hub.until_synced("a", short).await);
        // Synced from another task while waiting: the waiter wakes well before its deadline.
        let marker = Arc::clone(&hub);
        let mark = tokio::spawn(async move {
            tokio::task::yield_now().await;
            marker.mark_synced("a");
        });
        let started = std::time::Instant::now();
        assert!(
            hub.until_synced("a", std::time::Duration::from_secs(60))
                .await
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        mark.await.unwrap();
        drop(a1);
        assert_eq!(*wanted.borrow(), ["a", "b"]);
        drop(a2);
        assert_eq!(*wanted.borrow(), ["b"]);
        // Unwatched, "a" is no longer synced: frames for it stop coming.
        let _a3 = hub.watch("a", 2).unwrap();
        assert!(!hub.lock()["a"].synced);
        drop(b);
        assert_eq!(*wanted.borrow(), ["a"]);
        assert!(
            !hub.lock().contains_key("b"),
            "made-up streams are forgotten"
        );
    }

    /// A trend frame of `kind`; `n` stands for its content.
    fn trend(kind: &str, stream: &str, epoch: u64, n: u64) -> Utf8Bytes {
        format!(r#"{{"type":"{kind}","stream":"{stream}","epoch":{epoch},"n":{n}}}"#).into()
    }

    #[test]
    fn trend_frames_keep_the_newest_per_stream_and_type_beside_the_ring() {
        let hub = Hub::new(4);
        let mut live = hub.link();
        assert!(hub.publish(frame("main", 10)).unwrap());
        // The same epoch as the ring's newest: trend frames do not go through its dedupe.
        assert!(hub.publish(trend("trending", "main", 10, 1)).unwrap());
        assert!(hub.publish(trend("sentiment", "main", 10, 1)).unwrap());
        assert!(hub.publish(trend("popular", "*", 10, 1)).unwrap());
        assert!(
            !hub.publish(trend("trending", "main", 10, 1)).unwrap(),
            "a repeat"
        );
        assert!(
            hub.publish(trend("trending", "main", 10, 2)).unwrap(),
            "the same epoch re-published with other content wins"
        );
        assert!(
            !hub.publish(trend("trending", "main", 9, 3)).unwrap(),
            "older"
        );
        assert!(hub.publish(trend("trending", "football", 9, 1)).unwrap());
        assert!(
            hub.publish(frame("main", 11)).unwrap(),
            "epochs are unaffected"
        );

        // Every accepted frame goes out once, numbered in publication order; which viewers get
        // it is the fan-out's business.
        let got: Vec<Frame> = std::iter::from_fn(|| live.try_recv().ok()).collect();
        assert_eq!(
            texts(&got),
            [
                frame("main", 10),
                trend("trending", "main", 10, 1),
                trend("sentiment", "main", 10, 1),
                trend("popular", "*", 10, 1),
                trend("trending", "main", 10, 2),
                trend("trending", "football", 9, 1),
                frame("main", 11),
            ]
        );
        let seqs: Vec<u64> = got.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);

        // A joiner gets the epoch replay, then the newest of each trend frame it sees.
        let latest = [
            trend("trending", "main", 10, 2),
            trend("sentiment", "main", 10, 1),
            trend("popular", "*", 10, 1),
        ];
        let joined = join(&hub, "main", None);
        assert_eq!(
            joined.after, 7,
            "its replay runs up to the last frame published"
        );
        assert_eq!(texts(&joined.replay)[0], frame("main", 11));
        assert_eq!(texts(&joined.replay)[1..], latest);
        let resumed = join(&hub, "main", Some(9));
        assert_eq!(epochs(&resumed.replay[..2]), [10, 11]);
        assert_eq!(texts(&resumed.replay)[2..], latest);
        assert_eq!(texts(&hub.backlog_of("main", None))[2..], latest);
        assert_eq!(texts(&hub.backlog_of("main", Some(11))), latest);
        assert_eq!(
            texts(&join(&hub, "football", None).replay),
            [
                trend("trending", "football", 9, 1),
                trend("popular", "*", 10, 1)
            ]
        );
        assert_eq!(hub.backlog(&BTreeMap::new()).len(), 2 + 4);
        // Trend frames come again whatever is had; the ring's epochs do not.
        assert_eq!(hub.backlog(&has_newest("main", 11)).len(), 4);
        let (held, published) = hub.held_after(4);
        assert_eq!(published, 7);
        assert_eq!(
            texts(&held),
            [
                trend("trending", "main", 10, 2),
                trend("trending", "football", 9, 1),
                frame("main", 11)
            ]
        );
        // No SSE id: `Last-Event-ID` stays the last epoch frame's.
        assert_eq!(
            joined.replay[1].sse,
            "data: ".to_owned() + &latest[0] + "\n\n"
        );
    }

    #[test]
    fn a_frame_without_a_head_is_refused() {
        let hub = Hub::new(2);
        assert!(hub.publish(r#"{"type":"epoch"}"#.into()).is_err());
        assert!(hub.publish("not json".into()).is_err());
    }
}
