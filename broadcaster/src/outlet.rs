//! One viewer's sending side, shared by the fan-out that offers it every frame of its stream and
//! the viewer's own task, which finishes whatever the peer did not take at once.
//!
//! The fan-out writes a frame's shared bytes straight into the socket when nothing is waiting
//! there, which is every frame of a viewer that keeps up: no task wakes, nothing is copied but by
//! the kernel. Only what a socket does not take at once waits, in a small conflating backlog the
//! viewer's task drains as the socket drains: at most [`OUTBOX_FRAMES`] frames besides the one
//! being written. A newer frame arriving at a full backlog drops the oldest waiting one; the
//! viewer is told how many it missed just before the next frame it does get, and can fetch them
//! with `since`. A viewer further behind than its byte budget is closed.
//!
//! Everything written to a socket goes through here under one lock (frames, lag notices, pings,
//! pongs, the Close frame), so writes from the fan-out and from the viewer's task never interleave
//! mid-frame. The lock is held for one non-blocking write at most, never across an await.

use crate::hub::{Frame, FrameData};
use crate::metrics::{Conn, Deliveries, Metrics};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Frames that may wait behind the one being written. An epoch comes every 2 s with at most three
/// trend frames beside it, so a healthy viewer never has more than four waiting; a longer stall
/// conflates, and the viewer resumes with `since`.
pub const OUTBOX_FRAMES: usize = 4;

/// The notice a lagging viewer gets before the next frame.
pub fn lagged_notice(missed: u64) -> String {
    format!(r#"{{"type":"lagged","missed":{missed}}}"#)
}

/// A kind of viewer connection: its bytes for each thing sent, and its socket.
pub trait Wire: Send + 'static {
    const CONN: Conn;
    /// The bytes that carry `frame`, made once per frame per tier.
    fn frame(frame: &FrameData) -> &Bytes;
    fn lagged(missed: u64) -> Bytes;
    fn ping() -> Bytes;
    /// Writes what the peer takes now of `bytes`, then of `then` (a ping riding along), in one
    /// write and without waiting: `Ok(0)` when it takes nothing.
    fn try_write(&mut self, bytes: &Bytes, then: Option<&Bytes>) -> io::Result<usize>;
    /// Ready once [`Wire::try_write`] may make progress.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A WebSocket viewer's socket, shared with its task, which reads from it.
pub struct WsWire {
    socket: Arc<TcpStream>,
    /// `socket`'s descriptor, kept here, beside the backlog's lock: the fan-out's write then
    /// touches no memory of the socket's own (tokio's registration), one less cold cache line
    /// per viewer per frame.
    fd: RawFd,
}

impl WsWire {
    pub fn new(socket: Arc<TcpStream>) -> Self {
        let fd = socket.as_raw_fd();
        Self { socket, fd }
    }
}

impl Wire for WsWire {
    const CONN: Conn = Conn::Ws;

    fn frame(frame: &FrameData) -> &Bytes {
        &frame.ws
    }

    fn lagged(missed: u64) -> Bytes {
        crate::websocket::text(&lagged_notice(missed))
    }

    fn ping() -> Bytes {
        crate::websocket::ping()
    }

    fn try_write(&mut self, bytes: &Bytes, then: Option<&Bytes>) -> io::Result<usize> {
        // SAFETY: `self.socket` owns the descriptor and outlives this borrow of it.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let raw = socket2::SockRef::from(&fd);
        // The socket is non-blocking, so a plain send is the same write tokio would make, minus
        // its readiness bookkeeping. Only when the socket is full does the write go through
        // tokio, so that tokio learns it is no longer writable and `poll_write_ready` waits for
        // it to drain. A ping riding along makes it one `sendmsg` of two slices, on the stack:
        // this runs once per viewer per frame.
        let written = match then {
            None => match raw.send(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.socket.try_write(bytes),
                other => other,
            },
            Some(then) => {
                let slices = [io::IoSlice::new(bytes), io::IoSlice::new(then)];
                match raw.send_vectored(&slices) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.socket.try_write_vectored(&slices)
                    }
                    other => other,
                }
            }
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            // A peer that has closed its end takes nothing more, ever.
            Ok(0) if !bytes.is_empty() => Err(io::ErrorKind::WriteZero.into()),
            other => other,
        }
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_write_ready(cx)
    }
}

/// An SSE viewer's response body: hyper takes one chunk at a time from the channel's single
/// slot, so a peer that stops reading backs up here, where it is conflated and budgeted like a
/// WebSocket viewer.
pub struct SseWire(pub futures_channel::mpsc::Sender<Bytes>);

