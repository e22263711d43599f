//! The WebSocket link between two tiers, from both ends.
//!
//! Frames flow down; heartbeats ([`LinkUp`]) and subscriptions ([`Subscribe`]) flow up. The lower
//! tier's first message says what it wants and what it already has: a subscriber names the
//! streams its viewers watch (`add`), and afterwards sends only the changes; a cluster publisher
//! asks for every stream (`all`). Either says, per stream, the newest epoch it holds (`have`), so
//! the upper tier sends only the epochs after it, then the stream's newest trend frames and, for
//! a subscriber's stream, [`Synced`]; after that, every new frame of it. `popular` trend frames
//! are about every stream, so every lower tier gets them. The lower tier feeds everything into
//! its own hub, whose dedupe drops what it already had, so a reconnect after any outage heals
//! every gap the ring still covers, and costs only that gap.
//!
//! Each end reads and writes on its own: a write that takes long (a backlog on a slow or far
//! link) never holds up the reading of heartbeats, so it cannot make a healthy peer look silent.
//! A write fails only when the peer takes no message for [`socket::WRITE_DEADLINE`]: both ends write each
//! message straight to the socket (no write batching), so that is a deadline on progress, however
//! long the whole backlog takes.

use crate::auth;
use crate::hub::{Frame, Held, Hub, WantedBelow};
use crate::metrics::{Conn, Metrics};
use crate::server::socket::{self, going_away, WriteFailed};
use crate::server::tasks::Stop;
use crate::tiers::roster::{LinkId, Roster, HEARTBEAT, SILENCE};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use emostream_protocol::trends::ALL_STREAMS;
use emostream_protocol::wire::{LinkUp, StreamGap, Subscribe, Synced};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as ClientMessage;

/// The path every upper tier serves its lower tier on.
pub const PATH: &str = "/internal/link";

/// Reconnect backoff to the tier above: quick after a blip, at most 2 s after a long outage.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a connection attempt to the tier above may take: a cut host never answers, and the
/// kernel would retry its SYN for two minutes. Ten round trips of the slowest link tested
/// (200 ms), and then some.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// Live frames a link's writer sends in a row, at most, while a backlog is owed: a cluster
/// carrying thousands of streams has a live frame waiting most of the time, and a newly watched
/// stream's ring must still arrive.
const OWED_EVERY: u32 = 16;

/// [`Synced`] serialized by serde starts with its tag, so a lower tier can tell it from an epoch
/// frame without parsing every frame twice.
const SYNCED_PREFIX: &str = r#"{"type":"synced""#;

/// Likewise for a [`Subscribe`], which must be told from a heartbeat before it is parsed: every
/// field of it has a default, and serde does not check a struct's tag.
const SUBSCRIBE_PREFIX: &str = r#"{"type":"subscribe""#;

/// Which streams a lower tier gets.
enum Wants {
    /// Nothing yet: its first subscription has not come.
    Undeclared,
    /// Every stream (a cluster publisher).
    All,
    /// Only these, and the frames about all streams (a subscriber).
    Streams(HashSet<Arc<str>>),
}

impl Wants {
    fn includes(&self, stream: &str) -> bool {
        match self {
            Wants::Undeclared => false,
            Wants::All => true,
            Wants::Streams(streams) => streams.contains(stream) || stream == ALL_STREAMS,
        }
    }
}

/// The upper end's view of one lower tier: what it wants, and what it has.
struct Downstream {
    wants: Wants,
    /// The newest epoch of each stream the lower tier has, as it said or as sent since: a ring
    /// frame at or before it is not sent again.
    has: HashMap<Arc<str>, u64>,
    /// The publication number of the newest frame of the feed dealt with: sent, skipped, or
    /// caught up on after the feed lost frames.
    seen: u64,
    /// What subscriptions (and catch-ups) owe the lower tier, sent when no live frame waits: a
    /// newly watched stream's ring must not hold up live frames of the streams already flowing.
    /// A stream's live frames queue behind its own backlog, so each stream stays in order.
    backlog: VecDeque<Owed>,
    /// How many of `backlog`'s messages are of each stream.
    owed: HashMap<Arc<str>, usize>,
    /// The streams a subscriber asked for, each held against this tier forgetting it.
    held: HashMap<Arc<str>, WantedBelow>,
    /// [`Hub::forgotten`] when `has` was last pruned.
    pruned_at: u64,
}

/// A message owed to the lower tier.
enum Owed {
    Frame(Frame),
    /// A gap or synced notice about `stream`.
    Notice {
        stream: Arc<str>,
        text: Utf8Bytes,
    },
}

impl Owed {
    fn stream(&self) -> &Arc<str> {
        match self {
            Owed::Frame(frame) => &frame.stream,
            Owed::Notice { stream, .. } => stream,
        }
    }
}

impl Downstream {
    /// Whether `frame` goes down this link; if so, it counts as had from now on.
    fn takes(&mut self, frame: &Frame) -> bool {
        if !self.wants.includes(&frame.stream) {
            return false;
        }
        if frame.ring {
            if self
                .has
                .get(&frame.stream)
                .is_some_and(|&e| e >= frame.epoch)
            {
                return false;
            }
            self.has.insert(Arc::clone(&frame.stream), frame.epoch);
        }
        true
    }

