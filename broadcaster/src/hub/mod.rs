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
//! it. The WebSocket frame and the SSE event are made from it once, by the first viewer that
//! needs them: only subscribers have viewers, so the tiers above never build them.
//!
//! Stream names are the clients' choice, so what a hub holds is bounded twice: a stream nobody
//! here watches is forgotten once it has had no frame for `idle`, and when the frames held pass
//! `max_bytes`, the unwatched streams quiet the longest go first.

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use emostream_protocol::trends::ALL_STREAMS;
use emostream_protocol::wire::{stream_tag, ViewerNotice};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Frames, across all streams, a downstream link or a fan-out lane may fall behind before it
/// loses some (and has to catch up from the rings, [`Hub::held_after`]). An epoch's close brings
/// three to four frames per stream at once, so this holds a close of some 16,000 streams. A slot
/// costs about 40 bytes, and a frame every reader has read is dropped from its slot at once.
const LINK_CAPACITY: usize = 64 * 1024;

/// What a frame costs besides its text, and a stream besides its frames, in [`Hub`]'s count of
/// the bytes it holds: the shared frame, its `Arc`s and its slot in the ring; the stream's map
/// entry, name and state.
const FRAME_OVERHEAD_BYTES: usize = 160;
const STREAM_OVERHEAD_BYTES: usize = 320;

/// What a frame is, by its `type`: how the hub keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Trending,
    Sentiment,
    Popular,
    /// A hole in a stream's epochs, reported by the tier above ([`StreamGap`]): kept as the
    /// stream's newest hole, and passed on like a trend frame but stored nowhere.
    Gap,
    /// `epoch`, or a frame without a `type`: goes through the ring, as every frame did before
    /// trend frames existed.
    Epoch,
    /// A type this tier does not know (a newer dataflow's): passed on as it came, like a trend
    /// frame, but stored nowhere and never deduplicated. Through the ring it would take the place
    /// of its epoch's real epoch frame, which the dedupe would then drop as already passed.
    #[serde(other)]
    Other,
}

impl Kind {
    /// The slot of [`StreamState::latest`] a trend frame lives in; `None` for the ring's frames.
    fn trend_slot(self) -> Option<usize> {
        match self {
            Kind::Trending => Some(0),
            Kind::Sentiment => Some(1),
            Kind::Popular => Some(2),
            Kind::Gap | Kind::Epoch | Kind::Other => None,
        }
    }
}

/// Just enough of any frame to route it. Missing `type` means an epoch, as before it was read.
/// Every kind has an `epoch` but a gap, which has `since` and `oldest` instead (and a kind this
/// tier does not know, which needs only its `stream`).
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type", default = "Head::epoch")]
    kind: Kind,
    stream: String,
    epoch: Option<u64>,
    since: Option<u64>,
    oldest: Option<u64>,
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
    /// [`FrameData::ws`], once a viewer needed it.
    pub ws: OnceLock<Bytes>,
    /// [`FrameData::sse`], once a viewer needed it.
    pub sse: OnceLock<Bytes>,
    /// When this tier got it, for the delivery-latency metric.
    pub at: Instant,
}

impl FrameData {
    /// The text as a WebSocket text frame: what WebSocket viewers get.
    pub fn ws(&self) -> &Bytes {
        self.ws
            .get_or_init(|| crate::viewers::websocket::text(&self.text))
    }

    /// The text as `data:` lines, after `id: <epoch>` for an epoch frame and `event: gap` for a
    /// gap (a notice, named as every notice is): what SSE viewers get.
    pub fn sse(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let head = match self.kind {
                _ if self.ring => format!("id: {}\n", self.epoch),
                Kind::Gap => "event: gap\n".to_owned(),
                _ => String::new(),
            };
            sse_event(head, &self.text)
        })
    }

    /// What holding it costs, in [`Hub`]'s count.
    fn cost(&self) -> usize {
        self.text.len() + FRAME_OVERHEAD_BYTES
    }
}

pub type Frame = Arc<FrameData>;

/// The SSE event for a frame, after `head`. An epoch frame's id is its epoch, so `Last-Event-ID`
/// resumes after it; a trend frame has none, so that the browser keeps resuming from the last
/// epoch frame (a trend frame of epoch E can arrive before epoch E's own frame).
fn sse_event(head: String, text: &str) -> Bytes {
    let mut event = head;
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
    /// Links to lower tiers that asked for this stream by name (a cluster publisher's
    /// subscribers): it is watched below, so it is not forgotten here either.
    wanted_below: usize,
    /// The tier above has sent its whole ring of this stream since it was last subscribed.
    synced: bool,
    /// The publication number of the newest frame pushed out of the ring: a reader of the feed
    /// that fell behind before it cannot get it from the ring any more.
    evicted_seq: u64,
    /// When the stream was created or last got a frame.
    last_frame: Instant,
    /// What its frames cost ([`FrameData::cost`]).
    bytes: usize,
    /// The newest hole the tier above reported, `(since, oldest)`: epochs after `since` and
    /// before `oldest` are lost here.
    hole: Option<(u64, u64)>,
}

