//! One viewer's sending side, shared by the fan-out that offers it every frame of its stream and
//! the viewer's own task, which finishes whatever the peer did not take at once.
//!
//! The fan-out writes a frame's shared bytes straight into the socket when nothing is waiting
//! there, which is every frame of a viewer that keeps up: no task wakes, nothing is copied but by
//! the kernel. Only what a socket does not take at once waits, in a small conflating backlog the
//! viewer's task drains as the socket drains: at most [`OUTBOX_FRAMES`] live frames besides the one
//! being written. A newer frame arriving at a full backlog drops the oldest waiting one; the
//! viewer is told how many it missed just before the next frame it does get, and can fetch them
//! with `since`. A viewer further behind than its byte budget is closed. The join's replay goes
//! ahead of every live frame and whole: it is neither conflated nor counted against the budget.
//!
//! Everything written to a socket goes through here under one lock (frames, lag notices, pings,
//! pongs, the Close frame), so writes from the fan-out and from the viewer's task never interleave
//! mid-frame. The lock is held for one non-blocking write at most, never across an await.
//!
//! - `wire`: the two kinds of viewer socket (WebSocket, SSE) and their bytes.
//! - `backlog`: what waits for a socket: the queue, conflation, how far behind the viewer is.

mod backlog;
#[cfg(test)]
mod tests;
mod wire;

pub use wire::{SseWire, Wire, WsWire};

use crate::hub::Frame;
use crate::metrics::{Deliveries, Metrics};
use backlog::{Backlog, Item};
use bytes::Bytes;
use emostream_protocol::wire::ViewerNotice;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Frames that may wait behind the one being written. An epoch comes every 2 s with at most three
/// trend frames beside it, so a healthy viewer never has more than four waiting; a longer stall
/// conflates, and the viewer resumes with `since`.
pub const OUTBOX_FRAMES: usize = 4;

/// What the fan-out sees of an outlet, whatever its wire.
pub trait Offer: Send + Sync {
    /// Offers a frame of the outlet's stream. `false`: the viewer is gone; forget it.
    fn offer(&self, frame: &Frame, sent: &mut Deliveries) -> bool;
    /// The fan-out itself fell `frames` behind its feed: they are lost to this viewer.
    fn missed(&self, frames: u64, sent: &mut Deliveries) -> bool;
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
    budget_bytes: usize,
}

impl<W: Wire> Outlet<W> {
    /// An outlet that takes no frames until [`Outlet::start`].
    pub fn new(wire: W, budget_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            backlog: Mutex::new(Backlog {
                wire: Some(wire),
                after: u64::MAX,
                queue: VecDeque::new(),
                written: 0,
                missed: 0,
                missed_bytes: 0,
                busy_since: None,
                ping_due: false,
                standing: Standing::Open,
            }),
            wake: Notify::new(),
            budget_bytes,
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
    /// `first`, a notice (the gap before a short replay), goes before everything.
    pub fn start(&self, after: u64, replay: Vec<Frame>, first: Option<&ViewerNotice>) {
        let mut b = self.lock();
        b.after = after;
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

    /// Writes what waits until the socket takes no more (then waits for it) or nothing is left.
    /// Cancel-safe: all progress lives in the backlog.
    pub fn poll_drain(&self, cx: &mut Context<'_>, metrics: &Metrics) -> Poll<io::Result<()>> {
        let mut guard = self.lock();
        let b = &mut *guard;
        loop {
            if b.written == 0 && b.missed > 0 && matches!(b.queue.front(), Some(Item::Frame(_))) {
                let missed = std::mem::take(&mut b.missed);
                let notice = W::notice(&ViewerNotice::Lagged { missed });
                b.queue.push_front(Item::Control(notice));
            }
            let Some(front) = b.queue.front() else {
                b.busy_since = None;
                b.missed_bytes = 0;
                return Poll::Ready(Ok(()));
            };
            let Some(wire) = b.wire.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let bytes = front.bytes::<W>();
            let n = if b.written == 0 {
                wire.try_write(bytes, None)?
            } else {
                wire.try_write(&bytes.slice(b.written..), None)?
            };
            if n == 0 {
                ready!(wire.poll_write_ready(cx))?;
                continue;
            }
            // The peer took something: the write deadline counts from here.
            b.busy_since = Some(Instant::now());
            b.written += n;
            if b.written < bytes.len() {
                continue;
            }
            b.written = 0;
            match b.queue.pop_front() {
                Some(Item::Frame(frame) | Item::Replay(frame)) => {
                    metrics.sent(W::CONN, W::frame(&frame).len(), frame.at.elapsed())
                }
                Some(Item::Control(bytes) | Item::Pong(bytes)) => {
                    metrics.overhead(W::CONN, bytes.len())
                }
                None => unreachable!("the front was just written"),
            }
        }
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

    /// Drops the socket (or the SSE body's sender).
    pub fn close(&self) {
        let mut b = self.lock();
        b.standing = Standing::Gone;
        b.queue.clear();
        b.wire = None;
    }
}

impl<W: Wire> Offer for Outlet<W> {
    fn offer(&self, frame: &Frame, sent: &mut Deliveries) -> bool {
        let mut guard = self.lock();
        let b = &mut *guard;
        match b.standing {
            Standing::Open => {}
            Standing::TooSlow => return true,
            Standing::Gone => return false,
        }
        if frame.seq <= b.after {
            return true;
        }
        // After frames the fan-out itself lost, the next frame goes through the backlog, which puts
        // the lag notice in front of it.
        if b.queue.is_empty() && b.missed == 0 {
            let Some(wire) = b.wire.as_mut() else {
                return false;
            };
            let bytes = W::frame(frame);
            let ping = b.ping_due.then(W::ping);
            let written = match &ping {
                Some(ping) => wire.try_write(bytes, Some(ping)),
                None => wire.try_write(bytes, None),
            };
            let n = match written {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "viewer dropped");
                    b.standing = Standing::Gone;
                    drop(guard);
                    self.wake.notify_one();
                    return false;
                }
            };
            if n >= bytes.len() {
                sent.sent(W::CONN, bytes.len(), frame.at.elapsed());
            } else {
                b.written = n;
                b.queue.push_back(Item::Frame(Arc::clone(frame)));
            }
            if let Some(ping) = ping {
                b.ping_due = false;
                let ping_written = n.saturating_sub(bytes.len());
                if ping_written == ping.len() {
                    sent.overhead(W::CONN, ping.len());
                } else {
                    if b.queue.is_empty() {
                        b.written = ping_written;
                    }
                    b.queue.push_back(Item::Control(ping));
                }
            }
            if b.queue.is_empty() {
                return true;
            }
            b.busy_since = Some(Instant::now());
        } else {
            b.push(Arc::clone(frame), sent);
            if std::mem::take(&mut b.ping_due) {
                b.queue.push_back(Item::Control(W::ping()));
            }
            if b.behind_bytes() > self.budget_bytes {
                b.standing = Standing::TooSlow;
            }
        }
        let keep = b.standing != Standing::Gone;
        drop(guard);
        self.wake.notify_one();
        keep
    }

    /// Every viewer of the lane is told, whichever streams the lost frames were of: the lane no
    /// longer knows, and a viewer told too much resumes with `since` and gets nothing twice.
    fn missed(&self, frames: u64, sent: &mut Deliveries) -> bool {
        let mut b = self.lock();
        b.conflate(frames, 0, sent);
        b.standing != Standing::Gone
    }
}
