//! One process's view of every stream: the newest epochs kept for resume, and the live feeds.
//!
//! A frame enters once, as the exact text the dataflow wrote, and leaves as clones of the same
//! refcounted bytes: a hub never parses more than a frame's head and never re-serializes it.

use axum::extract::ws::Utf8Bytes;
use emostream_protocol::wire::FrameHead;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Frames a viewer may fall behind its stream before it lags: 16 epochs are 32 s of 2 s epochs,
/// far longer than a healthy socket takes to drain one, and each slot is only a refcount.
pub const LIVE_CAPACITY: usize = 16;

/// Frames, across all streams, a downstream link may fall behind before it has to resync from the
/// ring. Links are few, so this can be generous.
const LINK_CAPACITY: usize = 1024;

/// A frame with the epoch it was routed by, so that readers never parse it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub epoch: u64,
    pub text: Utf8Bytes,
}

struct StreamState {
    /// Strictly increasing epochs, at most `ring_epochs` of them; the back is the newest.
    ring: VecDeque<Frame>,
    live: broadcast::Sender<Frame>,
}

impl StreamState {
    fn new() -> Self {
        Self {
            ring: VecDeque::new(),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }
}

pub struct Hub {
    ring_epochs: usize,
    // A std mutex: every critical section is a few pointer moves with no await inside, and a
    // frame arrives every couple of seconds per stream, so there is nothing to contend on.
    // Publishing and joining both happen under it, which is what makes "subscribe, then take the
    // ring" atomic: a joiner can neither miss a frame nor see one twice.
    streams: Mutex<HashMap<String, StreamState>>,
    links: broadcast::Sender<Utf8Bytes>,
}

impl Hub {
    /// `ring_epochs` below 1 still keeps one frame: the latest-on-join and the dedupe need it.
    pub fn new(ring_epochs: usize) -> Self {
        Self {
            ring_epochs: ring_epochs.max(1),
            streams: Mutex::new(HashMap::new()),
            links: broadcast::channel(LINK_CAPACITY).0,
        }
    }

    /// Routes one frame by its head. Returns `Ok(false)` for an epoch this stream has already
    /// passed: re-published epochs and ring replays from the tier above are dropped here.
    pub fn publish(&self, text: Utf8Bytes) -> Result<bool, serde_json::Error> {
        let head: FrameHead = serde_json::from_str(&text)?;
        let mut streams = self.lock();
        let state = streams.entry(head.stream).or_insert_with(StreamState::new);
        if state
            .ring
            .back()
            .is_some_and(|newest| newest.epoch >= head.epoch)
        {
            return Ok(false);
        }
        let frame = Frame {
            epoch: head.epoch,
            text,
        };
        if state.ring.len() == self.ring_epochs {
            state.ring.pop_front();
        }
        state.ring.push_back(frame.clone());
        // Both sends fail only when nobody listens, which is normal.
        let _ = self.links.send(frame.text.clone());
        let _ = state.live.send(frame);
        Ok(true)
    }

    /// A viewer joins `stream`: what to send at once, then its live feed. With `since`, that is
    /// every ring frame after `since`; without, the latest frame alone.
    pub fn join(
        &self,
        stream: &str,
        since: Option<u64>,
    ) -> (Vec<Frame>, broadcast::Receiver<Frame>) {
        let mut streams = self.lock();
        let state = streams
            .entry(stream.to_owned())
            .or_insert_with(StreamState::new);
        let replay = match since {
            Some(since) => state
                .ring
                .iter()
                .filter(|f| f.epoch > since)
                .cloned()
                .collect(),
            None => state.ring.back().cloned().into_iter().collect(),
        };
        (replay, state.live.subscribe())
    }

    /// Drops a stream nobody has published to and nobody watches any more, so that viewers asking
    /// for made-up stream names leave nothing behind. Call after dropping the viewer's receiver.
    pub fn forget_if_idle(&self, stream: &str) {
        let mut streams = self.lock();
        if streams
            .get(stream)
            .is_some_and(|s| s.ring.is_empty() && s.live.receiver_count() == 0)
        {
            streams.remove(stream);
        }
    }

    /// A downstream tier joins: the whole ring (each stream in epoch order), then every frame.
    pub fn link(&self) -> (Vec<Utf8Bytes>, broadcast::Receiver<Utf8Bytes>) {
        let streams = self.lock();
        (ring_of(&streams), self.links.subscribe())
    }