impl Wire for SseWire {
    const CONN: Conn = Conn::Sse;

    fn frame(frame: &FrameData) -> &Bytes {
        &frame.sse
    }

    fn lagged(missed: u64) -> Bytes {
        format!("event: lagged\ndata: {}\n\n", lagged_notice(missed)).into()
    }

    /// A comment: browsers ignore it, proxies see traffic.
    fn ping() -> Bytes {
        Bytes::from_static(b": ping\n\n")
    }

    fn try_write(&mut self, bytes: &Bytes, then: Option<&Bytes>) -> io::Result<usize> {
        // One chunk, so that hyper writes both at once; a ping rides along every 25 s at most.
        let chunk = match then {
            None => Bytes::clone(bytes),
            Some(then) => [&bytes[..], &then[..]].concat().into(),
        };
        let len = chunk.len();
        match self.0.try_send(chunk) {
            Ok(()) => Ok(len),
            Err(e) if e.is_full() => Ok(0),
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0
            .poll_ready(cx)
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }
}

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

enum Item {
    Frame(Frame),
    /// A lag notice, ping or Close: bytes, but not a delivery.
    Control(Bytes),
    /// The answer to a viewer's ping. Only the newest unsent one is kept (RFC 6455 5.5.3), so a
    /// viewer pinging fast and reading nothing cannot make its backlog grow.
    Pong(Bytes),
}

impl Item {
    fn bytes<W: Wire>(&self) -> &Bytes {
        match self {
            Item::Frame(frame) => W::frame(frame),
            Item::Control(bytes) | Item::Pong(bytes) => bytes,
        }
    }
}

struct Backlog<W> {
    /// `None` once the outlet is closed: dropping it closes the socket (or ends the SSE body)
    /// even while the fan-out still holds the outlet.
    wire: Option<W>,
    /// The publication number the join's replay covers: later frames come live.
    after: u64,
    /// Not yet fully written, oldest first; the front may be partly written.
    queue: VecDeque<Item>,
    /// Bytes of the front already written.
    written: usize,
    /// Conflated since the last lag notice.
    missed: u64,
    /// Bytes conflated away since the viewer last caught up.
    missed_bytes: usize,
    /// While something waits: since when the peer has taken nothing. The write deadline runs
    /// from here, so a viewer that reads slowly but steadily is conflated and budgeted, not
    /// taken for gone.
    busy_since: Option<Instant>,
    /// The viewer's task asked for a ping: it goes out with the next frame, in the same write.
    ping_due: bool,
    standing: Standing,
}

impl<W: Wire> Backlog<W> {
    /// Frames in the queue not yet started.
    fn waiting_frames(&self) -> impl Iterator<Item = usize> + '_ {
        let started = usize::from(self.written > 0);
        self.queue
            .iter()
            .enumerate()
            .skip(started)
            .filter(|(_, item)| matches!(item, Item::Frame(_)))
            .map(|(i, _)| i)
    }

    /// How far behind the viewer is: frames conflated away, and what waits to be written.
    fn behind_bytes(&self) -> usize {
        let queued: usize = self
            .queue
            .iter()
            .filter(|item| matches!(item, Item::Frame(_)))
            .map(|item| item.bytes::<W>().len())
            .sum();
        self.missed_bytes + queued.saturating_sub(self.written)
    }

    /// Queues `frame` behind what waits, conflating the oldest waiting frame away if full.
    fn push(&mut self, frame: Frame, sent: &mut Deliveries) {
        if self.waiting_frames().count() >= OUTBOX_FRAMES {
            let oldest = self.waiting_frames().next().expect("counted above");
            if let Some(Item::Frame(old)) = self.queue.remove(oldest) {
                self.conflate(1, W::frame(&old).len(), sent);
            }
        }
        self.queue.push_back(Item::Frame(frame));
        self.busy_since.get_or_insert_with(Instant::now);
    }

    fn conflate(&mut self, frames: u64, bytes: usize, sent: &mut Deliveries) {
        self.missed += frames;
        self.missed_bytes += bytes;
        sent.conflated(frames);
    }
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

