//! What waits for one viewer's socket: the queue, its conflation, how far behind the viewer is,
//! and the one routine that writes it.

use super::{Standing, Wire, OUTBOX_FRAMES};
use crate::hub::Frame;
use crate::metrics::Deliveries;
use bytes::Bytes;
use emostream_protocol::wire::ViewerNotice;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Queued items one write takes at most: an epoch's four frames, a notice and a ping fit with
/// room to spare, and a replay goes out in a few writes instead of one per frame.
pub(super) const MAX_PARTS: usize = 16;

pub(super) enum Item {
    /// A live frame: conflated when too many wait, counted against the byte budget.
    Frame(Frame),
    /// A frame of the join's replay. The viewer asked for all of it (`since`), so none is
    /// conflated away and none counts against the budget or the staleness: on a slow link a
    /// replay of a full ring of ~1.5 KiB frames is larger than the budget by itself, and
    /// conflating or budgeting it would close the viewer, which would reconnect with the same
    /// `since` and loop. Live frames arriving meanwhile wait behind it.
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

/// Live frames the kernel took: where they end in the socket's byte stream, and when this tier
/// got the oldest of them. The oldest mark the peer has not acknowledged says how stale the
/// viewer's view is.
#[derive(Clone, Copy)]
struct Mark {
    end: u64,
    at: Instant,
}

/// How a call to [`Backlog::write_queued`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wrote {
    /// Nothing waits any more.
    AllOut,
    /// The socket took less than it was offered: wait until it is writable.
    Blocked,
    /// Live frames wait because the peer is too far behind on what it already has; only time
    /// (its acknowledgements) ends that, so the viewer's task looks again shortly.
    Held,
}

pub(super) struct Backlog<W> {
    /// `None` once the outlet is closed: dropping it closes the socket (or ends the SSE body)
    /// even while the fan-out still holds the outlet.
    pub(super) wire: Option<W>,
    /// The publication number the join's replay covers: later frames come live.
    pub(super) after: u64,
    /// The newest epoch the viewer has (its `since`, its replay, what it was sent live): an
    /// epoch frame at or before it is not sent again.
    pub(super) has_epoch: Option<u64>,
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
    pub(super) busy_since: Option<tokio::time::Instant>,
    /// The viewer's task asked for a ping: it goes out with the next frame, in the same write.
    pub(super) ping_due: bool,
    pub(super) standing: Standing,
    /// Bytes the kernel has taken on this socket since the outlet started.
    handed: u64,
    /// Of those, the most the peer is known to have acknowledged.
    acked: u64,
    /// Where the join's replay ends in the byte stream: until the peer has it, nothing counts
    /// as lag.
    replay_end: u64,
    /// Live frames handed to the kernel and not yet known to be acknowledged: the oldest write,
    /// and every later one folded into the second (with the time of the oldest of them, which
    /// errs towards holding a little early). Two inline, so that a viewer costs no allocation
    /// for them: one that keeps up has at most one epoch's write outstanding, and one that does
    /// not is held back.
    marks: [Option<Mark>; 2],
    /// The last write stopped at [`Wrote::Held`].
    pub(super) held: bool,
    /// Since when the viewer has been skipping frames without a frame delivered within the
    /// staleness bound.
    pub(super) lagging_since: Option<Instant>,
}

impl<W: Wire> Backlog<W> {
    pub(super) fn new(wire: W) -> Self {
        Self {
            wire: Some(wire),
            after: u64::MAX,
            has_epoch: None,
            queue: VecDeque::new(),
            written: 0,
            missed: 0,
            missed_bytes: 0,
            busy_since: None,
            ping_due: false,
            standing: Standing::Open,
            handed: 0,
            acked: 0,
            replay_end: 0,
            marks: [None, None],
            held: false,
            lagging_since: None,
        }
    }

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

    /// Queues `frame` behind what waits. For a viewer already behind (`behind`), an epoch frame
    /// skips it forward: live frames of older epochs still waiting are dropped (they stay
    /// fetchable with `since`), unless a replay is still queued ahead of them, which is not lag;
    /// and past [`OUTBOX_FRAMES`] the oldest waiting frame goes too. A viewer that was idle takes
    /// a whole batch, however many epochs it holds (a catch-up from the tier above).
    pub(super) fn push(&mut self, frame: Frame, behind: bool, sent: &mut Deliveries) {
        if behind {
            self.skip_forward(&frame, sent);
            if self.waiting_frames().count() >= OUTBOX_FRAMES {
                let oldest = self.waiting_frames().next().expect("counted above");
                if let Some(Item::Frame(old)) = self.queue.remove(oldest) {
                    self.conflate(1, W::frame(&old).len(), sent);
                }
            }
        }
        self.queue.push_back(Item::Frame(frame));
        self.busy_since
            .get_or_insert_with(tokio::time::Instant::now);
    }

