//! One task per viewer connection, WebSocket or SSE: the join replay, then the stream's live
//! frames through a small conflating outbox.
//!
//! A viewer reads its stream's feed through its own `broadcast::Receiver`, so the hub never waits
//! for it, and moves each frame at once into its outbox: at most [`OUTBOX_FRAMES`] refcounted
//! frames waiting behind a write the peer has not taken. When a newer frame arrives at a full
//! outbox the oldest is dropped (conflated); the viewer is told how many it missed just before
//! the next frame it does get, and can fetch them with `since`. A viewer further behind than its
//! byte budget, or one that takes nothing for [`WRITE_DEADLINE`], is closed. So a viewer that
//! never reads pins at most one frame in its socket's write buffer and a few refcounts.

use crate::hub::{Frame, FrameData};
use crate::metrics::{Conn, Metrics};
use crate::socket::{self, going_away, WRITE_DEADLINE};
use crate::tasks::Stop;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;

/// Idle viewers are pinged this often (Centrifugo's interval), which keeps proxies from timing out
/// the connection; a WebSocket viewer that answers nothing by the next ping is gone.
pub const PING_EVERY: Duration = Duration::from_secs(25);

/// Frames waiting behind a write the peer has not taken. An epoch comes every 2 s with at most
/// three trend frames (trending, sentiment, popular) beside it, so a healthy viewer never has
/// more than four waiting; a longer stall conflates, and the viewer resumes with `since`.
pub const OUTBOX_FRAMES: usize = 4;

/// What the live feed has for a viewer next.
#[derive(Debug)]
pub enum Delivery {
    Frame(Frame),
    /// The viewer fell behind the feed: `missed` frames are skipped and `newest` comes next.
    Lagged {
        missed: u64,
        newest: Option<Frame>,
    },
}

/// A viewer's live feed, conflating to the newest frame whenever it lags.
pub struct Feed {
    live: broadcast::Receiver<Frame>,
}

impl Feed {
    pub fn new(live: broadcast::Receiver<Frame>) -> Self {
        Self { live }
    }

    /// `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        match self.live.recv().await {
            Ok(frame) => Some(Delivery::Frame(frame)),
            Err(RecvError::Closed) => None,
            Err(RecvError::Lagged(skipped)) => {
                // The receiver now points at the oldest frame still buffered; newest wins, so
                // everything buffered but the last is skipped too.
                let mut missed = skipped;
                let mut newest = None;
                loop {
                    match self.live.try_recv() {
                        Ok(frame) => {
                            if newest.replace(frame).is_some() {
                                missed += 1;
                            }
                        }
                        Err(TryRecvError::Lagged(n)) => missed += n,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                Some(Delivery::Lagged { missed, newest })
            }
        }
    }
}