    /// The whole ring again, for a link that lagged: the far side's dedupe drops what it has.
    pub fn ring(&self) -> Vec<Utf8Bytes> {
        ring_of(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StreamState>> {
        // Nothing under this lock can panic half-way through an update, so a poisoned lock still
        // holds consistent state.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn ring_of(streams: &HashMap<String, StreamState>) -> Vec<Utf8Bytes> {
    streams
        .values()
        .flat_map(|s| s.ring.iter().map(|f| f.text.clone()))
        .collect()
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

    #[test]
    fn ring_keeps_only_the_newest_epochs() {
        let hub = Hub::new(3);
        for e in 1..=5 {
            assert!(hub.publish(frame("main", e)).unwrap());
        }
        let (replay, _) = hub.join("main", Some(0));
        assert_eq!(epochs(&replay), [3, 4, 5]);
        assert_eq!(replay[0].text, frame("main", 3));
        assert_eq!(
            hub.ring(),
            [frame("main", 3), frame("main", 4), frame("main", 5)]
        );
    }

    #[test]
    fn an_epoch_already_passed_is_dropped() {
        let hub = Hub::new(8);
        let (_, mut live) = hub.join("main", None);
        assert!(hub.publish(frame("main", 10)).unwrap());
        assert!(!hub.publish(frame("main", 10)).unwrap());
        assert!(!hub.publish(frame("main", 9)).unwrap());
        assert!(hub.publish(frame("main", 11)).unwrap());
        // Other streams keep their own newest epoch.
        assert!(hub.publish(frame("football", 9)).unwrap());

        assert_eq!(live.try_recv().unwrap().epoch, 10);
        assert_eq!(live.try_recv().unwrap().epoch, 11);
        assert!(matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        let (replay, _) = hub.join("main", Some(0));
        assert_eq!(epochs(&replay), [10, 11]);
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
            let (replay, _) = hub.join("main", Some(since));
            assert_eq!(epochs(&replay), want, "since={since}");
        }
    }

    #[test]
    fn joining_without_since_gets_the_latest_frame_only() {
        let hub = Hub::new(10);
        let (replay, _) = hub.join("main", None);
        assert!(replay.is_empty());
        hub.publish(frame("main", 1)).unwrap();
        hub.publish(frame("main", 2)).unwrap();
        hub.publish(frame("football", 7)).unwrap();
        let (replay, _) = hub.join("main", None);
        assert_eq!(
            replay,
            [Frame {
                epoch: 2,
                text: frame("main", 2)
            }]
        );
    }

    #[test]
    fn a_link_gets_every_stream_in_epoch_order_then_live_frames() {
        let hub = Hub::new(2);
        for (stream, e) in [("a", 1), ("b", 7), ("a", 2), ("a", 3), ("b", 8)] {
            hub.publish(frame(stream, e)).unwrap();
        }
        let (mut ring, mut live) = hub.link();
        ring.sort_by_key(|t| t.starts_with(r#"{"type":"epoch","stream":"b""#));
        assert_eq!(
            ring,
            [frame("a", 2), frame("a", 3), frame("b", 7), frame("b", 8)]
        );
        hub.publish(frame("b", 9)).unwrap();
        hub.publish(frame("b", 9)).unwrap();
        assert_eq!(live.try_recv().unwrap(), frame("b", 9));
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn idle_streams_are_forgotten_and_streams_with_frames_are_not() {
        let hub = Hub::new(2);
        let (_, watcher) = hub.join("made-up", None);
        hub.forget_if_idle("made-up");
        assert_eq!(hub.lock().len(), 1, "still watched");
        drop(watcher);
        hub.forget_if_idle("made-up");
        assert!(hub.lock().is_empty());

        hub.publish(frame("main", 1)).unwrap();
        hub.forget_if_idle("main");
        assert!(!hub.publish(frame("main", 1)).unwrap(), "dedupe survives");
    }

    #[test]
    fn a_frame_without_a_head_is_refused() {
        let hub = Hub::new(2);
        assert!(hub.publish(r#"{"type":"epoch"}"#.into()).is_err());
        assert!(hub.publish("not json".into()).is_err());
    }
}