    /// The join: `replay` goes first, then every frame published after `after`. Called under the
    /// hub's lock, so no frame falls between the two.
    pub fn start(&self, after: u64, replay: Vec<Frame>) {
        let mut b = self.lock();
        b.after = after;
        if !replay.is_empty() {
            b.queue.extend(replay.into_iter().map(Item::Frame));
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
                let notice = W::lagged(std::mem::take(&mut b.missed));
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
                Some(Item::Frame(frame)) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A wire that records what it takes and takes nothing while `blocked`.
    #[derive(Clone, Default)]
    struct Recorder {
        taken: Arc<Mutex<Vec<Bytes>>>,
        blocked: Arc<AtomicBool>,
        /// Bytes the next write takes at most (0: all).
        limit: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Wire for Recorder {
        const CONN: Conn = Conn::Sse;
        fn frame(frame: &FrameData) -> &Bytes {
            &frame.sse
        }
        fn lagged(missed: u64) -> Bytes {
            lagged_notice(missed).into()
        }
        fn ping() -> Bytes {
            Bytes::from_static(b": ping\n\n")
        }
        fn try_write(&mut self, bytes: &Bytes, then: Option<&Bytes>) -> io::Result<usize> {
            if self.blocked.load(Ordering::Relaxed) {
                return Ok(0);
            }
            let bytes: Bytes = [&bytes[..], then.map_or(&[][..], |t| &t[..])]
                .concat()
                .into();
            let limit = self.limit.swap(0, Ordering::Relaxed);
            let n = if limit == 0 {
                bytes.len()
            } else {
                limit.min(bytes.len())
            };
            self.taken.lock().unwrap().push(bytes.slice(..n));
            Ok(n)
        }
        fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.blocked.load(Ordering::Relaxed) {
                // Woken by the test's next poll; nothing waits on it.
                let _ = cx;
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            let taken = self.taken.lock().unwrap();
            taken
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        }
    }

    /// Frames of stream "main", published in order.
    fn frames(hub: &Hub, epochs: std::ops::RangeInclusive<u64>) -> Vec<Frame> {
        let mut link = hub.link();
        for e in epochs {
            let text = format!(r#"{{"type":"epoch","stream":"main","epoch":{e}}}"#);
            hub.publish(text.into()).unwrap();
        }
        std::iter::from_fn(|| link.try_recv().ok()).collect()
    }

    /// `n` published frames, and an outlet on a recording wire that takes live frames after
    /// none, within `budget_bytes`.
    fn fixture(n: u64, budget_bytes: usize) -> (Vec<Frame>, Recorder, Arc<Outlet<Recorder>>) {
        let hub = Hub::new(60);
        let f = frames(&hub, 1..=n);
        let wire = Recorder::default();
        let outlet = Outlet::new(wire.clone(), budget_bytes);
        outlet.start(0, Vec::new());
        (f, wire, outlet)
    }

    fn drain(outlet: &Outlet<Recorder>, metrics: &Metrics) -> Poll<io::Result<()>> {
        let waker = futures_util::task::noop_waker();
        outlet.poll_drain(&mut Context::from_waker(&waker), metrics)
    }

    fn sse(frame: &Frame) -> String {
        String::from_utf8_lossy(&frame.sse).into_owned()
    }

    #[test]
    fn a_viewer_that_keeps_up_is_written_to_directly_and_only_after_its_replay() {
        let hub = Hub::new(60);
        let f = frames(&hub, 1..=3);
        let wire = Recorder::default();
        let outlet = Outlet::new(wire.clone(), 1 << 20);
        let mut sent = Deliveries::default();
        outlet.start(f[0].seq, vec![Arc::clone(&f[0])]);
        // The replay waits for the task; live frames queue behind it, in order.
        assert!(outlet.offer(&f[0], &mut sent), "covered by the replay");
        assert!(outlet.offer(&f[1], &mut sent));
        assert_eq!(wire.text(), "");
        let metrics = Metrics::new("subscriber");
        assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
        assert_eq!(wire.text(), sse(&f[0]) + &sse(&f[1]));
        // Caught up: the next frame goes straight in.
        assert!(outlet.offer(&f[2], &mut sent));
        assert_eq!(wire.text(), sse(&f[0]) + &sse(&f[1]) + &sse(&f[2]));
        assert_eq!(outlet.busy_since(), None);
    }

    #[test]
    fn a_partial_write_is_finished_before_anything_else() {
        let (f, wire, outlet) = fixture(2, 1 << 20);
        let mut sent = Deliveries::default();
        wire.limit.store(5, Ordering::Relaxed);
        assert!(outlet.offer(&f[0], &mut sent));
        outlet.push_pong(Bytes::from_static(b"pong;"));
        outlet.push_pong(Bytes::from_static(b"newer pong;"));
        assert!(outlet.offer(&f[1], &mut sent));
        assert_eq!(wire.text(), sse(&f[0])[..5]);
        let metrics = Metrics::new("subscriber");
        assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
        // Only the newest unsent pong is kept.
        assert_eq!(wire.text(), sse(&f[0]) + "newer pong;" + &sse(&f[1]));
    }

    #[test]
    fn a_stalled_viewer_is_conflated_told_and_closed_past_its_budget() {
        let hub = Hub::new(60);
        let f = frames(&hub, 1..=9);
        let wire = Recorder::default();
        let frame_len = f[0].sse.len();
        let outlet = Outlet::new(wire.clone(), 7 * frame_len + frame_len / 2);
        outlet.start(0, Vec::new());
        let mut sent = Deliveries::default();
        wire.limit.store(3, Ordering::Relaxed);
        assert!(
            outlet.offer(&f[0], &mut sent),
            "3 bytes taken, the rest waits"
        );
        wire.blocked.store(true, Ordering::Relaxed);
        for frame in &f[1..=5] {
            assert!(outlet.offer(frame, &mut sent));
        }
        // Epoch 1 being written, 3..=6 waiting: epoch 2 was conflated away.
        assert_eq!(outlet.standing(), Standing::Open);
        assert!(outlet.offer(&f[6], &mut sent));
        // Behind: 2 conflated + 4 waiting + all but 3 bytes of epoch 1, under 7.5 frames.
        assert_eq!(outlet.standing(), Standing::Open);
        assert!(outlet.offer(&f[7], &mut sent));
        assert_eq!(outlet.standing(), Standing::TooSlow);

        // A viewer with budget to spare that took nothing of 8 frames: the newest 4, after a
        // notice of the 4 it missed.
        let other = Recorder::default();
        let patient = Outlet::new(other.clone(), 1 << 20);
        patient.start(0, Vec::new());
        other.blocked.store(true, Ordering::Relaxed);
        for frame in &f[..=7] {
            assert!(patient.offer(frame, &mut sent));
        }
        other.blocked.store(false, Ordering::Relaxed);
        let metrics = Metrics::new("subscriber");
        assert!(matches!(drain(&patient, &metrics), Poll::Ready(Ok(()))));
        let want = lagged_notice(4) + &f[4..=7].iter().map(sse).collect::<String>();
        assert_eq!(other.text(), want);
    }

    #[test]
    fn a_requested_ping_rides_along_with_the_next_frame_or_goes_alone() {
        let (f, wire, outlet) = fixture(3, 1 << 20);
        let mut sent = Deliveries::default();
        outlet.request_ping();
        assert!(outlet.offer(&f[0], &mut sent));
        // One write: the frame and the ping behind it; nothing waits.
        assert_eq!(wire.taken.lock().unwrap().len(), 1);
        assert_eq!(wire.text(), sse(&f[0]) + ": ping\n\n");
        assert_eq!(outlet.busy_since(), None);
        outlet.ping_now();
        assert_eq!(outlet.busy_since(), None, "already sent");

        // The socket takes the frame and half the ping: the rest waits for the task.
        outlet.request_ping();
        wire.limit.store(f[1].sse.len() + 4, Ordering::Relaxed);
        assert!(outlet.offer(&f[1], &mut sent));
        assert!(outlet.busy_since().is_some());
        let metrics = Metrics::new("subscriber");
        assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
        assert_eq!(
            wire.text(),
            sse(&f[0]) + ": ping\n\n" + &sse(&f[1]) + ": ping\n\n"
        );

        // A quiet stream: the ping goes alone.
        outlet.request_ping();
        outlet.ping_now();
        assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
        assert!(outlet.offer(&f[2], &mut sent));
        assert!(wire
            .text()
            .ends_with(&(": ping\n\n".to_owned() + &sse(&f[2]))));
        assert_eq!(wire.text().matches(": ping").count(), 3);
    }

    #[test]
    fn finishing_keeps_the_frame_being_written_and_then_the_farewell() {
        let (f, wire, outlet) = fixture(3, 1 << 20);
        let mut sent = Deliveries::default();
        wire.limit.store(4, Ordering::Relaxed);
        outlet.offer(&f[0], &mut sent);
        outlet.offer(&f[1], &mut sent);
        outlet.finish(Some(Bytes::from_static(b"bye")));
        assert!(
            !outlet.offer(&f[2], &mut sent),
            "a finished outlet is forgotten"
        );
        let metrics = Metrics::new("subscriber");
        assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
        assert_eq!(wire.text(), sse(&f[0]) + "bye");
        outlet.close();
        assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    }
}
