//! What waits for one viewer's socket: the queue, its conflation, and how far behind it is.

use super::{Standing, Wire, OUTBOX_FRAMES};
use crate::hub::Frame;
use crate::metrics::Deliveries;
use bytes::Bytes;
use std::collections::VecDeque;
use tokio::time::Instant;

pub(super) enum Item {
    /// A live frame: conflated when too many wait, counted against the byte budget.
    Frame(Frame),
    /// A frame of the join's replay. The viewer asked for all of it (`since`), so none is
    /// conflated away and none counts against the budget: on a slow link a replay of a full ring
    /// of ~1.5 KiB frames is larger than the budget by itself, and conflating or budgeting it
    /// would close the viewer, which would reconnect with the same `since` and loop. Live frames
    /// arriving meanwhile wait behind it.
    Replay(Frame),
    /// A lag notice, ping or Close: bytes, but not a delivery.
    Control(Bytes),
    /// The answer to a viewer's ping. Only the newest unsent one is kept (RFC 6455 5.5.3), so a
    /// viewer pinging fast and reading nothing cannot make its backlog grow.
    Pong(Bytes),
}

impl Item {
    pub(super) fn bytes<W: Wire>(&self) -> &Bytes {
        match self {
            Item::Frame(frame) | Item::Replay(frame) => W::frame(frame),
            Item::Control(bytes) | Item::Pong(bytes) => bytes,
        }
    }
}

pub(super) struct Backlog<W> {
    /// `None` once the outlet is closed: dropping it closes the socket (or ends the SSE body)
    /// even while the fan-out still holds the outlet.
    pub(super) wire: Option<W>,
    /// The publication number the join's replay covers: later frames come live.
    pub(super) after: u64,
    /// Not yet fully written, oldest first; the front may be partly written.
    pub(super) queue: VecDeque<Item>,
    /// Bytes of the front already written.
    pub(super) written: usize,
    /// Conflated since the last lag notice.
    pub(super) missed: u64,
    /// Bytes conflated away since the viewer last caught up.
    pub(super) missed_bytes: usize,
    /// While something waits: since when the peer has taken nothing. The write deadline runs
    /// from here, so a viewer that reads slowly but steadily is conflated and budgeted, not
    /// taken for gone.
    pub(super) busy_since: Option<Instant>,
    /// The viewer's task asked for a ping: it goes out with the next frame, in the same write.
    pub(super) ping_due: bool,
    pub(super) standing: Standing,
}

impl<W: Wire> Backlog<W> {
    /// Live frames in the queue not yet started.
    pub(super) fn waiting_frames(&self) -> impl Iterator<Item = usize> + '_ {
        let started = usize::from(self.written > 0);
        self.queue
            .iter()
            .enumerate()
            .skip(started)
            .filter(|(_, item)| matches!(item, Item::Frame(_)))
            .map(|(i, _)| i)
    }

    /// How far behind the viewer is: live frames conflated away, and live frames waiting to be
    /// written (the replay is not lag: the viewer asked for it).
    pub(super) fn behind_bytes(&self) -> usize {
        let queued: usize = self
            .queue
            .iter()
            .filter(|item| matches!(item, Item::Frame(_)))
            .map(|item| item.bytes::<W>().len())
            .sum();
        let started = match self.queue.front() {
            Some(Item::Frame(_)) => self.written,
            _ => 0,
        };
        self.missed_bytes + queued.saturating_sub(started)
    }

    /// Queues `frame` behind what waits, conflating the oldest waiting frame away if full.
    pub(super) fn push(&mut self, frame: Frame, sent: &mut Deliveries) {
        if self.waiting_frames().count() >= OUTBOX_FRAMES {
            let oldest = self.waiting_frames().next().expect("counted above");
            if let Some(Item::Frame(old)) = self.queue.remove(oldest) {
                self.conflate(1, W::frame(&old).len(), sent);
            }
        }
        self.queue.push_back(Item::Frame(frame));
        self.busy_since.get_or_insert_with(Instant::now);
    }

    pub(super) fn conflate(&mut self, frames: u64, bytes: usize, sent: &mut Deliveries) {
        self.missed += frames;
        self.missed_bytes += bytes;
        sent.conflated(frames);
    }
}