impl StreamState {
    fn new() -> Self {
        Self {
            ring: VecDeque::new(),
            evicted: None,
            latest: Default::default(),
            watchers: 0,
            wanted_below: 0,
            synced: false,
            evicted_seq: 0,
            last_frame: Instant::now(),
            bytes: 0,
            hole: None,
        }
    }

    fn cost(&self) -> usize {
        self.bytes + STREAM_OVERHEAD_BYTES
    }

    /// Nobody here or below asked for it: it may be forgotten.
    fn unwatched(&self) -> bool {
        self.watchers == 0 && self.wanted_below == 0
    }
}

/// How much a hub holds before it forgets streams nobody watches.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Epochs kept per stream for `since` resumes; below 1 still keeps one, as the
    /// latest-on-join and the dedupe need it.
    pub ring_epochs: usize,
    /// An unwatched stream with no frame for this long is forgotten ([`Hub::forget_idle`]).
    pub idle: Duration,
    /// Past this many bytes of held frames, unwatched streams are forgotten, the longest quiet
    /// first, until a tenth of it is free again.
    pub max_bytes: usize,
}

impl Retention {
    /// Only a ring: nothing is forgotten for being idle or large (tests, benchmarks).
    pub fn ring(ring_epochs: usize) -> Self {
        Self {
            ring_epochs,
            idle: Duration::MAX,
            max_bytes: usize::MAX,
        }
    }
}

/// The streams a hub holds, and what their frames cost together.
#[derive(Default)]
struct Streams {
    map: HashMap<Arc<str>, StreamState>,
    bytes: usize,
    /// The newest epoch of any stream forgotten so far, or that may have passed this hub by
    /// before it started ([`Hub::missed_before`]): a stream made after that may have had epochs
    /// up to it, so a resume from before it is told of a gap. (Per stream it would cost what
    /// forgetting frees; a resume that old is rare.)
    forgot_through: u64,
    /// Streams forgotten so far: what a link keeps per stream of its lower tier is pruned when
    /// this moves ([`Hub::retain_held`]).
    forgotten: u64,
}