/// The notice a lagging viewer gets before the next frame.
pub fn lagged_notice(missed: u64) -> Utf8Bytes {
    format!(r#"{{"type":"lagged","missed":{missed}}}"#).into()
}

/// Something to write to a viewer, before its transport encodes it.
pub enum Out<'a> {
    Frame(&'a FrameData),
    Lagged(u64),
    Ping,
    /// Closed for falling further behind than the budget.
    TooSlow,
    /// Closed because this process is shutting down.
    Away,
}

/// How one kind of viewer connection carries [`Out`].
pub trait Transport {
    type Item;
    const CONN: Conn;
    /// Whether the peer answers pings (WebSocket) or cannot (SSE).
    const PONGS: bool;
    /// `None`: this transport has nothing to send for it.
    fn encode(out: Out<'_>) -> Option<Self::Item>;
    /// The bytes one frame puts on the wire, for the byte budget and metrics.
    fn frame_bytes(frame: &FrameData) -> usize;
}

/// A WebSocket viewer: frames as text messages, the dataflow's bytes unchanged.
pub struct Ws;

impl Transport for Ws {
    type Item = Message;
    const CONN: Conn = Conn::Ws;
    const PONGS: bool = true;

    fn encode(out: Out<'_>) -> Option<Message> {
        Some(match out {
            Out::Frame(f) => Message::Text(f.text.clone()),
            Out::Lagged(missed) => Message::Text(lagged_notice(missed)),
            Out::Ping => Message::Ping(Bytes::new()),
            Out::TooSlow => Message::Close(Some(CloseFrame {
                code: close_code::POLICY,
                reason: Utf8Bytes::from_static("too slow; reconnect with since"),
            })),
            Out::Away => going_away(),
        })
    }

    fn frame_bytes(frame: &FrameData) -> usize {
        frame.text.len()
    }
}

/// An SSE viewer: each frame an event whose id is its epoch; pings are comments.
pub struct Sse;

impl Transport for Sse {
    type Item = Bytes;
    const CONN: Conn = Conn::Sse;
    const PONGS: bool = false;

    fn encode(out: Out<'_>) -> Option<Bytes> {
        match out {
            Out::Frame(f) => Some(f.sse.clone()),
            Out::Lagged(missed) => {
                Some(format!("event: lagged\ndata: {}\n\n", lagged_notice(missed)).into())
            }
            Out::Ping => Some(Bytes::from_static(b": ping\n\n")),
            // Ending the response is the only close SSE has.
            Out::TooSlow | Out::Away => None,
        }
    }

    fn frame_bytes(frame: &FrameData) -> usize {
        frame.sse.len()
    }
}

/// One viewer's joined state, handed to [`serve`].
pub struct Viewer<'a> {
    pub replay: Vec<Frame>,
    pub feed: Feed,
    pub metrics: &'a Metrics,
    pub budget_bytes: usize,
    pub stop: Stop,
}

/// Frames on their way to one socket.
struct Outbox<W> {
    tx: W,
    /// Not yet handed to the socket, oldest first.
    queue: VecDeque<Frame>,
    /// Handed to the socket, not yet flushed.
    in_flight: Vec<Frame>,
    /// Something was handed to the socket since the last completed flush.
    unflushed: bool,
    /// Conflated since the last lag notice.
    missed: u64,
    /// Bytes conflated away since the viewer last caught up.
    missed_bytes: usize,
    ping_due: bool,
    /// Since when the outbox has held something the peer has not taken.
    busy_since: Option<Instant>,
}

impl<W> Outbox<W> {
    fn new(tx: W) -> Self {
        Self {
            tx,
            queue: VecDeque::new(),
            in_flight: Vec::new(),
            unflushed: false,
            missed: 0,
            missed_bytes: 0,
            ping_due: false,
            busy_since: None,
        }
    }

    fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.unflushed || self.ping_due
    }

    /// Queues `frame`, conflating the oldest waiting one away if the outbox is full.
    fn push<T: Transport>(&mut self, frame: Frame, metrics: &Metrics) {
        if self.queue.len() >= OUTBOX_FRAMES {
            if let Some(old) = self.queue.pop_front() {
                self.conflate(1, T::frame_bytes(&old), metrics);
            }
        }
        self.queue.push_back(frame);
        self.busy_since.get_or_insert_with(Instant::now);
    }

    fn conflate(&mut self, frames: u64, bytes: usize, metrics: &Metrics) {
        self.missed += frames;
        self.missed_bytes += bytes;
        metrics.conflated(frames);
    }

    /// How far behind the viewer is: frames conflated away, and frames waiting behind a write
    /// it has not taken.
    fn behind_bytes<T: Transport>(&self) -> usize {
        let waiting = if self.unflushed {
            self.queue.iter().map(|f| T::frame_bytes(f)).sum()
        } else {
            0
        };
        self.missed_bytes + waiting
    }

    /// Hands the socket everything it will take, then flushes. Cancel-safe: all progress lives in
    /// `self`, so a select that drops this future loses nothing.
    fn poll_drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        metrics: &Metrics,
    ) -> Poll<Result<(), W::Error>>
    where
        T: Transport,
        W: Sink<T::Item> + Unpin,
    {
        // Nothing more is handed over until what was handed over is flushed: the socket's own
        // buffer then never holds more than one batch, whatever its sink would accept.
        if !self.unflushed {
            loop {
                if self.queue.is_empty() && !self.ping_due {
                    break;
                }
                ready!(self.tx.poll_ready_unpin(cx))?;
                let out = if self.missed > 0 && !self.queue.is_empty() {
                    let notice = T::encode(Out::Lagged(std::mem::take(&mut self.missed)));
                    if let Some(notice) = notice {
                        metrics.overhead(T::CONN, lagged_notice(0).len());
                        Some(notice)
                    } else {
                        None
                    }
                } else if let Some(frame) = self.queue.pop_front() {
                    let out = T::encode(Out::Frame(&frame));
                    self.in_flight.push(frame);
                    out
                } else {
                    self.ping_due = false;
                    T::encode(Out::Ping)
                };
                if let Some(out) = out {
                    self.tx.start_send_unpin(out)?;
                    self.unflushed = true;
                }
            }
        }
        if self.unflushed {
            ready!(self.tx.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Everything handed over has been flushed.
    fn delivered<T: Transport>(&mut self, metrics: &Metrics) {
        for frame in self.in_flight.drain(..) {
            metrics.sent(T::CONN, T::frame_bytes(&frame), frame.at.elapsed());
        }
        if self.queue.is_empty() {
            self.busy_since = None;
            self.missed_bytes = 0;
        }
    }
}

/// Serves one viewer until it leaves, stops reading, falls too far behind, or the role shuts
/// down. Generic over the socket's halves so that tests can drive it with channels.
pub async fn serve<T, W, R>(tx: W, mut rx: R, viewer: Viewer<'_>)
where
    T: Transport,
    W: Sink<T::Item> + Unpin,
    W::Error: std::fmt::Display,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let Viewer {
        replay,
        mut feed,
        metrics,
        budget_bytes,
        mut stop,
    } = viewer;
    let mut outbox = Outbox::new(tx);
    // Collected before the await: an iterator with a closure over `&Frame` held across it trips
    // rustc's higher-ranked `Send` check for the spawned task.
    let mut replay_items = Vec::with_capacity(replay.len());
    for frame in &replay {
        replay_items.extend(T::encode(Out::Frame(frame)));
    }
    if !replay_items.is_empty() {
        if let Err(e) = socket::send_all(&mut outbox.tx, replay_items).await {
            tracing::debug!(error = %e, "viewer dropped during replay");
            return;
        }
    }
    for frame in &replay {
        metrics.sent(T::CONN, T::frame_bytes(frame), frame.at.elapsed());
    }
    drop(replay);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut awaiting_pong = false;
    loop {
        let deadline = outbox.busy_since.map(|since| since + WRITE_DEADLINE);
        tokio::select! {
            written = poll_fn(|cx| outbox.poll_drive::<T>(cx, metrics)), if outbox.has_work() => {
                if let Err(e) = written {
                    tracing::debug!(error = %e, "viewer dropped");
                    break;
                }
                outbox.delivered::<T>(metrics);
            }
            delivery = feed.next() => {
                match delivery {
                    Some(Delivery::Frame(frame)) => outbox.push::<T>(frame, metrics),
                    Some(Delivery::Lagged { missed, newest }) => {
                        let bytes = newest.as_deref().map_or(0, T::frame_bytes);
                        outbox.conflate(missed, bytes.saturating_mul(missed as usize), metrics);
                        if let Some(newest) = newest {
                            outbox.push::<T>(newest, metrics);
                        }
                    }
                    None => break,
                }
                if outbox.behind_bytes::<T>() > budget_bytes {
                    tracing::debug!(behind = outbox.behind_bytes::<T>(), "viewer too slow; closing");
                    metrics.lag_close();
                    if let Some(bye) = T::encode(Out::TooSlow) {
                        socket::close(&mut outbox.tx, bye).await;
                    }
                    break;
                }
            }
            msg = rx.next(), if T::PONGS => match msg {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                // Pongs, and anything else the viewer says, prove it is still there.
                Some(Ok(_)) => awaiting_pong = false,
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    tracing::debug!("viewer stopped answering pings");
                    metrics.silent_close();
                    break;
                }
                awaiting_pong = T::PONGS;
                // A viewer with frames on the way is being written to anyway.
                if !outbox.has_work() {
                    outbox.ping_due = true;
                    outbox.busy_since.get_or_insert_with(Instant::now);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                tracing::debug!("viewer took no data for {WRITE_DEADLINE:?}; closing");
                metrics.silent_close();
                break;
            }
            _ = stop.stopped() => {
                if let Some(bye) = T::encode(Out::Away) {
                    socket::close(&mut outbox.tx, bye).await;
                }
                break;
            }
        }
    }
    // Bounded like every farewell: a peer that stopped reading would hold a plain close forever.
    let _ = tokio::time::timeout(socket::CLOSE_DEADLINE, outbox.tx.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::tasks::Tasks;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    fn frame(epoch: u64) -> Utf8Bytes {
        format!(r#"{{"type":"epoch","stream":"main","epoch":{epoch}}}"#).into()
    }

    #[tokio::test]
    async fn a_lagging_feed_skips_to_the_newest_frame_and_counts_the_rest() {
        let hub = Hub::new(100);
        let mut feed = Feed::new(hub.join("main", None).live);
        let published = crate::hub::LIVE_CAPACITY as u64 + 5;
        for e in 1..=published {
            hub.publish(frame(e)).unwrap();
        }
        match feed.next().await {
            Some(Delivery::Lagged {
                missed,
                newest: Some(newest),
            }) => assert_eq!((missed, newest.epoch), (published - 1, published)),
            other => panic!("expected a lag, got {other:?}"),
        }
        hub.publish(frame(published + 1)).unwrap();
        match feed.next().await {
            Some(Delivery::Frame(f)) => assert_eq!(f.text, frame(published + 1)),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// A sink that forwards into a channel, so a test sees exactly what a viewer was sent.
    fn channel_sink<M: Send + 'static>() -> (
        impl Sink<M, Error = &'static str> + Unpin,
        mpsc::UnboundedReceiver<M>,
    ) {
        let (sent_tx, sent) = mpsc::unbounded_channel::<M>();
        let sink = Box::pin(futures_util::sink::unfold(
            sent_tx,
            |tx, msg: M| async move {
                tx.send(msg).map_err(|_| "test dropped its end")?;
                Ok::<_, &str>(tx)
            },
        ));
        (sink, sent)
    }

    #[tokio::test]
    async fn a_viewer_gets_its_replay_then_live_frames_then_a_close() {
        let hub = Hub::new(60);
        for e in [1, 2, 3] {
            hub.publish(frame(e)).unwrap();
        }
        let joined = hub.join("main", Some(1));
        let (sink, mut sent) = channel_sink::<Message>();
        let tasks = Tasks::new();
        let metrics = Arc::new(Metrics::new("subscriber"));
        let viewer = tokio::spawn({
            let metrics = Arc::clone(&metrics);
            let stop = tasks.stop_handle();
            async move {
                let viewer = Viewer {
                    replay: joined.replay,
                    feed: Feed::new(joined.live),
                    metrics: &metrics,
                    budget_bytes: 1 << 20,
                    stop,
                };
                serve::<Ws, _, _>(sink, futures_util::stream::pending(), viewer).await
            }
        });

        assert_eq!(sent.recv().await, Some(Message::Text(frame(2))));
        assert_eq!(sent.recv().await, Some(Message::Text(frame(3))));
        hub.publish(frame(3)).unwrap();
        hub.publish(frame(4)).unwrap();
        assert_eq!(sent.recv().await, Some(Message::Text(frame(4))));

        tasks.stop().await;
        viewer.await.unwrap();
        assert_eq!(sent.recv().await, Some(going_away()));
        assert_eq!(sent.recv().await, None);
        assert!(metrics
            .render()
            .contains(r#"emostream_broadcaster_frames_sent_total{tier="subscriber",conn="ws"} 3"#));
    }

    /// A sink that takes nothing until `open` is set: a peer that has stopped reading.
    struct Stuck {
        taken: Vec<Bytes>,
        open: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Sink<Bytes> for Stuck {
        type Error = &'static str;
        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: std::pin::Pin<&mut Self>, item: Bytes) -> Result<(), Self::Error> {
            self.taken.push(item);
            Ok(())
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            if self.open.load(std::sync::atomic::Ordering::Relaxed) {
                Poll::Ready(Ok(()))
            } else {
                // Never woken: the test only checks what happened before the close.
                Poll::Pending
            }
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_viewer_that_takes_nothing_is_conflated_then_closed_past_its_budget() {
        let hub = Hub::new(60);
        let joined = hub.join("main", None);
        let metrics = Metrics::new("subscriber");
        let tasks = Tasks::new();
        hub.publish(frame(1)).unwrap();
        let frame_len = Sse::frame_bytes(&hub.backlog_of("main")[0]);
        // Budget: four frames' worth behind the stuck write.
        let budget_bytes = 4 * frame_len;
        let viewer = Viewer {
            replay: Vec::new(),
            feed: Feed::new(joined.live),
            metrics: &metrics,
            budget_bytes,
            stop: tasks.stop_handle(),
        };
        let stuck = Stuck {
            taken: Vec::new(),
            open: Arc::default(),
        };
        let serving = serve::<Sse, _, _>(stuck, futures_util::stream::pending(), viewer);
        let publishing = async {
            for e in 2..=100 {
                hub.publish(frame(e)).unwrap();
                tokio::task::yield_now().await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = serving => {}
            () = publishing => unreachable!(),
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"emostream_broadcaster_lag_closes_total{tier="subscriber"} 1"#),
            "{text}"
        );
        // Epoch 1 stuck in the socket, four waiting; each later one conflated one away, and the
        // close came as soon as the budget was passed: a handful of frames, not 99.
        let conflated = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"emostream_broadcaster_conflated_total{tier="subscriber"} "#)
            })
            .unwrap();
        assert!(["1", "2", "3", "4"].contains(&conflated), "{conflated}");
    }
}