    fn skip_forward(&mut self, newest: &Frame, sent: &mut Deliveries) {
        let replaying = self
            .queue
            .iter()
            .any(|item| matches!(item, Item::Replay(_)));
        if !newest.ring || replaying {
            return;
        }
        let started = usize::from(self.written > 0);
        let (mut frames, mut bytes) = (0, 0);
        let mut i = started;
        while i < self.queue.len() {
            match &self.queue[i] {
                Item::Frame(old) if old.epoch < newest.epoch => {
                    frames += 1;
                    bytes += W::frame(old).len();
                    self.queue.remove(i);
                }
                _ => i += 1,
            }
        }
        if frames > 0 {
            self.conflate(frames, bytes, sent);
        }
    }

    pub(super) fn conflate(&mut self, frames: u64, bytes: usize, sent: &mut Deliveries) {
        self.missed += frames;
        self.missed_bytes += bytes;
        self.lagging_since.get_or_insert_with(Instant::now);
        sent.conflated(frames);
    }

    /// Writes what waits, as few writes as the socket allows: one for everything when it takes
    /// it all, which is every epoch of a viewer that keeps up. Live frames are held back while
    /// the viewer is stale ([`Backlog::stale`]), what is ahead of them still goes; a lag notice
    /// goes in front of the first live frame written after frames were conflated.
    pub(super) fn write_queued(
        &mut self,
        hold_after: Duration,
        sent: &mut Deliveries,
    ) -> io::Result<Wrote> {
        loop {
            if self.queue.is_empty() {
                self.busy_since = None;
                self.missed_bytes = 0;
                self.held = false;
                return Ok(Wrote::AllOut);
            }
            let mut parts = self.queue.len().min(MAX_PARTS);
            let started = usize::from(self.written > 0);
            let first_live = self
                .queue
                .iter()
                .skip(started)
                .position(|item| matches!(item, Item::Frame(_)))
                .map(|i| i + started);
            if let Some(i) = first_live.filter(|&i| i < parts) {
                let stale =
                    self.standing != Standing::Gone && self.stale(hold_after, Instant::now());
                // The viewer is told as soon as frames are skipped, even while the frame it
                // skips to is held back: a notice is a few bytes, and the viewer should know
                // it is behind before it can be caught up.
                let told = self.missed > 0;
                if told {
                    let missed = std::mem::take(&mut self.missed);
                    let notice = W::notice(&ViewerNotice::Lagged { missed });
                    self.queue.insert(i, Item::Control(notice));
                }
                parts = if stale {
                    i + usize::from(told)
                } else {
                    self.queue.len().min(MAX_PARTS)
                };
            }
            self.held = parts == 0;
            if self.held {
                return Ok(Wrote::Held);
            }
            let Some(wire) = self.wire.as_mut() else {
                return Err(io::ErrorKind::NotConnected.into());
            };
            let items = || self.queue.iter().take(parts).map(Item::bytes::<W>);
            let offered = items().map(Bytes::len).sum::<usize>() - self.written;
            let n = wire.try_write(items(), self.written)?;
            if n == 0 {
                return Ok(Wrote::Blocked);
            }
            sent.wrote(W::CONN);
            // The peer took something: the write deadline counts from here.
            self.busy_since = Some(tokio::time::Instant::now());
            self.consume(n, sent);
            if n < offered {
                return Ok(Wrote::Blocked);
            }
        }
    }

    /// Writes `frames` (and a due ping) straight from the lane's batch when nothing waits,
    /// which is every epoch of a viewer that keeps up: its queue is never touched, so it never
    /// holds an allocation. What the socket does not take, or everything while the viewer is
    /// stale, is queued for [`Backlog::write_queued`]. Returns whether everything went out.
    pub(super) fn write_direct(
        &mut self,
        frames: &[Frame],
        hold_after: Duration,
        now: Instant,
        sent: &mut Deliveries,
    ) -> io::Result<bool> {
        debug_assert!(self.queue.is_empty() && self.missed == 0);
        let ping = std::mem::take(&mut self.ping_due).then(W::ping);
        self.held = self.stale(hold_after, now);
        if frames.len() >= MAX_PARTS || self.held {
            self.queue
                .extend(frames.iter().map(|frame| Item::Frame(Arc::clone(frame))));
            self.queue.extend(ping.map(Item::Control));
            self.busy_since = Some(tokio::time::Instant::now());
            return Ok(false);
        }
        let Some(wire) = self.wire.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let parts = frames.iter().map(|frame| W::frame(frame)).chain(&ping);
        let mut left = wire.try_write(parts, 0)?;
        if left > 0 {
            sent.wrote(W::CONN);
        }
        let mut oldest = None;
        let mut taken = frames.len();
        for (i, frame) in frames.iter().enumerate() {
            let len = W::frame(frame).len();
            if left < len {
                taken = i;
                break;
            }
            left -= len;
            self.handed += len as u64;
            sent.sent(W::CONN, len, now.saturating_duration_since(frame.at));
            oldest.get_or_insert(frame.at);
        }
        self.mark(oldest);
        let rest = frames[taken..]
            .iter()
            .map(|frame| Item::Frame(Arc::clone(frame)))
            .chain(ping.map(Item::Control));
        for item in rest {
            if self.queue.is_empty() && left >= item.bytes::<W>().len() {
                // Only the ping can be whole here: a frame that fits was taken above.
                left -= item.bytes::<W>().len();
                self.handed += item.bytes::<W>().len() as u64;
                sent.overhead(W::CONN, item.bytes::<W>().len());
                continue;
            }
            if self.queue.is_empty() {
                self.written = left;
                self.handed += left as u64;
                left = 0;
            }
            self.queue.push_back(item);
        }
        if self.queue.is_empty() {
            return Ok(true);
        }
        self.busy_since = Some(tokio::time::Instant::now());
        Ok(false)
    }