impl std::ops::Deref for Streams {
    type Target = HashMap<Arc<str>, StreamState>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Streams {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Streams {
    /// How many streams this process's viewers watch.
    fn watched(&self) -> usize {
        self.values().filter(|s| s.watchers > 0).count()
    }

    /// `stream`'s name as held, and its state, made if it has none.
    fn state(&mut self, stream: &str) -> (Arc<str>, &mut StreamState) {
        let name = match self.map.get_key_value(stream) {
            Some((name, _)) => Arc::clone(name),
            None => {
                let mut state = StreamState::new();
                state.evicted = (self.forgot_through > 0).then_some(self.forgot_through);
                self.bytes += state.cost();
                let name: Arc<str> = stream.into();
                self.map.insert(Arc::clone(&name), state);
                name
            }
        };
        let state = self.map.get_mut(&name).expect("found or just made");
        (name, state)
    }

    fn forget(&mut self, stream: &str) {
        if let Some(state) = self.map.remove(stream) {
            self.forgotten += 1;
            self.bytes -= state.cost();
            if let Some(newest) = state.ring.back() {
                self.forgot_through = self.forgot_through.max(newest.epoch);
            }
        }
    }
}

/// What a reader of the feed that fell behind can still get: see [`Hub::held_after`].
pub struct Held {
    /// Every frame still held that was published after the reader's last, in publication order.
    pub frames: Vec<Frame>,
    /// The number of the newest frame published: the feed repeats what `frames` has up to it.
    pub published: u64,
    /// The streams whose rings have since pushed out an epoch the reader never got.
    pub broken: Vec<Arc<str>>,
}

pub struct Hub {
    retention: Retention,
    // A std mutex: every critical section is a few pointer moves with no await inside, and a
    // frame arrives every couple of seconds per stream, so there is nothing to contend on.
    // Publishing and joining both happen under it, which is what makes "subscribe, then take the
    // ring" atomic: a joiner can neither miss a frame nor see one twice.
    streams: Mutex<Streams>,
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
    /// A hub that keeps `ring_epochs` per stream and never forgets a stream that has frames.
    #[cfg(test)]
    pub fn new(ring_epochs: usize) -> Self {
        Self::with_retention(Retention::ring(ring_epochs))
    }

    pub fn with_retention(retention: Retention) -> Self {
        Self {
            retention: Retention {
                ring_epochs: retention.ring_epochs.max(1),
                ..retention
            },
            streams: Mutex::new(Streams::default()),
            published: AtomicU64::new(0),
            links: broadcast::channel(LINK_CAPACITY).0,
            wanted: watch::channel(Vec::new()).0,
            synced: watch::channel(0).0,
        }
    }

    /// Epochs before `first` may have passed this hub by: a main publisher reads back only the
    /// ring's span of its topics after a (re)start, while the tiers below may hold older epochs,
    /// and a stream it sees then for the first time must not look complete. Every stream made
    /// from now on counts as having lost its epochs before `first`, as a forgotten stream's
    /// successor does: a lower tier or viewer resuming from before it is told of a gap, not
    /// handed the next epoch as if nothing were missing. Called before the first frame.
    pub fn missed_before(&self, first: u64) {
        let mut streams = self.lock();
        streams.forgot_through = streams.forgot_through.max(first.saturating_sub(1));
    }

    /// Routes one frame by its head. Returns `Ok(false)` for a frame this tier already has or
    /// has passed: an epoch at or before the stream's newest (re-published epochs, ring replays
    /// from the tier above), or a trend frame older than the stored one of its `(stream, type)`
    /// or identical to it. A trend frame of the same epoch with other content replaces it: the
    /// dataflow re-published that epoch after a restart, and the newest wins.
    pub fn publish(&self, text: Utf8Bytes) -> Result<bool, serde_json::Error> {
        use serde::de::Error as _;
        let head: Head = serde_json::from_str(&text)?;
        let missing = |field| serde_json::Error::custom(format!("a frame without `{field}`"));
        if head.kind == Kind::Gap {
            let since = head.since.ok_or_else(|| missing("since"))?;
            let oldest = head.oldest.ok_or_else(|| missing("oldest"))?;
            return Ok(self.publish_gap(&head.stream, since, oldest, text));
        }
        if head.kind == Kind::Other {
            self.pass_on(&head.stream, head.epoch.unwrap_or(0), text);
            return Ok(true);
        }
        let epoch = head.epoch.ok_or_else(|| missing("epoch"))?;
        let mut streams = self.lock();
        let streams = &mut *streams;
        let (stream, state) = streams.state(&head.stream);
        let before = state.bytes;
        let frame = match head.kind.trend_slot() {
            None => {
                if state
                    .ring
                    .back()
                    .is_some_and(|newest| newest.epoch >= epoch)
                {
                    return Ok(false);
                }
                let frame = self.frame(Arc::clone(&stream), epoch, head.kind, text);
                if state.ring.len() == self.retention.ring_epochs {
                    if let Some(old) = state.ring.pop_front() {
                        state.evicted = Some(old.epoch);
                        state.evicted_seq = old.seq;
                        state.bytes -= old.cost();
                    }
                }
                state.bytes += frame.cost();
                state.ring.push_back(Arc::clone(&frame));
                frame
            }
            Some(slot) => {
                if let Some(stored) = &state.latest[slot] {
                    if stored.epoch > epoch || (stored.epoch == epoch && stored.text == text) {
                        return Ok(false);
                    }
                }
                let frame = self.frame(Arc::clone(&stream), epoch, head.kind, text);
                state.bytes += frame.cost();
                if let Some(old) = state.latest[slot].replace(Arc::clone(&frame)) {
                    state.bytes -= old.cost();
                }
                frame
            }
        };
        state.last_frame = frame.at;
        let after = state.bytes;
        streams.bytes = streams.bytes + after - before;
        if streams.bytes > self.retention.max_bytes {
            self.make_room(streams, &stream);
        }
        // Fails only when nobody listens, which is normal.
        let _ = self.links.send(frame);
        Ok(true)
    }

    /// A hole the tier above reported in `stream`: kept (joiners from before it are told) and
    /// passed on to the links below and the stream's viewers. `false` when this tier is past it
    /// already (it holds an epoch at or after `oldest - 1`).
    fn publish_gap(&self, stream: &str, since: u64, oldest: u64, text: Utf8Bytes) -> bool {
        let mut streams = self.lock();
        let (stream, state) = streams.state(stream);
        let past = state
            .ring
            .back()
            .is_some_and(|newest| newest.epoch.saturating_add(1) >= oldest);
        if past || oldest <= since.saturating_add(1) || state.hole == Some((since, oldest)) {
            return false;
        }
        state.hole = Some((since, oldest));
        let frame = self.frame(stream, oldest, Kind::Gap, text);
        let _ = self.links.send(frame);
        true
    }

    /// A frame of a kind this tier does not know: to the links below and the stream's viewers,
    /// as it came, and kept nowhere (what it means, and whether it repeats, is not known here).
    fn pass_on(&self, stream: &str, epoch: u64, text: Utf8Bytes) {
        let mut streams = self.lock();
        let (stream, _) = streams.state(stream);
        let frame = self.frame(stream, epoch, Kind::Other, text);
        let _ = self.links.send(frame);
    }

    /// The hole a lower tier that has `stream` up to `have` would fall into, as `(since,
    /// oldest)`: epochs after `have` that have left this tier's ring (or passed it by), up to
    /// the first it still holds; or else the hole reported from above, if it lies after `have`.
    pub fn gap_after(&self, stream: &str, have: u64) -> Option<(u64, u64)> {
        let streams = self.lock();
        let state = streams.get(stream)?;
        lost_from_ring(state, have, self.retention.ring_epochs).or_else(|| {
            state
                .hole
                .filter(|&(_, oldest)| oldest > have.saturating_add(1))
                .map(|(since, oldest)| (since.max(have), oldest))
        })
    }

    /// Only the first part of [`Hub::gap_after`]: a hole reported from above went down the
    /// links as it came, so a link checking a live frame needs only this.
    pub fn lost_after(&self, stream: &str, have: u64) -> Option<(u64, u64)> {
        lost_from_ring(self.lock().get(stream)?, have, self.retention.ring_epochs)
    }

    /// The next frame in publication order. Called under the lock.
    fn frame(&self, stream: Arc<str>, epoch: u64, kind: Kind, text: Utf8Bytes) -> Frame {
        Arc::new(FrameData {
            stream,
            epoch,
            kind,
            seq: self.published.fetch_add(1, Ordering::Relaxed) + 1,
            ring: kind == Kind::Epoch,
            text,
            ws: OnceLock::new(),
            sse: OnceLock::new(),
            at: Instant::now(),
        })
    }

    /// Forgets unwatched streams, those quiet the longest first, until a tenth of
    /// [`Retention::max_bytes`] is free, sparing `keep` (the stream just published to, whose
    /// frame is on its way to the links). Forgetting a tenth at a time keeps the sort this
    /// takes rare.
    fn make_room(&self, streams: &mut Streams, keep: &str) {
        let target = self.retention.max_bytes - self.retention.max_bytes / 10;
        let mut quiet: Vec<(Instant, Arc<str>)> = streams
            .iter()
            .filter(|(name, s)| s.unwatched() && &***name != keep && &***name != ALL_STREAMS)
            .map(|(name, s)| (s.last_frame, Arc::clone(name)))
            .collect();
        quiet.sort_unstable();
        let mut forgotten = 0;
        for (_, name) in quiet {
            if streams.bytes <= target {
                break;
            }
            streams.forget(&name);
            forgotten += 1;
        }
        tracing::warn!(
            forgotten,
            held_bytes = streams.bytes,
            max_bytes = self.retention.max_bytes,
            "held frames passed their bound; forgot the unwatched streams quiet the longest"
        );
    }

    /// Forgets every stream nobody here watches that has had no frame for
    /// [`Retention::idle`]; returns how many. A stream that gets frames again later starts a
    /// new ring, and a resume from before that is told of the gap.
    pub fn forget_idle(&self) -> usize {
        let idle = self.retention.idle;
        let mut streams = self.lock();
        let gone: Vec<Arc<str>> = streams
            .iter()
            .filter(|(_, s)| s.unwatched() && s.last_frame.elapsed() >= idle)
            .map(|(name, _)| Arc::clone(name))
            .collect();
        for name in &gone {
            streams.forget(name);
        }
        if !gone.is_empty() {
            shrink_if_mostly_empty(&mut streams.map);
        }
        gone.len()
    }

    /// Streams forgotten so far, for any reason: when it moves, a link prunes what it keeps per
    /// stream ([`Hub::retain_held`]).
    pub fn forgotten(&self) -> u64 {
        self.lock().forgotten
    }

    /// Keeps only the entries of `map` whose stream this hub still holds, and gives back the
    /// room of the others: a link's per-stream view of its lower tier, after streams were
    /// forgotten here.
    pub fn retain_held<V>(&self, map: &mut HashMap<Arc<str>, V>) {
        let streams = self.lock();
        map.retain(|stream, _| streams.contains_key(stream));
        drop(streams);
        shrink_if_mostly_empty(map);
    }

    /// How many streams this hub holds, and what their frames cost ([`FrameData::cost`]).
    pub fn held(&self) -> (usize, usize) {
        let streams = self.lock();
        (streams.len(), streams.bytes)
    }

    /// A viewer of this process is about to watch `stream`: the stream is wanted from upstream
    /// until the returned guard is dropped.
    /// `None` when `stream` is not watched yet and `max_streams` others are.
    pub fn watch(self: &Arc<Self>, stream: &str, max_streams: usize) -> Option<Watching> {
        let mut streams = self.lock();
        let watched = streams.get(stream).is_some_and(|s| s.watchers > 0);
        if !watched && streams.watched() >= max_streams {
            return None;
        }
        let (_, state) = streams.state(stream);
        state.watchers += 1;
        if state.watchers == 1 {
            self.update_wanted(&streams);
        }
        Some(Watching {
            hub: Arc::clone(self),
            stream: stream.into(),
        })
    }

    /// A lower tier's link asks for `stream` by name: it is not forgotten here until the
    /// returned guard is dropped (the link drops the stream, or closes).
    pub fn want_below(self: &Arc<Self>, stream: &str) -> WantedBelow {
        let mut streams = self.lock();
        let (name, state) = streams.state(stream);
        state.wanted_below += 1;
        WantedBelow {
            hub: Arc::clone(self),
            stream: name,
        }
    }

    /// How many streams this process's viewers watch.
    pub fn watched(&self) -> usize {
        self.lock().watched()
    }

    /// The [`stream_tag`]s of the streams viewers watch here, sorted.
    pub fn watched_tags(&self) -> Vec<u32> {
        let streams = self.lock();
        let mut tags: Vec<u32> = (streams.map.iter())
            .filter(|(_, s)| s.watchers > 0)
            .map(|(name, _)| stream_tag(name))
            .collect();
        drop(streams);
        tags.sort_unstable();
        tags
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
        forget_if_empty(&mut streams, stream);
        self.update_wanted(&streams);
    }

    fn unwant_below(&self, stream: &str) {
        let mut streams = self.lock();
        if let Some(state) = streams.get_mut(stream) {
            state.wanted_below -= 1;
            forget_if_empty(&mut streams, stream);
        }
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

    /// A viewer joins `stream`. With `since` (the client's, so any `u64`: "the epoch after it"
    /// saturates rather than overflow under the lock), its replay is every ring frame after `since`;
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
        let (_, state) = streams.state(stream);
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
                let full_ring = state.ring.len() == self.retention.ring_epochs;
                let older_gone = full_ring
                    && state
                        .ring
                        .front()
                        .is_some_and(|f| f.epoch > since.saturating_add(1));
                let in_full = state.evicted.is_none_or(|e| e <= since) && !older_gone;
                (replay, Some(in_full))
            }
            None => (state.ring.back().cloned().into_iter().collect(), None),
        };
        // A hole reported from above that this join's replay spans is lost to it too.
        let hole = match (since, state.hole) {
            (Some(since), Some((from, oldest))) if since.saturating_add(1) < oldest => {
                Some((from, oldest))
            }
            _ => None,
        };
        let gap = match (since, resumed, hole) {
            (Some(since), Some(false), _) => Some(ViewerNotice::Gap {
                since,
                oldest: replay.first().map(|f| f.epoch),
            }),
            (Some(since), _, Some((from, oldest))) => Some(ViewerNotice::Gap {
                since: since.max(from),
                oldest: Some(oldest),
            }),
            _ => None,
        };
        let resumed = if gap.is_some() { Some(false) } else { resumed };
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
    /// `seq`, in publication order, the number of the newest frame published, and the streams
    /// that lost an epoch published after `seq` from their ring: what a reader of the feed whose
    /// feed lost frames after `seq` can still deliver, up to where the feed then repeats it, and
    /// which streams it has to report a loss for. A trend frame replaced since is no loss: it is
    /// state, and its newest is here.
    pub fn held_after(&self, seq: u64) -> Held {
        let streams = self.lock();
        let mut frames: Vec<Frame> = streams
            .values()
            .flat_map(|s| s.ring.iter().chain(s.latest.iter().flatten()))
            .filter(|f| f.seq > seq)
            .cloned()
            .collect();
        let broken = streams
            .iter()
            .filter(|(_, s)| s.evicted_seq > seq)
            .map(|(name, _)| Arc::clone(name))
            .collect();
        let published = self.published.load(Ordering::Relaxed);
        // Sorted once the lock is let go: with thousands of streams publishing waits on it.
        drop(streams);
        frames.sort_unstable_by_key(|f| f.seq);
        Held {
            frames,
            published,
            broken,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        // Nothing under this lock can panic half-way through an update, so a poisoned lock still
        // holds consistent state.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Epochs of a stream after `have` that have left its ring, or passed this hub by before it
/// started ([`Hub::missed_before`]), as `(have, the first epoch still held)`.
/// A full ring whose oldest epoch is past the one after `have`, on a hub that evicted none of
/// the stream's epochs itself, counts as lost too, as it does for a viewer's join
/// ([`Hub::join`]): such a hub (a restarted cluster publisher, its rings synced from above) has
/// only what the tier above still held, which evicted what came before. A gap inside a ring is
/// no loss: a stream has no epoch frame for an epoch without taps.
fn lost_from_ring(state: &StreamState, have: u64, ring_epochs: usize) -> Option<(u64, u64)> {
    let first = state.ring.iter().find(|f| f.epoch > have)?.epoch;
    let evicted_here = state.evicted.is_some_and(|e| e > have);
    let evicted_above = state.evicted.is_none()
        && state.ring.len() == ring_epochs
        && state.ring.front().is_some_and(|f| f.epoch == first);
    let lost = first > have.saturating_add(1) && (evicted_here || evicted_above);
    lost.then_some((have, first))
}

/// The newest `popular` frame, which every stream's viewers get.
fn popular(streams: &HashMap<Arc<str>, StreamState>) -> Option<Frame> {
    let slot = Kind::Popular
        .trend_slot()
        .expect("popular is a trend frame");
    streams.get(ALL_STREAMS)?.latest[slot].clone()
}

/// A stream a lower tier's link asks for; dropping it lets the stream be forgotten again.
pub struct WantedBelow {
    hub: Arc<Hub>,
    stream: Arc<str>,
}

impl Drop for WantedBelow {
    fn drop(&mut self) {
        self.hub.unwant_below(&self.stream);
    }
}

/// A map emptied by forgetting keeps its room (a `HashMap` never shrinks on its own): 10,000
/// streams gone would leave their buckets behind. Shrunk to twice what it holds once it holds
/// under a quarter of its room, so a map that grows and empties again each minute does not
/// reallocate at every sweep.
pub fn shrink_if_mostly_empty<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// Forgets `stream` if nothing was published of it and nobody here or below wants it: made-up
/// stream names leave nothing behind.
fn forget_if_empty(streams: &mut Streams, stream: &str) {
    if streams
        .get(stream)
        .is_some_and(|s| s.unwatched() && s.ring.is_empty() && s.latest.iter().all(Option::is_none))
    {
        streams.forget(stream);
    }
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
            *joined.replay[0].sse(),
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
        let Held {
            frames: held,
            published,
            broken,
        } = hub.held_after(3);
        assert!(broken.is_empty());
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
        let mut tags = [stream_tag("a"), stream_tag("b")];
        tags.sort_unstable();
        assert_eq!(hub.watched_tags(), tags);
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
        let Held {
            frames: held,
            published,
            ..
        } = hub.held_after(4);
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
            *joined.replay[1].sse(),
            "data: ".to_owned() + &latest[0] + "\n\n"
        );
    }

    fn names(hub: &Hub) -> Vec<String> {
        let mut names: Vec<String> = hub.lock().keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn unwatched_streams_quiet_for_the_idle_time_are_forgotten_and_their_bytes_counted_out() {
        let hub = Arc::new(Hub::with_retention(Retention {
            ring_epochs: 2,
            idle: Duration::ZERO,
            max_bytes: usize::MAX,
        }));
        let watched = hub.watch("watched", 8).unwrap();
        for stream in ["watched", "quiet", "other"] {
            for epoch in 1..=3 {
                hub.publish(frame(stream, epoch)).unwrap();
            }
            hub.publish(trend("trending", stream, 3, 1)).unwrap();
        }
        // Each stream: its state, a ring of epochs 2 and 3, and one trend frame.
        let stream_cost = |stream: &str| {
            STREAM_OVERHEAD_BYTES
                + frame(stream, 2).len()
                + frame(stream, 3).len()
                + trend("trending", stream, 3, 1).len()
                + 3 * FRAME_OVERHEAD_BYTES
        };
        let all: usize = ["watched", "quiet", "other"].map(stream_cost).iter().sum();
        assert_eq!(hub.held(), (3, all));
        assert_eq!(hub.forget_idle(), 2);
        assert_eq!(names(&hub), ["watched"]);
        assert_eq!(hub.held(), (1, stream_cost("watched")));
        // A forgotten stream that comes back starts afresh, and a resume from before what was
        // forgotten is told of a gap.
        hub.publish(frame("quiet", 7)).unwrap();
        let joined = join(&hub, "quiet", Some(2));
        assert_eq!(epochs(&joined.replay), [7]);
        assert_eq!(
            joined.gap,
            Some(ViewerNotice::Gap {
                since: 2,
                oldest: Some(7)
            })
        );
        assert_eq!(join(&hub, "quiet", Some(3)).gap, None);
        drop(watched);
        assert_eq!(hub.forget_idle(), 2);
        assert_eq!(hub.held(), (0, 0));
    }

    /// Forgetting thousands of streams gives back their map's room too, and is counted for the
    /// links ([`Hub::forgotten`]).
    #[test]
    fn forgetting_many_streams_gives_back_the_maps_room() {
        let hub = Arc::new(Hub::with_retention(Retention {
            ring_epochs: 2,
            idle: Duration::ZERO,
            max_bytes: usize::MAX,
        }));
        for i in 0..5000 {
            hub.publish(frame(&format!("p-{i}"), 1)).unwrap();
        }
        assert!(hub.lock().map.capacity() >= 5000);
        assert_eq!(hub.forgotten(), 0);
        assert_eq!(hub.forget_idle(), 5000);
        assert_eq!(hub.forgotten(), 5000);
        assert_eq!(hub.held(), (0, 0));
        assert!(
            hub.lock().map.capacity() <= 64,
            "{}",
            hub.lock().map.capacity()
        );
    }

    #[test]
    fn a_stream_a_lower_tier_asked_for_is_not_forgotten_until_it_lets_go() {
        let hub = Arc::new(Hub::with_retention(Retention {
            ring_epochs: 2,
            idle: Duration::ZERO,
            max_bytes: usize::MAX,
        }));
        hub.publish(frame("asked", 1)).unwrap();
        hub.publish(frame("other", 1)).unwrap();
        let asked = hub.want_below("asked");
        let made_up = hub.want_below("made-up");
        assert_eq!(hub.forget_idle(), 1);
        assert_eq!(names(&hub), ["asked", "made-up"]);
        // Let go of: a stream with frames waits for the idle sweep, a made-up name goes at once.
        drop(made_up);
        assert_eq!(names(&hub), ["asked"]);
        drop(asked);
        assert_eq!(hub.forget_idle(), 1);
        assert_eq!(hub.held(), (0, 0));
    }

    #[test]
    fn past_its_byte_bound_a_hub_forgets_the_unwatched_streams_quiet_the_longest() {
        let one = STREAM_OVERHEAD_BYTES + frame("s00", 1).len() + FRAME_OVERHEAD_BYTES;
        let hub = Arc::new(Hub::with_retention(Retention {
            ring_epochs: 4,
            idle: Duration::MAX,
            max_bytes: 10 * one,
        }));
        let _watched = hub.watch("s00", 8).unwrap();
        for n in 0..15 {
            hub.publish(frame(&format!("s{n:02}"), 1)).unwrap();
        }
        // At 11 streams' worth, two go (down to nine tenths of the bound): s01 and s02 at s10,
        // s03 and s04 at s12, s05 and s06 at s14. The watched s00 stays, however quiet.
        let kept: Vec<String> = std::iter::once(0)
            .chain(7..15)
            .map(|n| format!("s{n:02}"))
            .collect();
        assert_eq!(names(&hub), kept);
        assert_eq!(hub.held(), (9, 9 * one));
    }

    #[test]
    fn a_hole_reported_from_above_is_kept_for_joiners_and_passed_on_once() {
        let hub = Hub::new(8);
        let mut live = hub.link();
        hub.publish(frame("main", 3)).unwrap();
        hub.publish(frame("main", 4)).unwrap();
        let gap = r#"{"type":"gap","stream":"main","since":4,"oldest":9}"#;
        assert!(hub.publish(gap.into()).unwrap());
        assert!(!hub.publish(gap.into()).unwrap(), "a repeat");
        hub.publish(frame("main", 9)).unwrap();
        let past = r#"{"type":"gap","stream":"main","since":1,"oldest":3}"#;
        assert!(
            !hub.publish(past.into()).unwrap(),
            "a hole this tier is past"
        );

        let got: Vec<Frame> = std::iter::from_fn(|| live.try_recv().ok()).collect();
        assert_eq!(
            texts(&got),
            [
                frame("main", 3),
                frame("main", 4),
                gap.into(),
                frame("main", 9)
            ]
        );
        assert_eq!((got[2].kind, got[2].ring), (Kind::Gap, false));
        assert_eq!(*got[2].sse(), format!("event: gap\ndata: {gap}\n\n"));

        // A joiner whose replay spans the hole is told which of its epochs are lost; one after
        // it is not told anything.
        for (since, lost_after) in [(2, 4), (4, 4), (6, 6)] {
            let joined = join(&hub, "main", Some(since));
            let gap = ViewerNotice::Gap {
                since: lost_after,
                oldest: Some(9),
            };
            assert_eq!(joined.gap, Some(gap), "since {since}");
            assert_eq!(joined.resumed, Some(false), "since {since}");
        }
        assert_eq!(epochs(&join(&hub, "main", Some(2)).replay), [3, 4, 9]);
        assert_eq!(join(&hub, "main", Some(8)).gap, None);
        assert_eq!(join(&hub, "main", Some(8)).resumed, Some(true));
        // What a lower tier with a given newest epoch is told before its backlog.
        assert_eq!(hub.gap_after("main", 2), Some((4, 9)));
        assert_eq!(hub.gap_after("main", 4), Some((4, 9)));
        assert_eq!(hub.gap_after("main", 8), None);
        assert!(hub
            .publish(r#"{"type":"gap","stream":"main"}"#.into())
            .is_err());
    }

    /// A restarted cluster publisher fills its rings from the tier above and evicts nothing
    /// itself: a subscriber resuming from before a full ring is told of the gap, as a viewer
    /// joining would be; before a ring not full, it is not (the stream had no epochs between).
    #[test]
    fn a_resume_from_before_a_full_ring_synced_from_above_is_told_of_the_gap() {
        let hub = Hub::new(4);
        for epoch in [10, 11, 12, 13] {
            hub.publish(frame("full", epoch)).unwrap();
        }
        for epoch in [10, 11] {
            hub.publish(frame("sparse", epoch)).unwrap();
        }
        assert_eq!(hub.gap_after("full", 5), Some((5, 10)));
        assert_eq!(hub.lost_after("full", 5), Some((5, 10)));
        assert_eq!(hub.gap_after("full", 9), None);
        assert_eq!(hub.gap_after("full", 11), None);
        assert_eq!(hub.gap_after("sparse", 5), None);
        assert!(join(&hub, "full", Some(5)).gap.is_some());
        // A full ring with an epoch without taps inside it: a lower tier that has the epoch
        // before the missing one lost nothing, live or on subscribing.
        for epoch in [20, 21, 22, 24] {
            hub.publish(frame("bursty", epoch)).unwrap();
        }
        assert_eq!(hub.lost_after("bursty", 22), None);
        assert_eq!(hub.gap_after("bursty", 22), None);
        assert_eq!(hub.gap_after("bursty", 15), Some((15, 20)));
        // Once this hub has evicted epochs itself, it knows exactly what it lost.
        hub.publish(frame("bursty", 25)).unwrap();
        assert_eq!(hub.gap_after("bursty", 22), None);
        assert_eq!(hub.gap_after("bursty", 20), None);
        assert_eq!(
            hub.gap_after("bursty", 19),
            Some((19, 21)),
            "20 was evicted here"
        );
    }

    #[test]
    fn a_hub_that_may_have_missed_the_epochs_before_one_tells_resumes_from_before_it() {
        let hub = Hub::new(4);
        hub.missed_before(100);
        hub.publish(frame("main", 120)).unwrap();
        hub.publish(frame("main", 121)).unwrap();
        let joined = join(&hub, "main", Some(50));
        assert_eq!(epochs(&joined.replay), [120, 121]);
        let gap = ViewerNotice::Gap {
            since: 50,
            oldest: Some(120),
        };
        assert_eq!((joined.gap, joined.resumed), (Some(gap), Some(false)));
        assert_eq!(hub.gap_after("main", 50), Some((50, 120)));
        assert_eq!(hub.lost_after("main", 98), Some((98, 120)));
        // From 99 on the hub has seen every epoch: none came before 120.
        assert_eq!(join(&hub, "main", Some(99)).gap, None);
        assert_eq!(hub.gap_after("main", 99), None);
    }

    #[test]
    fn a_frame_of_an_unknown_type_passes_on_without_taking_its_epochs_place() {
        let hub = Hub::new(4);
        let mut live = hub.link();
        let unknown = r#"{"type":"x","stream":"main","epoch":5}"#;
        assert!(hub.publish(unknown.into()).unwrap());
        assert!(hub.publish(frame("main", 5)).unwrap());
        assert!(hub.publish(unknown.into()).unwrap(), "not deduplicated");
        let got: Vec<Frame> = std::iter::from_fn(|| live.try_recv().ok()).collect();
        assert_eq!(
            texts(&got),
            [unknown.into(), frame("main", 5), unknown.into()]
        );
        assert_eq!((got[0].kind, got[0].ring), (Kind::Other, false));
        assert_eq!(*got[0].sse(), format!("data: {unknown}\n\n"));
        assert_eq!(
            texts(&join(&hub, "main", Some(0)).replay),
            [frame("main", 5)]
        );
        assert_eq!(texts(&hub.backlog_of("main", None)), [frame("main", 5)]);
    }

    #[test]
    fn a_resume_from_the_last_possible_epoch_is_no_gap() {
        let hub = Hub::new(3);
        for e in 1..=5 {
            hub.publish(frame("main", e)).unwrap();
        }
        let joined = join(&hub, "main", Some(u64::MAX));
        assert!(joined.replay.is_empty());
        assert_eq!((joined.gap, joined.resumed), (None, Some(true)));
        assert_eq!(hub.gap_after("main", u64::MAX), None);
        let gap = format!(
            r#"{{"type":"gap","stream":"main","since":{},"oldest":9}}"#,
            u64::MAX
        );
        assert!(!hub.publish(gap.into()).unwrap(), "a hole before nothing");
    }

    #[test]
    fn a_frame_without_a_head_is_refused() {
        let hub = Hub::new(2);
        assert!(hub.publish(r#"{"type":"epoch"}"#.into()).is_err());
        assert!(hub.publish("not json".into()).is_err());
    }
}