    /// [`Downstream::takes`], and when `frame` is an epoch that jumps past the one after what
    /// the lower tier has, first queues the gap it would jump over, if this tier lost those
    /// epochs or never had them: a main publisher restarted with a fresh hub meets most streams
    /// only after a cluster publisher subscribed with what it has ([`Hub::missed_before`]), and
    /// a link catching up after lagging finds rings that moved on.
    fn takes_after_gap(&mut self, frame: &Frame, hub: &Hub) -> bool {
        let had = if frame.ring {
            self.has.get(&frame.stream).copied()
        } else {
            None
        };
        if !self.takes(frame) {
            return false;
        }
        if let Some(had) = had.filter(|&had| frame.epoch > had.saturating_add(1)) {
            if let Some(lost) = hub.lost_after(&frame.stream, had) {
                self.owe_lost(Arc::clone(&frame.stream), lost);
            }
        }
        true
    }

    /// Applies a subscription, queueing what it makes this link lack.
    fn subscribe(&mut self, sub: Subscribe, hub: &Arc<Hub>) {
        let Subscribe {
            all,
            add,
            remove,
            have,
        } = sub;
        if all {
            self.wants = Wants::All;
            for (stream, epoch) in &have {
                let stream: Arc<str> = stream.as_str().into();
                self.has.insert(Arc::clone(&stream), *epoch);
                self.owe_gap(hub, stream, *epoch);
            }
            for frame in hub.backlog(&have) {
                if self.takes(&frame) {
                    self.owe(Owed::Frame(frame));
                }
            }
            return;
        }
        if !matches!(self.wants, Wants::Streams(_)) {
            self.wants = Wants::Streams(HashSet::new());
        }
        let Wants::Streams(streams) = &mut self.wants else {
            unreachable!("set just above");
        };
        for stream in &remove {
            streams.remove(stream.as_str());
            self.has.remove(stream.as_str());
            self.held.remove(stream.as_str());
        }
        let added: Vec<Arc<str>> = add.iter().map(|s| Arc::from(s.as_str())).collect();
        streams.extend(added.iter().cloned());
        for stream in &added {
            self.held
                .entry(Arc::clone(stream))
                .or_insert_with(|| hub.want_below(stream));
        }
        for stream in added {
            let after = have.get(&*stream).copied();
            match after {
                Some(epoch) => {
                    self.has.insert(Arc::clone(&stream), epoch);
                    self.owe_gap(hub, Arc::clone(&stream), epoch);
                }
                None => {
                    self.has.remove(&stream);
                }
            }
            for frame in hub.backlog_of(&stream, after) {
                if self.takes(&frame) {
                    self.owe(Owed::Frame(frame));
                }
            }
            let synced = serde_json::to_string(&Synced {
                stream: stream.to_string(),
            })
            .expect("a Synced always serializes");
            self.owe(Owed::Notice {
                stream,
                text: synced.into(),
            });
        }
        tracing::debug!(added = add.len(), removed = remove.len(), "subscription");
    }

    /// Queues the gap a lower tier that has `stream` up to `have` would fall into, if any.
    fn owe_gap(&mut self, hub: &Hub, stream: Arc<str>, have: u64) {
        if let Some(lost) = hub.gap_after(&stream, have) {
            self.owe_lost(stream, lost);
        }
    }

    /// Queues the gap notice of epochs of `stream` after `since` and before `oldest`.
    fn owe_lost(&mut self, stream: Arc<str>, (since, oldest): (u64, u64)) {
        let gap = StreamGap {
            stream: stream.to_string(),
            since,
            oldest,
        };
        let text = serde_json::to_string(&gap).expect("a StreamGap always serializes");
        self.owe(Owed::Notice {
            stream,
            text: text.into(),
        });
    }

    fn owe(&mut self, owed: Owed) {
        *self.owed.entry(Arc::clone(owed.stream())).or_default() += 1;
        self.backlog.push_back(owed);
    }

    /// A live frame: straight down, unless its stream still has a backlog to go first.
    async fn live<S>(
        &mut self,
        frame: Frame,
        hub: &Hub,
        tx: &mut S,
        metrics: &Metrics,
    ) -> Result<(), WriteFailed>
    where
        S: Sink<Message> + Unpin,
        S::Error: std::fmt::Display,
    {
        if !self.takes_after_gap(&frame, hub) {
            return Ok(());
        }
        if self.owed.contains_key(&frame.stream) {
            self.owe(Owed::Frame(frame));
            return Ok(());
        }
        send_frame(tx, &frame, metrics).await
    }

    /// Sends the oldest owed message.
    async fn send_owed<S>(&mut self, tx: &mut S, metrics: &Metrics) -> Result<(), WriteFailed>
    where
        S: Sink<Message> + Unpin,
        S::Error: std::fmt::Display,
    {
        let Some(owed) = self.backlog.pop_front() else {
            return Ok(());
        };
        if let Some(n) = self.owed.get_mut(owed.stream()) {
            *n -= 1;
            if *n == 0 {
                self.owed.remove(owed.stream());
            }
        }
        match owed {
            Owed::Frame(frame) => send_frame(tx, &frame, metrics).await,
            Owed::Notice { text, .. } => socket::send(tx, Message::Text(text)).await,
        }
    }