    /// Remembers that the live frames handed to the kernel so far, the oldest of which this
    /// tier got at `oldest`, end where the byte stream is now.
    fn mark(&mut self, oldest: Option<Instant>) {
        let Some(at) = oldest else {
            return;
        };
        let end = self.handed;
        match &mut self.marks {
            [first @ None, _] => *first = Some(Mark { end, at }),
            [Some(_), second @ None] => *second = Some(Mark { end, at }),
            [Some(_), Some(later)] => later.end = end,
        }
    }

    /// Takes `n` written bytes off the front of the queue.
    fn consume(&mut self, mut n: usize, sent: &mut Deliveries) {
        let mut oldest = None;
        while n > 0 {
            let len = self.queue.front().expect("written").bytes::<W>().len() - self.written;
            if n < len {
                self.written += n;
                self.handed += n as u64;
                break;
            }
            n -= len;
            self.handed += len as u64;
            self.written = 0;
            match self.queue.pop_front().expect("written") {
                Item::Frame(frame) => {
                    sent.sent(W::CONN, W::frame(&frame).len(), frame.at.elapsed());
                    oldest.get_or_insert(frame.at);
                }
                Item::Replay(frame) => {
                    sent.sent(W::CONN, W::frame(&frame).len(), frame.at.elapsed());
                    self.replay_end = self.handed;
                }
                Item::Control(bytes) | Item::Pong(bytes) => sent.overhead(W::CONN, bytes.len()),
            }
        }
        self.mark(oldest);
        if self.queue.is_empty() && self.queue.capacity() > MAX_PARTS {
            // A replay's worth of capacity is not kept for the life of the connection.
            self.queue = VecDeque::new();
        }
    }

    /// Whether the oldest live frame the peer has not acknowledged came more than `hold_after`
    /// before `now`: what the kernel holds for it already makes the viewer that late, and more
    /// would only wait behind it. Asks the kernel (one `ioctl`) only when the oldest remembered
    /// frame is that old or the viewer is lagging, so a viewer that keeps up costs nothing
    /// between epochs, and nothing here when the lane's [`Backlog::confirm`] after the last
    /// epoch found it all acknowledged. A lagging viewer stops lagging once a frame is seen
    /// delivered within the staleness bound (three times `hold_after`): catching up on old
    /// frames is not enough.
    fn stale(&mut self, hold_after: Duration, now: Instant) -> bool {
        let Some(oldest) = self.marks[0] else {
            return false;
        };
        if self.lagging_since.is_none() && now.saturating_duration_since(oldest.at) <= hold_after {
            return false;
        }
        if !self.confirm(hold_after, now) || self.acked < self.replay_end {
            return false;
        }
        self.marks[0].is_some_and(|m| now.saturating_duration_since(m.at) > hold_after)
    }

    /// Whether live frames were handed to the kernel that the peer is not yet known to have.
    pub(super) fn unconfirmed(&self) -> bool {
        self.marks[0].is_some()
    }

    /// Asks the kernel how much of what it took the peer has acknowledged, and forgets the marks
    /// that ends. `false` if the kernel would not say.
    pub(super) fn confirm(&mut self, hold_after: Duration, now: Instant) -> bool {
        let Some(unacked) = self.wire.as_ref().and_then(W::unacknowledged) else {
            return false;
        };
        let acked = self.handed.saturating_sub(unacked as u64);
        if acked > self.acked {
            self.acked = acked;
            if self.busy_since.is_some() {
                // Acknowledgements are progress: the write deadline counts from the last one.
                self.busy_since = Some(tokio::time::Instant::now());
            }
        }
        while let Some(delivered) = self.marks[0].filter(|m| m.end <= acked) {
            if now.saturating_duration_since(delivered.at) <= hold_after * 3 {
                self.lagging_since = None;
            }
            self.marks = [self.marks[1], None];
        }
        true
    }
}
