//! One viewer's sending side, shared by the lane that offers it every frame of its stream and
//! the viewer's own task, which finishes whatever the peer did not take at once.
//!
//! A lane offers a viewer all the frames it has for it at once (an epoch's frame and its trend
//! frames), and the outlet writes them straight into the socket in one write when nothing is
//! waiting there, which is every epoch of a viewer that keeps up: no task wakes, nothing is
//! copied but by the kernel. Only what a socket does not take at once waits, in a small
//! conflating backlog the viewer's task drains as the socket drains.
//!
//! A viewer is kept fresh in time, not only in bytes. The kernel says how much of what it took
//! the peer has acknowledged; while the oldest live frame the peer lacks arrived more than a
//! third of the staleness bound ago, new frames are held back rather than queued behind it in
//! the kernel, and a newer epoch replaces the older ones waiting. The viewer is told how many it
//! missed as soon as they are skipped, and can fetch them with `since`. A viewer that
//! keeps skipping for twice the bound, or falls further behind than its byte budget, is closed.
//! The join's replay goes ahead of every live frame and whole: it is neither conflated, nor held,
//! nor counted against the budget.
//!
//! Everything written to a socket goes through here under one lock (frames, lag notices, pings,
//! pongs, the Close frame), so writes from the lane and from the viewer's task never interleave
//! mid-frame. The lock is held for a few non-blocking writes at most, never across an await.
//!
//! - `wire`: the two kinds of viewer socket (WebSocket, SSE) and their bytes.
//! - `backlog`: what waits for a socket: the queue, conflation, staleness, the write itself.

mod backlog;
#[cfg(test)]
mod tests;
mod wire;

pub use wire::{SseWire, Wire, WsWire};

use crate::hub::Frame;
use crate::metrics::{Deliveries, Metrics};
use backlog::{Backlog, Item, Wrote};
use bytes::Bytes;
use emostream_protocol::wire::ViewerNotice;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Live frames that may wait behind the one being written: two epochs' frames (an epoch and
/// its three trend frames each). An epoch frame already drops the older epochs' waiting frames,
/// so this only bounds a stream of trend frames without epochs.
pub const OUTBOX_FRAMES: usize = 8;

/// How often the viewer's task looks again at a viewer held back for staleness: its peer's
/// acknowledgements wake nothing.
pub const HELD_RECHECK: Duration = Duration::from_millis(100);

/// How far behind a viewer may fall.
#[derive(Debug, Clone, Copy)]
pub struct ViewerLimits {
    /// Bytes behind (waiting and conflated) before the viewer is closed as too slow.
    pub budget_bytes: usize,
    /// Live frames are held back while the oldest one the peer has not acknowledged arrived
    /// longer ago than this.
    pub hold_after: Duration,
    /// A viewer skipping frames this long without catching up is closed as too slow.
    pub close_after: Duration,
}

impl ViewerLimits {
    /// Limits for a byte budget and a staleness bound: frames are held back at a third of the
    /// bound (well inside one 2 s epoch at the default 4 s, so the next epoch already finds the
    /// viewer held), leaving the rest for the newest epoch to cross the link; a viewer skipping
    /// for twice the bound is closed.
    pub fn new(budget_bytes: usize, max_staleness: Duration) -> Self {
        Self {
            budget_bytes,
            hold_after: max_staleness / 3,
            close_after: max_staleness * 2,
        }
    }
}

/// What a lane sees of an outlet, whatever its wire.
pub trait Offer: Send + Sync {
    /// Offers the frames the lane has for the outlet's viewer now, in publication order.
    /// `false`: the viewer is gone; forget it.
    fn offer(&self, frames: &[Frame], sent: &mut Deliveries) -> bool;
    /// The lane fell so far behind its feed that the ring of this viewer's stream no longer
    /// holds at least `frames` of the frames it was owed: they are lost to this viewer.
    fn missed(&self, frames: u64, sent: &mut Deliveries) -> bool;
    /// Between epochs, off the latency path: learns what the peer has acknowledged of the
    /// frames written to it, so that the next epoch's write need not ask the kernel first (a
    /// viewer that keeps up has long had it all). Asks only while something is unconfirmed.
    fn confirm(&self);
}