    /// Drops what `has` keeps of streams the hub has forgotten since the last call, so that a
    /// link taking every stream (a cluster publisher's) does not keep an entry, and the stream's
    /// name, for each stream it ever carried. A stream that comes back starts with no entry:
    /// its ring may then go down again, and the lower tier's hub drops what it already has.
    fn prune(&mut self, hub: &Hub) {
        let forgotten = hub.forgotten();
        if forgotten == self.pruned_at {
            return;
        }
        self.pruned_at = forgotten;
        hub.retain_held(&mut self.has);
        crate::hub::shrink_if_mostly_empty(&mut self.has);
        if self.backlog.is_empty() {
            // Room left by a large backlog (a catch-up over thousands of streams).
            self.backlog.shrink_to_fit();
            crate::hub::shrink_if_mostly_empty(&mut self.owed);
        }
    }

    /// After the feed lost frames: every frame still held after the last one dealt with, behind
    /// a gap for each stream whose ring pushed out an epoch this link did not get.
    fn catch_up(&mut self, held: Held, hub: &Hub) {
        for stream in &held.broken {
            if let (true, Some(&have)) = (self.wants.includes(stream), self.has.get(stream)) {
                self.owe_gap(hub, Arc::clone(stream), have);
            }
        }
        // A broken stream's gap is queued already.
        let broken: HashSet<&Arc<str>> = held.broken.iter().collect();
        for frame in held.frames {
            let taken = if broken.contains(&frame.stream) {
                self.takes(&frame)
            } else {
                self.takes_after_gap(&frame, hub)
            };
            if taken {
                self.owe(Owed::Frame(frame));
            }
        }
        self.seen = held.published;
    }
}

/// Serves one lower tier that connected to [`PATH`], until it leaves, falls silent for
/// [`SILENCE`], stops taking frames for [`socket::WRITE_DEADLINE`], or the role shuts down. Whatever it
/// reported is forgotten when this returns.
pub async fn serve_downstream(
    socket: WebSocket,
    hub: &Arc<Hub>,
    roster: &Roster,
    metrics: &Metrics,
    mut stop: Stop,
    upstream_lost: Option<watch::Receiver<bool>>,
) {
    let _open = metrics.open(Conn::Link);
    let link = roster.open();
    let ended =
        downstream_session(socket, link, hub, roster, metrics, &mut stop, upstream_lost).await;
    roster.close(link);
    tracing::info!(link, reason = %ended, "downstream link closed");
}

/// Sends one frame, counting it as delivered.
async fn send_frame<S>(tx: &mut S, frame: &Frame, metrics: &Metrics) -> Result<(), WriteFailed>
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    socket::send(tx, Message::Text(frame.text.clone())).await?;
    metrics.sent(Conn::Link, frame.text.len(), frame.at.elapsed());
    Ok(())
}