/// Where an outlet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Open,
    /// Further behind than the budget: the viewer's task closes it.
    TooSlow,
    /// Closed: the fan-out forgets it.
    Gone,
}

pub struct Outlet<W> {
    backlog: Mutex<Backlog<W>>,
    /// Wakes the viewer's task: something waits that the socket did not take, or the standing
    /// changed.
    wake: Notify,
    limits: ViewerLimits,
}

impl<W: Wire> Outlet<W> {
    /// An outlet that takes no frames until [`Outlet::start`].
    pub fn new(wire: W, limits: ViewerLimits) -> Arc<Self> {
        Arc::new(Self {
            backlog: Mutex::new(Backlog::new(wire)),
            wake: Notify::new(),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Backlog<W>> {
        // Nothing under this lock can panic half-way through an update.
        self.backlog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The join: `replay` goes first and whole, then every frame published after `after`. Called
    /// under the hub's lock, so no frame falls between the two.
    /// `first`, a notice (the gap before a short replay), goes before everything. `since`, the
    /// epoch the viewer says it has: no epoch at or before it, or before the replay's newest,
    /// is sent live (a viewer that joins before the tier above has sent this tier the stream's
    /// ring would get them again as they arrive).
    pub fn start(
        &self,
        after: u64,
        since: Option<u64>,
        replay: Vec<Frame>,
        first: Option<&ViewerNotice>,
    ) {
        let mut b = self.lock();
        b.after = after;
        let replayed = replay.iter().filter(|f| f.ring).map(|f| f.epoch).max();
        b.has_epoch = since.max(replayed);
        if let Some(notice) = first {
            b.queue.push_back(Item::Control(W::notice(notice)));
        }
        if !b.queue.is_empty() || !replay.is_empty() {
            b.queue.extend(replay.into_iter().map(Item::Replay));
            b.busy_since = Some(Instant::now());
            drop(b);
            self.wake.notify_one();
        }
    }

    pub fn standing(&self) -> Standing {
        self.lock().standing
    }

    /// Whether something waits to be written.
    pub fn busy_since(&self) -> Option<Instant> {
        self.lock().busy_since
    }

    /// Whether live frames are held back for staleness: the viewer's task then looks again
    /// every [`HELD_RECHECK`].
    pub fn held(&self) -> bool {
        self.lock().held
    }

    /// Resolves when the fan-out has left work for the viewer's task.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Asks for a ping to ride along with the next frame, so that pinging a viewer of a live
    /// stream costs no write of its own.
    pub fn request_ping(&self) {
        self.lock().ping_due = true;
    }

    /// Queues the requested ping now, if no frame has taken it yet (a quiet stream).
    pub fn ping_now(&self) {
        let mut b = self.lock();
        if std::mem::take(&mut b.ping_due) && b.standing != Standing::Gone {
            b.queue.push_back(Item::Control(W::ping()));
            b.busy_since.get_or_insert_with(Instant::now);
        }
    }

    /// Queues the answer to a viewer's ping, replacing one not yet started.
    pub fn push_pong(&self, pong: Bytes) {
        let mut b = self.lock();
        if b.standing == Standing::Gone {
            return;
        }
        let started = usize::from(b.written > 0);
        let unsent = b
            .queue
            .iter()
            .skip(started)
            .position(|item| matches!(item, Item::Pong(_)));
        match unsent {
            Some(i) => b.queue[started + i] = Item::Pong(pong),
            None => b.queue.push_back(Item::Pong(pong)),
        }
        b.busy_since.get_or_insert_with(Instant::now);
    }

    /// Writes what waits until the socket takes no more (then waits for it), the viewer is held
    /// back for staleness (then the task's recheck polls again), or nothing is left.
    /// Cancel-safe: all progress lives in the backlog.
    pub fn poll_drain(&self, cx: &mut Context<'_>, metrics: &Metrics) -> Poll<io::Result<()>> {
        let mut sent = Deliveries::default();
        let mut guard = self.lock();
        let b = &mut *guard;
        let drained = loop {
            match b.write_queued(self.limits.hold_after, &mut sent) {
                Ok(Wrote::AllOut) => break Poll::Ready(Ok(())),
                Ok(Wrote::Held) => break Poll::Pending,
                Ok(Wrote::Blocked) => {}
                Err(e) => break Poll::Ready(Err(e)),
            }
            let Some(wire) = b.wire.as_mut() else {
                break Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            match wire.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        let standing = self.judge(b);
        drop(guard);
        metrics.add(&sent);
        if standing == Standing::TooSlow {
            self.wake.notify_one();
        }
        drained
    }

    /// Marks the viewer too slow once it has been skipping frames for too long.
    fn judge(&self, b: &mut Backlog<W>) -> Standing {
        if b.standing == Standing::Open
            && b.lagging_since
                .is_some_and(|since| since.elapsed() > self.limits.close_after)
        {
            b.standing = Standing::TooSlow;
        }
        b.standing
    }

    /// Ends the outlet: frames not yet started are dropped, `farewell` (a Close frame) goes after
    /// the one being written, and the fan-out forgets the viewer. The caller drains what is left
    /// under a deadline, then [`Outlet::close`]s.
    pub fn finish(&self, farewell: Option<Bytes>) {
        let mut b = self.lock();
        b.standing = Standing::Gone;
        let keep = usize::from(b.written > 0);
        b.queue.truncate(keep);
        b.missed = 0;
        if let Some(farewell) = farewell {
            b.queue.push_back(Item::Control(farewell));
        }
    }

    /// Drops the outlet's hold on the socket.
    pub fn close(&self) {
        let mut b = self.lock();
        b.standing = Standing::Gone;
        b.queue.clear();
        b.wire = None;
    }
}

impl<W: Wire> Offer for Outlet<W> {
    fn offer(&self, frames: &[Frame], sent: &mut Deliveries) -> bool {
        let mut guard = self.lock();
        let b = &mut *guard;
        match b.standing {
            Standing::Open => {}
            Standing::TooSlow => return true,
            Standing::Gone => return false,
        }
        // A batch is in publication order: what the join's replay did not cover is a tail.
        let after = b.after;
        let fresh = &frames[frames.partition_point(|frame| frame.seq <= after)..];
        let has = b.has_epoch;
        let new = |frame: &&Frame| !(frame.ring && has.is_some_and(|has| frame.epoch <= has));
        b.has_epoch = has.max(fresh.iter().filter(|f| f.ring).map(|f| f.epoch).max());
        if fresh.is_empty() {
            return true;
        }
        // Nothing waits: the socket takes the batch at once (a viewer that keeps up), or what
        // it leaves is queued for the viewer's task.
        if b.queue.is_empty() && b.missed == 0 && fresh.iter().all(|f| new(&f)) {
            let now = std::time::Instant::now();
            match b.write_direct(fresh, self.limits.hold_after, now, sent) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "viewer dropped");
                    b.standing = Standing::Gone;
                    drop(guard);
                    self.wake.notify_one();
                    return false;
                }
            }
        } else {
            // The viewer's task is writing (or an epoch it has came again): the task takes what
            // is queued here.
            let behind = !b.queue.is_empty() || b.missed > 0;
            for frame in fresh.iter().filter(new) {
                b.push(Arc::clone(frame), behind, sent);
            }
            if std::mem::take(&mut b.ping_due) {
                b.queue.push_back(Item::Control(W::ping()));
            }
            if !b.queue.is_empty() {
                b.busy_since.get_or_insert_with(tokio::time::Instant::now);
            }
        }
        if b.behind_bytes() > self.limits.budget_bytes {
            b.standing = Standing::TooSlow;
        }
        let keep = self.judge(b) != Standing::Gone;
        drop(guard);
        self.wake.notify_one();
        keep
    }

    fn missed(&self, frames: u64, sent: &mut Deliveries) -> bool {
        let mut b = self.lock();
        b.conflate(frames, 0, sent);
        b.standing != Standing::Gone
    }

    fn confirm(&self) {
        let mut b = self.lock();
        // A viewer with something queued is its task's: the drain asks as it writes.
        if b.standing == Standing::Open && b.queue.is_empty() && b.unconfirmed() {
            b.confirm(self.limits.hold_after, std::time::Instant::now());
        }
    }
}