async fn downstream_session(
    socket: WebSocket,
    link: LinkId,
    hub: &Arc<Hub>,
    roster: &Roster,
    metrics: &Metrics,
    stop: &mut Stop,
    upstream_lost: Option<watch::Receiver<bool>>,
) -> Ended {
    let (mut tx, rx) = socket.split();
    // Subscribed before anything is sent, so that a frame published while a backlog is on its
    // way comes after it here (and is skipped if the backlog had it).
    let live = hub.link();
    let seen = hub.published();
    let (asks_tx, asks) = mpsc::unbounded_channel();
    tracing::info!(link, "downstream link open");
    let lost = async {
        match upstream_lost {
            Some(mut lost) => {
                let _ = lost.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        ended = read_downstream(rx, link, roster, asks_tx) => ended,
        ended = write_downstream(&mut tx, live, seen, asks, hub, metrics) => ended,
        () = stop.stopped() => Ended::Stopped,
        () = lost => Ended::UpstreamLost,
    };
    match ended {
        Ended::Stopped => socket::close(&mut tx, going_away()).await,
        Ended::UpstreamLost => socket::close(&mut tx, socket::upstream_lost()).await,
        _ => {}
    }
    ended
}

/// The upper end's reader: heartbeats into the roster, subscriptions to the writer. Ends when
/// the lower tier leaves or says nothing for [`SILENCE`] (it sends a heartbeat every
/// [`HEARTBEAT`], and answers pings).
async fn read_downstream<R>(
    mut rx: R,
    link: LinkId,
    roster: &Roster,
    asks: mpsc::UnboundedSender<Subscribe>,
) -> Ended
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    loop {
        let Ok(msg) = tokio::time::timeout(SILENCE, rx.next()).await else {
            return Ended::Silent;
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => return Ended::Closed,
            Some(Err(e)) => return Ended::Read(e.to_string()),
            Some(Ok(_)) => continue,
        };
        if text.starts_with(SUBSCRIBE_PREFIX) {
            match serde_json::from_str::<Subscribe>(&text) {
                // Unbounded: one message per change of a subscriber's streams, which its own
                // watchers make; the writer takes them between frames.
                Ok(sub) => {
                    if asks.send(sub).is_err() {
                        return Ended::Stopped;
                    }
                }
                Err(e) => tracing::warn!(link, error = %e, "unreadable subscription"),
            }
            continue;
        }
        match serde_json::from_str::<LinkUp>(&text) {
            Ok(up) => roster.heard(link, up),
            Err(e) => tracing::warn!(link, error = %e, "unreadable message from a lower tier"),
        }
    }
}

/// The upper end's writer: backlogs for subscriptions, live frames, pings.
async fn write_downstream<S>(
    tx: &mut S,
    mut live: broadcast::Receiver<Frame>,
    seen: u64,
    mut asks: mpsc::UnboundedReceiver<Subscribe>,
    hub: &Arc<Hub>,
    metrics: &Metrics,
) -> Ended
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let mut down = Downstream {
        wants: Wants::Undeclared,
        has: HashMap::new(),
        seen,
        backlog: VecDeque::new(),
        owed: HashMap::new(),
        held: HashMap::new(),
        pruned_at: hub.forgotten(),
    };
    // The lower tier's heartbeats prove it alive; these pings let it tell the same of us while
    // no frames flow.
    let mut ping = tokio::time::interval(HEARTBEAT);
    let mut live_in_a_row = 0;
    loop {
        // Live frames first; what subscriptions owe goes a message at a time when none waits,
        // and at least one in every OWED_EVERY under a steady stream of live frames.
        let owed_due = !down.backlog.is_empty() && live_in_a_row >= OWED_EVERY;
        let written = tokio::select! {
            biased;
            () = std::future::ready(()), if owed_due => {
                live_in_a_row = 0;
                down.send_owed(tx, metrics).await
            }
            frame = live.recv() => match frame {
                Ok(frame) if frame.seq <= down.seen => Ok(()),
                Ok(frame) => {
                    down.seen = frame.seq;
                    live_in_a_row += 1;
                    down.live(frame, hub, tx, metrics).await
                }
                Err(RecvError::Lagged(missed)) => {
                    let held = hub.held_after(down.seen);
                    tracing::warn!(missed, resent = held.frames.len(), lost_streams = held.broken.len(), "downstream link lagged; sending what the rings still hold");
                    down.catch_up(held, hub);
                    Ok(())
                }
                Err(RecvError::Closed) => return Ended::Stopped,
            },
            ask = asks.recv() => match ask {
                Some(sub) => {
                    down.subscribe(sub, hub);
                    Ok(())
                }
                // The reader has ended, and its reason ends the session.
                None => std::future::pending().await,
            },
            _ = ping.tick() => {
                down.prune(hub);
                socket::send(tx, Message::Ping(Bytes::new())).await
            }
            () = std::future::ready(()), if !down.backlog.is_empty() => {
                live_in_a_row = 0;
                down.send_owed(tx, metrics).await
            }
        };
        if let Err(e) = written {
            return Ended::Write(e);
        }
    }
}

/// How long a tier may be without a live upstream before it says so to everything below it: a
/// subscriber closes its viewers (1012) and refuses new ones (503), so that they register again
/// and land where frames flow; a cluster publisher closes its subscribers' links (1012) and
/// refuses them (503) until its own upstream is back, so that its subscribers do the same a
/// hop later. A link dropped by a blip is back within its backoff (at most 2 s); a dead
/// upstream is declared [`SILENCE`] (3 s) after it was last heard, which this adds to.
pub const UPSTREAM_LOST_AFTER: Duration = Duration::from_secs(5);

/// Whether this tier's link to the tier above is alive, judged by the heartbeats it sends up: a
/// link session sends one only while it has heard from the tier above within [`SILENCE`], so a
/// fresh one means a live upstream.
pub struct UpstreamHealth {
    heard: watch::Sender<Option<Instant>>,
    lost: watch::Receiver<bool>,
}

impl UpstreamHealth {
    /// Watches until `stop`.
    pub fn start(stop: Stop) -> Self {
        let (heard, heard_rx) = watch::channel(None);
        let (lost_tx, lost) = watch::channel(false);
        tokio::spawn(watch_upstream(heard_rx, lost_tx, stop));
        Self { heard, lost }
    }

    /// A heartbeat went up.
    pub fn heard(&self) {
        self.heard.send_replace(Some(Instant::now()));
    }

    /// `true` while the upstream has been lost for [`UPSTREAM_LOST_AFTER`].
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }
}

/// Says `lost` once no heartbeat has gone up for [`UPSTREAM_LOST_AFTER`], and not lost again
/// as soon as one does. A tier whose upstream has never been up has lost nothing: nothing was
/// placed on it by `/register`, whose roster it is not in yet.
async fn watch_upstream(
    mut heard: watch::Receiver<Option<Instant>>,
    lost: watch::Sender<bool>,
    mut stop: Stop,
) {
    loop {
        let deadline = heard.borrow_and_update().map(|at| at + UPSTREAM_LOST_AFTER);
        tokio::select! {
            changed = heard.changed() => {
                if changed.is_err() {
                    return;
                }
                if set_lost(&lost, false) {
                    tracing::info!("upstream back");
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !*lost.borrow() => {
                tracing::warn!(after = ?UPSTREAM_LOST_AFTER, "upstream lost; telling every tier and viewer below (1012)");
                set_lost(&lost, true);
            }
            () = stop.stopped() => return,
        }
    }
}

/// Sets `lost` to `value`, waking its receivers only when that changes it; returns whether it
/// did. Every viewer's task waits on this channel, and a heartbeat goes up every second:
/// telling them each time that nothing changed woke every viewer of the subscriber once a
/// second, in the middle of whatever epoch its lanes were writing.
fn set_lost(lost: &watch::Sender<bool>, value: bool) -> bool {
    lost.send_if_modified(|was| std::mem::replace(was, value) != value)
}

/// How a lower tier reaches the one above it.
pub struct Upstream {
    /// `ws://host:port/internal/link`.
    pub url: String,
    /// Presented as `Authorization: Bearer`.
    pub secret: Option<String>,
    /// Whether to subscribe to the streams the hub's viewers watch (a subscriber) or take every
    /// stream (a cluster publisher).
    pub subscribe: bool,
}

/// Keeps a link to the upper tier until shutdown: frames from it go into `hub`, and every
/// [`HEARTBEAT`] `heartbeat()` goes up.
pub async fn keep_upstream(
    upstream: Upstream,
    hub: &Hub,
    metrics: &Metrics,
    heartbeat: impl Fn() -> LinkUp,
    mut stop: Stop,
) {
    let url = upstream.url.as_str();
    let mut backoff = MIN_BACKOFF;
    // Every message goes to the socket as it is sent, as on the upper end: see the module docs.
    let config = WebSocketConfig::default().write_buffer_size(0);
    loop {
        let request = match link_request(&upstream) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(upstream = %url, error = %e, "cannot build the link request");
                return;
            }
        };
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let connected = tokio::select! {
            connected = tokio::time::timeout(CONNECT_DEADLINE, connect) => connected,
            () = stop.stopped() => return,
        };
        match connected {
            Ok(Ok((socket, _))) => {
                tracing::info!(upstream = %url, "upstream link open");
                backoff = MIN_BACKOFF;
                // The tier above syncs every wanted stream again on this link.
                hub.unsync_all();
                let session = upstream_session(
                    socket,
                    hub,
                    metrics,
                    upstream.subscribe,
                    &heartbeat,
                    &mut stop,
                );
                match session.await {
                    Ended::Stopped => return,
                    ended => {
                        tracing::warn!(upstream = %url, reason = %ended, "upstream link lost; reconnecting")
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %url, error = %e, retry_in = ?backoff, "cannot reach upstream")
            }
            Err(_) => {
                tracing::warn!(upstream = %url, deadline = ?CONNECT_DEADLINE, retry_in = ?backoff, "upstream did not answer")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = stop.stopped() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn link_request(
    upstream: &Upstream,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::client::Request,
    tokio_tungstenite::tungstenite::Error,
> {
    let mut request = upstream.url.as_str().into_client_request()?;
    if let Some(secret) = &upstream.secret {
        let value = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|e| tokio_tungstenite::tungstenite::Error::HttpFormat(e.into()))?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

fn subscription(sub: &Subscribe) -> ClientMessage {
    ClientMessage::text(serde_json::to_string(sub).expect("a Subscribe always serializes"))
}

/// The change from the streams subscribed `before` to those wanted `now`, with the newest epoch
/// held of each added one; `None` when nothing changed.
fn delta(before: &BTreeSet<String>, now: &BTreeSet<String>, hub: &Hub) -> Option<Subscribe> {
    let add: Vec<String> = now.difference(before).cloned().collect();
    let remove: Vec<String> = before.difference(now).cloned().collect();
    if add.is_empty() && remove.is_empty() {
        return None;
    }
    let have = hub.newest_epochs(Some(add.iter().map(String::as_str)));
    Some(Subscribe {
        all: false,
        add,
        remove,
        have,
    })
}

async fn upstream_session<S>(
    socket: S,
    hub: &Hub,
    metrics: &Metrics,
    subscribe: bool,
    heartbeat: &impl Fn() -> LinkUp,
    stop: &mut Stop,
) -> Ended
where
    S: Sink<ClientMessage, Error = tokio_tungstenite::tungstenite::Error>
        + Stream<Item = Result<ClientMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let (mut tx, rx) = socket.split();
    let ended = tokio::select! {
        ended = read_upstream(rx, hub, metrics) => ended,
        ended = write_upstream(&mut tx, hub, subscribe, heartbeat) => ended,
        () = stop.stopped() => Ended::Stopped,
    };
    if matches!(ended, Ended::Stopped) {
        let _ = tokio::time::timeout(socket::CLOSE_DEADLINE, tx.close()).await;
    }
    ended
}

/// The lower end's reader: every frame into the hub. Ends when the upper tier leaves or says
/// nothing for [`SILENCE`] (it pings every [`HEARTBEAT`] while no frames flow).
async fn read_upstream<R>(mut rx: R, hub: &Hub, metrics: &Metrics) -> Ended
where
    R: Stream<Item = Result<ClientMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let Ok(msg) = tokio::time::timeout(SILENCE, rx.next()).await else {
            return Ended::Silent;
        };
        match msg {
            Some(Ok(ClientMessage::Text(text))) => {
                // Validated as UTF-8 again, but not copied: the bytes stay the ones read.
                match Utf8Bytes::try_from(Bytes::from(text)) {
                    Ok(text) => from_upstream(text, hub, metrics),
                    Err(e) => tracing::warn!(error = %e, "upstream sent invalid UTF-8"),
                }
            }
            Some(Ok(ClientMessage::Close(_))) | None => return Ended::Closed,
            Some(Err(e)) => return Ended::Read(e.to_string()),
            // tungstenite answers pings by itself.
            Some(Ok(_)) => {}
        }
    }
}

/// The lower end's writer: the first subscription, its changes, heartbeats.
async fn write_upstream<S>(
    tx: &mut S,
    hub: &Hub,
    subscribe: bool,
    heartbeat: &impl Fn() -> LinkUp,
) -> Ended
where
    S: Sink<ClientMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let mut wanted = hub.wanted();
    let mut subscribed = BTreeSet::new();
    // First message: what this tier wants, and what it has (see the module docs).
    let first = if subscribe {
        let now: BTreeSet<String> = wanted.borrow_and_update().iter().cloned().collect();
        let first = delta(&subscribed, &now, hub).unwrap_or_default();
        subscribed = now;
        first
    } else {
        Subscribe {
            all: true,
            have: hub.newest_epochs(None::<[&str; 0]>),
            ..Subscribe::default()
        }
    };
    if let Err(e) = socket::send(tx, subscription(&first)).await {
        return Ended::Write(e);
    }
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        let written = tokio::select! {
            changed = wanted.changed(), if subscribe => {
                if changed.is_err() {
                    return Ended::Stopped;
                }
                let now: BTreeSet<String> = wanted.borrow_and_update().iter().cloned().collect();
                match delta(&subscribed, &now, hub) {
                    Some(change) => {
                        subscribed = now;
                        socket::send(tx, subscription(&change)).await
                    }
                    None => Ok(()),
                }
            }
            _ = beat.tick() => {
                let up = serde_json::to_string(&heartbeat()).expect("a LinkUp always serializes");
                socket::send(tx, ClientMessage::text(up)).await
            }
        };
        if let Err(e) = written {
            return Ended::Write(e);
        }
    }
}

fn from_upstream(text: Utf8Bytes, hub: &Hub, metrics: &Metrics) {
    if text.starts_with(SYNCED_PREFIX) {
        match serde_json::from_str::<Synced>(&text) {
            Ok(Synced { stream }) => hub.mark_synced(&stream),
            Err(e) => tracing::warn!(error = %e, "unreadable synced notice"),
        }
        return;
    }
    match hub.publish(text) {
        Ok(true) => metrics.frame_in(),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "upstream sent a frame without a stream and epoch"),
    }
}

/// Whether a link upgrade presented the shared secret (or none is required).
pub fn authorized(secret: Option<&str>, authorization: Option<&str>) -> bool {
    secret.is_none_or(|secret| {
        auth::link_secret_matches(secret, authorization.and_then(auth::bearer))
    })
}

/// Why a link session ended.
enum Ended {
    Stopped,
    /// This tier's own upstream is lost: the link below is cut so that its tier knows too.
    UpstreamLost,
    Closed,
    Silent,
    Read(String),
    Write(WriteFailed),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Stopped => write!(f, "shutting down"),
            Ended::UpstreamLost => write!(f, "this tier lost its own upstream"),
            Ended::Closed => write!(f, "closed by the peer"),
            Ended::Silent => write!(f, "silent for {SILENCE:?}"),
            Ended::Read(e) => write!(f, "read failed: {e}"),
            Ended::Write(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn synced_notices_start_with_their_tag() {
        let text = serde_json::to_string(&Synced {
            stream: "main".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"synced","stream":"main"}"#);
        assert!(text.starts_with(SYNCED_PREFIX));
        let sub = serde_json::to_string(&Subscribe::default()).unwrap();
        assert_eq!(sub, r#"{"type":"subscribe"}"#);
        assert!(sub.starts_with(SUBSCRIBE_PREFIX));
        let beat = LinkUp::Subscriber {
            name: "s".into(),
            url: "ws://x".into(),
            viewers: 0,
            room: None,
            stream_room: None,
            carrying: Vec::new(),
        };
        assert!(!serde_json::to_string(&beat)
            .unwrap()
            .starts_with(SUBSCRIBE_PREFIX));
    }

    /// Heartbeats while the upstream is up change nothing a viewer waits on: every viewer's task
    /// waits on `lost`, so a heartbeat that woke them woke the whole subscriber every second.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_wake_no_viewer_and_a_silence_wakes_them_once() {
        let tasks = crate::server::tasks::Tasks::new();
        let health = UpstreamHealth::start(tasks.stop_handle());
        let mut lost = health.lost();
        lost.mark_unchanged();
        for _ in 0..5 {
            health.heard();
            // The watcher, on this one thread, takes the heartbeat before the test goes on.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            tokio::time::advance(HEARTBEAT).await;
        }
        assert!(!lost.has_changed().unwrap(), "a heartbeat woke the viewers");
        tokio::time::advance(UPSTREAM_LOST_AFTER).await;
        lost.changed().await.unwrap();
        assert!(*lost.borrow_and_update());
        health.heard();
        lost.changed().await.unwrap();
        assert!(!*lost.borrow_and_update());
    }

    fn set(streams: &[&str]) -> BTreeSet<String> {
        streams.iter().map(|s| s.to_string()).collect()
    }

    fn frame(stream: &str, epoch: u64) -> Utf8Bytes {
        format!(r#"{{"type":"epoch","stream":"{stream}","epoch":{epoch}}}"#).into()
    }

    #[test]
    fn subscriptions_go_up_as_changes_with_the_epochs_held() {
        let hub = Arc::new(Hub::new(4));
        hub.publish(frame("a", 5)).unwrap();
        hub.publish(frame("b", 9)).unwrap();
        assert_eq!(delta(&set(&["a"]), &set(&["a"]), &hub), None);
        assert_eq!(
            delta(&set(&["a", "x"]), &set(&["a", "b", "c"]), &hub),
            Some(Subscribe {
                all: false,
                add: vec!["b".into(), "c".into()],
                remove: vec!["x".into()],
                have: BTreeMap::from([("b".to_string(), 9)]),
            })
        );
    }

    /// Collects what the upper end sends for `sub` into a channel.
    async fn sent_for(down: &mut Downstream, sub: Subscribe, hub: &Arc<Hub>) -> Vec<String> {
        let metrics = Metrics::new("cluster");
        let (mut tx, rx) = futures_channel::mpsc::unbounded::<Message>();
        down.subscribe(sub, hub);
        send_all_owed(down, &mut tx, &metrics).await;
        drop(tx);
        texts(rx).await
    }

    async fn send_all_owed(
        down: &mut Downstream,
        tx: &mut futures_channel::mpsc::UnboundedSender<Message>,
        metrics: &Metrics,
    ) {
        while !down.backlog.is_empty() {
            down.send_owed(tx, metrics).await.unwrap();
        }
    }

    /// Every text message sent, once the sender is gone.
    async fn texts(mut rx: futures_channel::mpsc::UnboundedReceiver<Message>) -> Vec<String> {
        let mut texts = Vec::new();
        while let Some(Message::Text(t)) = rx.next().await {
            texts.push(t.to_string());
        }
        texts
    }

    fn downstream() -> Downstream {
        Downstream {
            wants: Wants::Undeclared,
            has: HashMap::new(),
            seen: 0,
            backlog: VecDeque::new(),
            owed: HashMap::new(),
            held: HashMap::new(),
            pruned_at: 0,
        }
    }

    #[tokio::test]
    async fn a_newly_watched_streams_ring_goes_after_live_frames_of_the_others_and_before_its_own()
    {
        let hub = Arc::new(Hub::new(8));
        let metrics = Metrics::new("cluster");
        for e in 1..=8 {
            hub.publish(frame("big", e)).unwrap();
        }
        hub.publish(frame("flowing", 1)).unwrap();
        let mut down = downstream();
        let add = |stream: &str| Subscribe {
            add: vec![stream.into()],
            ..Subscribe::default()
        };
        let (mut tx, rx) = futures_channel::mpsc::unbounded::<Message>();
        down.subscribe(add("flowing"), &hub);
        send_all_owed(&mut down, &mut tx, &metrics).await;
        down.subscribe(add("big"), &hub);
        // Live frames come while big's ring is owed: flowing's goes at once, big's behind its
        // ring.
        for (stream, epoch) in [("flowing", 2), ("big", 9)] {
            hub.publish(frame(stream, epoch)).unwrap();
            let newest = hub.held_after(0).frames.last().cloned().unwrap();
            down.live(newest, &hub, &mut tx, &metrics).await.unwrap();
        }
        send_all_owed(&mut down, &mut tx, &metrics).await;
        drop(tx);
        let texts = texts(rx).await;
        let mut want = vec![
            frame("flowing", 1).to_string(),
            r#"{"type":"synced","stream":"flowing"}"#.to_string(),
            frame("flowing", 2).to_string(),
        ];
        want.extend((1..=8).map(|e| frame("big", e).to_string()));
        want.push(r#"{"type":"synced","stream":"big"}"#.to_string());
        want.push(frame("big", 9).to_string());
        assert_eq!(texts, want);
        assert!(down.owed.is_empty());
    }

    #[tokio::test]
    async fn only_what_the_lower_tier_lacks_goes_down_and_never_twice() {
        let hub = Arc::new(Hub::new(8));
        for e in 1..=4 {
            hub.publish(frame("a", e)).unwrap();
            hub.publish(frame("b", e + 10)).unwrap();
        }
        let mut down = downstream();
        let add = |stream: &str, have: Option<u64>| Subscribe {
            add: vec![stream.into()],
            have: have.map(|e| (stream.to_string(), e)).into_iter().collect(),
            ..Subscribe::default()
        };
        let synced = |s: &str| format!(r#"{{"type":"synced","stream":"{s}"}}"#);
        assert_eq!(
            sent_for(&mut down, add("a", Some(2)), &hub).await,
            [
                frame("a", 3).to_string(),
                frame("a", 4).to_string(),
                synced("a")
            ]
        );
        assert_eq!(
            sent_for(&mut down, add("b", None), &hub).await,
            [11, 12, 13, 14]
                .map(|e| frame("b", e).to_string())
                .into_iter()
                .chain([synced("b")])
                .collect::<Vec<_>>()
        );
        // The feed repeats frames the backlog had: they are not sent again.
        hub.publish(frame("a", 5)).unwrap();
        let held = hub.held_after(0).frames;
        let again: Vec<u64> = held
            .iter()
            .filter(|f| down.takes(f))
            .map(|f| f.epoch)
            .collect();
        assert_eq!(again, [5]);
        // Removed, a stream's frames stop; a stream not subscribed never came.
        let removed = Subscribe {
            remove: vec!["a".into()],
            ..Subscribe::default()
        };
        assert!(sent_for(&mut down, removed, &hub).await.is_empty());
        hub.publish(frame("a", 6)).unwrap();
        hub.publish(frame("c", 1)).unwrap();
        let held = hub.held_after(0).frames;
        assert!(held.iter().all(|f| !down.takes(f)));

        // A cluster publisher takes every stream after what it has.
        let mut cluster = downstream();
        let all = Subscribe {
            all: true,
            have: BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 14)]),
            ..Subscribe::default()
        };
        let mut got = sent_for(&mut cluster, all, &hub).await;
        got.sort();
        assert_eq!(got, [frame("a", 6).to_string(), frame("c", 1).to_string()]);
    }

    /// A main publisher restarted reads back only the ring's span: a cluster publisher that
    /// subscribes with older epochs is told of the gap before the first epoch it gets of each
    /// stream that jumps over what the hub may have missed, whether that epoch comes live or
    /// after the link lagged, and of nothing where it misses nothing.
    #[tokio::test]
    async fn a_restarted_hub_tells_of_what_it_may_have_missed_before_the_first_epoch_sent() {
        let metrics = Metrics::new("main");
        let hub = Arc::new(Hub::new(4));
        hub.missed_before(100);
        let have = BTreeMap::from([
            ("a".to_string(), 50),
            ("b".to_string(), 99),
            ("c".to_string(), 98),
        ]);
        let all = Subscribe {
            all: true,
            have,
            ..Subscribe::default()
        };
        // Subscribed before the read-back brings anything: nothing owed yet.
        let (mut live, mut lagged) = (downstream(), downstream());
        assert!(sent_for(&mut live, all.clone(), &hub).await.is_empty());
        assert!(sent_for(&mut lagged, all, &hub).await.is_empty());
        let (mut tx, rx) = futures_channel::mpsc::unbounded::<Message>();
        for (stream, epoch) in [("a", 120), ("a", 121), ("b", 101), ("c", 100)] {
            hub.publish(frame(stream, epoch)).unwrap();
            let newest = hub.held_after(0).frames.last().cloned().unwrap();
            live.live(newest, &hub, &mut tx, &metrics).await.unwrap();
        }
        send_all_owed(&mut live, &mut tx, &metrics).await;
        drop(tx);
        let gap = |stream: &str, since: u64, oldest: u64| {
            format!(r#"{{"type":"gap","stream":"{stream}","since":{since},"oldest":{oldest}}}"#)
        };
        let (a, c) = (
            [
                gap("a", 50, 120),
                frame("a", 120).to_string(),
                frame("a", 121).to_string(),
            ],
            [gap("c", 98, 100), frame("c", 100).to_string()],
        );
        // b's frame goes at once; a's and c's wait behind their gaps, in the backlog.
        let b = frame("b", 101).to_string();
        let want: Vec<String> = [b.clone()]
            .into_iter()
            .chain(a.clone())
            .chain(c.clone())
            .collect();
        assert_eq!(texts(rx).await, want);

        // The same, from the rings, after the link fell behind the feed.
        lagged.catch_up(hub.held_after(0), &hub);
        let (mut tx, rx) = futures_channel::mpsc::unbounded::<Message>();
        send_all_owed(&mut lagged, &mut tx, &metrics).await;
        drop(tx);
        let want: Vec<String> = a.into_iter().chain([b]).chain(c).collect();
        assert_eq!(texts(rx).await, want);
    }

    /// A cluster publisher's link takes every stream: what it keeps of each goes once the hub
    /// has forgotten the stream, and a stream that comes back is sent from its first frame.
    #[tokio::test]
    async fn a_link_taking_every_stream_forgets_what_the_hub_forgot() {
        let hub = Arc::new(Hub::with_retention(crate::hub::Retention {
            ring_epochs: 4,
            idle: Duration::ZERO,
            max_bytes: usize::MAX,
        }));
        let mut cluster = downstream();
        let all = Subscribe {
            all: true,
            ..Subscribe::default()
        };
        assert!(sent_for(&mut cluster, all, &hub).await.is_empty());
        let streams: Vec<String> = (0..500).map(|i| format!("p-{i}")).collect();
        for stream in &streams {
            for epoch in 1..=2 {
                hub.publish(frame(stream, epoch)).unwrap();
            }
        }
        let held = hub.held_after(0).frames;
        assert_eq!(held.iter().filter(|f| cluster.takes(f)).count(), 1000);
        assert_eq!(cluster.has.len(), 500);
        cluster.prune(&hub);
        assert_eq!(cluster.has.len(), 500, "nothing forgotten yet");

        assert_eq!(hub.forget_idle(), 500);
        cluster.prune(&hub);
        assert!(cluster.has.is_empty());
        assert!(cluster.has.capacity() <= 64, "{}", cluster.has.capacity());
        // Back after it was forgotten: its new ring goes down whole.
        hub.publish(frame("p-7", 1)).unwrap();
        let again = hub.held_after(0).frames;
        assert_eq!(
            again
                .iter()
                .filter(|f| cluster.takes(f))
                .map(|f| (f.stream.to_string(), f.epoch))
                .collect::<Vec<_>>(),
            [("p-7".to_string(), 1)]
        );
    }
}
