use super::*;
use crate::hub::{FrameData, Hub};
use crate::metrics::Conn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn lagged_notice(missed: u64) -> String {
    wire::notice_json(&ViewerNotice::Lagged { missed })
}

/// A wire that records what it takes, one entry per write, and takes nothing while `blocked`.
#[derive(Clone)]
struct Recorder {
    taken: Arc<Mutex<Vec<Bytes>>>,
    blocked: Arc<AtomicBool>,
    /// Bytes the next write takes at most (0: all).
    limit: Arc<AtomicUsize>,
    /// The peer acknowledges everything it was sent at once; otherwise nothing.
    acks: Arc<AtomicBool>,
    /// How often the kernel was asked what the peer acknowledged.
    asked: Arc<AtomicUsize>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            taken: Arc::default(),
            blocked: Arc::default(),
            limit: Arc::default(),
            acks: Arc::new(AtomicBool::new(true)),
            asked: Arc::default(),
        }
    }
}

impl Wire for Recorder {
    const CONN: Conn = Conn::Sse;
    fn frame(frame: &FrameData) -> &Bytes {
        frame.sse()
    }
    fn notice(notice: &ViewerNotice) -> Bytes {
        wire::notice_json(notice).into()
    }
    fn farewell(code: u16, reason: &str) -> Bytes {
        format!("close {code} {reason}").into()
    }
    fn ping() -> Bytes {
        Bytes::from_static(b": ping\n\n")
    }
    fn try_write<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a Bytes>,
        offset: usize,
    ) -> io::Result<usize> {
        if self.blocked.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let mut bytes = Vec::new();
        for part in parts {
            bytes.extend_from_slice(part);
        }
        let bytes = Bytes::from(bytes).slice(offset..);
        let limit = self.limit.swap(0, Ordering::Relaxed);
        let n = if limit == 0 {
            bytes.len()
        } else {
            limit.min(bytes.len())
        };
        self.taken.lock().unwrap().push(bytes.slice(..n));
        Ok(n)
    }
    fn unacknowledged(&self) -> Option<usize> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let sent = self.taken.lock().unwrap().iter().map(Bytes::len).sum();
        Some(if self.acks.load(Ordering::Relaxed) {
            0
        } else {
            sent
        })
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
    fn asked(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }

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

/// Limits with a byte budget and staleness far away.
fn budget(budget_bytes: usize) -> ViewerLimits {
    ViewerLimits::new(budget_bytes, Duration::from_secs(3600))
}

/// Limits that hold live frames back once the oldest unacknowledged one is `hold` old, with a
/// budget and a closing time far away.
fn held_after(hold: Duration) -> ViewerLimits {
    ViewerLimits {
        budget_bytes: 1 << 20,
        hold_after: hold,
        close_after: Duration::from_secs(3600),
    }
}

/// `n` published frames, and an outlet on a recording wire that takes live frames after
/// none, within `budget_bytes`.
fn fixture(n: u64, budget_bytes: usize) -> (Vec<Frame>, Recorder, Arc<Outlet<Recorder>>) {
    let hub = Hub::new(60);
    let f = frames(&hub, 1..=n);
    let wire = Recorder::default();
    let outlet = Outlet::new(wire.clone(), budget(budget_bytes));
    outlet.start(0, None, Vec::new(), None);
    (f, wire, outlet)
}

fn drain(outlet: &Outlet<Recorder>, metrics: &Metrics) -> Poll<io::Result<()>> {
    let waker = futures_util::task::noop_waker();
    outlet.poll_drain(&mut Context::from_waker(&waker), metrics)
}

fn sse(frame: &Frame) -> String {
    String::from_utf8_lossy(frame.sse()).into_owned()
}

fn one(frame: &Frame) -> [Frame; 1] {
    [Arc::clone(frame)]
}

/// A frame of stream "main" as this tier got it `age` ago, numbered `seq`.
fn aged(kind: &str, epoch: u64, seq: u64, age: Duration) -> Frame {
    let hub = Hub::new(1);
    let text = format!(r#"{{"type":"{kind}","stream":"main","epoch":{epoch}}}"#);
    let mut link = hub.link();
    hub.publish(text.into()).unwrap();
    let fresh = link.try_recv().unwrap();
    Arc::new(FrameData {
        stream: Arc::clone(&fresh.stream),
        epoch,
        kind: fresh.kind,
        seq,
        ring: fresh.ring,
        text: fresh.text.clone(),
        ws: fresh.ws.clone(),
        sse: fresh.sse.clone(),
        at: Instant::now() - age,
    })
}

#[test]
fn a_viewer_that_keeps_up_gets_each_batch_in_one_write_and_only_after_its_replay() {
    let hub = Hub::new(60);
    let f = frames(&hub, 1..=4);
    let wire = Recorder::default();
    let outlet = Outlet::new(wire.clone(), budget(1 << 20));
    let mut sent = Deliveries::default();
    outlet.start(f[0].seq, None, vec![Arc::clone(&f[0])], None);
    // The replay waits for the task; live frames queue behind it, in order.
    assert!(
        outlet.offer(&one(&f[0]), &mut sent),
        "covered by the replay"
    );
    assert!(outlet.offer(&one(&f[1]), &mut sent));
    assert_eq!(wire.text(), "");
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    assert_eq!(wire.text(), sse(&f[0]) + &sse(&f[1]));
    assert_eq!(wire.taken.lock().unwrap().len(), 1, "one write for both");
    // Caught up: the next batch goes straight in, in one write.
    assert!(outlet.offer(&f[2..4], &mut sent));
    assert_eq!(wire.taken.lock().unwrap().len(), 2);
    assert_eq!(wire.text(), f.iter().map(sse).collect::<String>());
    assert_eq!(outlet.busy_since(), None);
}

#[test]
fn a_partial_write_is_finished_before_anything_else() {
    let (f, wire, outlet) = fixture(2, 1 << 20);
    let mut sent = Deliveries::default();
    wire.limit.store(5, Ordering::Relaxed);
    assert!(outlet.offer(&one(&f[0]), &mut sent));
    outlet.push_pong(Bytes::from_static(b"pong;"));
    outlet.push_pong(Bytes::from_static(b"newer pong;"));
    assert!(outlet.offer(&one(&f[1]), &mut sent));
    assert_eq!(wire.text(), sse(&f[0])[..5]);
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    // Only the newest unsent pong is kept.
    assert_eq!(wire.text(), sse(&f[0]) + "newer pong;" + &sse(&f[1]));
}

#[test]
fn a_stalled_viewer_skips_to_the_newest_epoch_is_told_and_closed_past_its_budget() {
    let hub = Hub::new(60);
    let f = frames(&hub, 1..=8);
    let wire = Recorder::default();
    let len = f[0].sse().len();
    let outlet = Outlet::new(wire.clone(), budget(5 * len + len / 2));
    outlet.start(0, None, Vec::new(), None);
    let mut sent = Deliveries::default();
    wire.limit.store(3, Ordering::Relaxed);
    assert!(
        outlet.offer(&one(&f[0]), &mut sent),
        "3 bytes taken, the rest waits"
    );
    wire.blocked.store(true, Ordering::Relaxed);
    // Each newer epoch replaces the one waiting: behind by the conflated ones, the one
    // waiting, and the rest of epoch 1.
    for frame in &f[1..=4] {
        assert!(outlet.offer(&one(frame), &mut sent));
    }
    assert_eq!(outlet.standing(), Standing::Open, "5 frames less 3 bytes");
    assert!(outlet.offer(&one(&f[5]), &mut sent));
    assert_eq!(
        outlet.standing(),
        Standing::TooSlow,
        "6 frames less 3 bytes"
    );

    // A viewer with budget to spare that took nothing of 8 epochs: the newest, after a notice
    // of the 7 it missed.
    let other = Recorder::default();
    let patient = Outlet::new(other.clone(), budget(1 << 20));
    patient.start(0, None, Vec::new(), None);
    other.blocked.store(true, Ordering::Relaxed);
    for frame in &f {
        assert!(patient.offer(&one(frame), &mut sent));
    }
    other.blocked.store(false, Ordering::Relaxed);
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&patient, &metrics), Poll::Ready(Ok(()))));
    assert_eq!(other.text(), lagged_notice(7) + &sse(&f[7]));
}

#[test]
fn a_viewer_whose_peer_lags_in_time_is_held_skipped_forward_told_and_then_closed() {
    let hold = Duration::from_secs(2);
    let limits = held_after(hold);
    let wire = Recorder::default();
    let outlet = Outlet::new(wire.clone(), limits);
    outlet.start(0, None, Vec::new(), None);
    let mut sent = Deliveries::default();
    let metrics = Metrics::new("subscriber");
    // The peer acknowledges nothing of epoch 1, which came 3 s ago.
    wire.acks.store(false, Ordering::Relaxed);
    let e1 = aged("epoch", 1, 1, hold + Duration::from_secs(1));
    assert!(outlet.offer(&one(&e1), &mut sent));
    assert_eq!(wire.text(), sse(&e1));
    // Epoch 2 and its trend frame are held back rather than queued behind it in the kernel…
    let e2 = aged("epoch", 2, 2, Duration::ZERO);
    let t2 = aged("trending", 2, 3, Duration::ZERO);
    assert!(outlet.offer(&[Arc::clone(&e2), Arc::clone(&t2)], &mut sent));
    assert!(outlet.held());
    assert!(drain(&outlet, &metrics).is_pending());
    assert_eq!(wire.text(), sse(&e1));
    // …and epoch 3 replaces them. The viewer is told at once, though epoch 3 is held too.
    let e3 = aged("epoch", 3, 4, Duration::ZERO);
    assert!(outlet.offer(&one(&e3), &mut sent));
    assert!(drain(&outlet, &metrics).is_pending());
    assert!(outlet.held());
    assert_eq!(wire.text(), sse(&e1) + &lagged_notice(2));
    // The peer catches up: it gets the newest.
    wire.acks.store(true, Ordering::Relaxed);
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    assert!(!outlet.held());
    assert_eq!(wire.text(), sse(&e1) + &lagged_notice(2) + &sse(&e3));
    assert_eq!(outlet.standing(), Standing::Open);

    // A viewer that keeps skipping past `close_after` is closed as too slow.
    let limits = ViewerLimits {
        close_after: Duration::ZERO,
        ..limits
    };
    let wire = Recorder::default();
    let outlet = Outlet::new(wire.clone(), limits);
    outlet.start(0, None, Vec::new(), None);
    wire.acks.store(false, Ordering::Relaxed);
    assert!(outlet.offer(&one(&e1), &mut sent));
    assert!(outlet.offer(&one(&e2), &mut sent));
    assert_eq!(
        outlet.standing(),
        Standing::Open,
        "held, nothing skipped yet"
    );
    assert!(outlet.offer(&one(&e3), &mut sent));
    assert_eq!(outlet.standing(), Standing::TooSlow);
}

#[test]
fn what_the_lane_confirmed_between_epochs_is_not_asked_again_at_the_next_write() {
    let hold = Duration::from_secs(2);
    let limits = held_after(hold);
    let old = hold + Duration::from_secs(1);
    let wire = Recorder::default();
    let outlet = Outlet::new(wire.clone(), limits);
    outlet.start(0, None, Vec::new(), None);
    let mut sent = Deliveries::default();
    // Epoch 1 came longer ago than the hold: the next write would ask about it.
    let e1 = aged("epoch", 1, 1, old);
    assert!(outlet.offer(&one(&e1), &mut sent));
    assert_eq!(wire.asked(), 0, "nothing was written before epoch 1");
    outlet.confirm();
    assert_eq!(wire.asked(), 1);
    outlet.confirm();
    assert_eq!(wire.asked(), 1, "nothing unconfirmed is left to ask about");
    let e2 = aged("epoch", 2, 2, old);
    assert!(outlet.offer(&one(&e2), &mut sent));
    assert_eq!(wire.asked(), 1, "epoch 2 went without a question");
    assert_eq!(wire.text(), sse(&e1) + &sse(&e2));

    outlet.confirm();
    assert_eq!(wire.asked(), 2);

    // A peer that acknowledges nothing more: the lane's question confirms nothing, and the next
    // write asks again and holds the epoch back.
    wire.acks.store(false, Ordering::Relaxed);
    let e3 = aged("epoch", 3, 3, old);
    assert!(outlet.offer(&one(&e3), &mut sent));
    assert_eq!(wire.asked(), 2, "everything before epoch 3 was confirmed");
    outlet.confirm();
    assert_eq!(wire.asked(), 3);
    let e4 = aged("epoch", 4, 4, Duration::ZERO);
    assert!(outlet.offer(&one(&e4), &mut sent));
    assert_eq!(wire.asked(), 4);
    assert!(outlet.held());
    assert_eq!(wire.text(), sse(&e1) + &sse(&e2) + &sse(&e3));
}

#[test]
fn frames_behind_an_unacknowledged_replay_are_not_held() {
    let hold = Duration::from_secs(2);
    let old = hold + Duration::from_secs(1);
    let wire = Recorder::default();
    let outlet = Outlet::new(
        wire.clone(),
        ViewerLimits {
            budget_bytes: 1 << 20,
            hold_after: hold,
            close_after: Duration::ZERO,
        },
    );
    let replay: Vec<Frame> = (1..=3).map(|e| aged("epoch", e, e, old)).collect();
    outlet.start(3, None, replay.clone(), None);
    wire.acks.store(false, Ordering::Relaxed);
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    let mut sent = Deliveries::default();
    let e4 = aged("epoch", 4, 4, old);
    let e5 = aged("epoch", 5, 5, old);
    assert!(outlet.offer(&one(&e4), &mut sent));
    assert!(outlet.offer(&one(&e5), &mut sent));
    assert!(!outlet.held());
    assert_eq!(outlet.standing(), Standing::Open);
    let want: String = replay.iter().chain([&e4, &e5]).map(sse).collect();
    assert_eq!(wire.text(), want);
}

#[test]
fn a_requested_ping_rides_along_with_the_next_frame_or_goes_alone() {
    let (f, wire, outlet) = fixture(3, 1 << 20);
    let mut sent = Deliveries::default();
    outlet.request_ping();
    assert!(outlet.offer(&one(&f[0]), &mut sent));
    // One write: the frame and the ping behind it; nothing waits.
    assert_eq!(wire.taken.lock().unwrap().len(), 1);
    assert_eq!(wire.text(), sse(&f[0]) + ": ping\n\n");
    assert_eq!(outlet.busy_since(), None);
    outlet.ping_now();
    assert_eq!(outlet.busy_since(), None, "already sent");

    // The socket takes the frame and half the ping: the rest waits for the task.
    outlet.request_ping();
    wire.limit.store(f[1].sse().len() + 4, Ordering::Relaxed);
    assert!(outlet.offer(&one(&f[1]), &mut sent));
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
    assert!(outlet.offer(&one(&f[2]), &mut sent));
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
    outlet.offer(&one(&f[0]), &mut sent);
    outlet.offer(&one(&f[1]), &mut sent);
    outlet.finish(Some(Bytes::from_static(b"bye")));
    assert!(
        !outlet.offer(&one(&f[2]), &mut sent),
        "a finished outlet is forgotten"
    );
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    assert_eq!(wire.text(), sse(&f[0]) + "bye");
    outlet.close();
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
}

#[test]
fn a_replay_larger_than_the_budget_goes_whole_before_live_frames() {
    let hub = Hub::new(60);
    let f = frames(&hub, 1..=20);
    let frame_len = f[0].sse().len();
    let wire = Recorder::default();
    // A budget of four short frames, a replay of twelve, and three live frames while it waits.
    let outlet = Outlet::new(wire.clone(), budget(4 * frame_len));
    outlet.start(f[11].seq, None, f[..12].to_vec(), None);
    let mut sent = Deliveries::default();
    wire.blocked.store(true, Ordering::Relaxed);
    for frame in &f[12..=14] {
        assert!(outlet.offer(&one(frame), &mut sent));
    }
    assert_eq!(outlet.standing(), Standing::Open, "the replay is not lag");
    wire.blocked.store(false, Ordering::Relaxed);
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    assert_eq!(wire.text(), f[..=14].iter().map(sse).collect::<String>());

    // Live frames past the outbox while a replay waits are conflated (the oldest first), and
    // only they are: a newer epoch does not replace older ones queued behind a replay.
    let other = Recorder::default();
    let joiner = Outlet::new(other.clone(), budget(1 << 20));
    let gap = ViewerNotice::Gap {
        since: 0,
        oldest: Some(1),
    };
    joiner.start(f[9].seq, None, f[..10].to_vec(), Some(&gap));
    other.blocked.store(true, Ordering::Relaxed);
    for frame in &f[10..] {
        assert!(joiner.offer(&one(frame), &mut sent));
    }
    other.blocked.store(false, Ordering::Relaxed);
    assert!(matches!(drain(&joiner, &metrics), Poll::Ready(Ok(()))));
    let want = wire::notice_json(&gap)
        + &f[..10].iter().map(sse).collect::<String>()
        + &lagged_notice(2)
        + &f[12..].iter().map(sse).collect::<String>();
    assert_eq!(other.text(), want);
}

#[test]
fn an_epoch_the_viewer_has_is_not_sent_again_live() {
    // A viewer that joined with `since` = 5 before the stream synced: the tier above's ring
    // arrives afterwards, live, and only what is newer than 5 reaches it.
    let wire = Recorder::default();
    let outlet = Outlet::new(wire.clone(), budget(1 << 20));
    outlet.start(0, Some(5), Vec::new(), None);
    let mut sent = Deliveries::default();
    let ring: Vec<Frame> = (3..=7)
        .map(|e| aged("epoch", e, e, Duration::ZERO))
        .collect();
    assert!(outlet.offer(&ring, &mut sent));
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    assert_eq!(wire.text(), sse(&ring[3]) + &sse(&ring[4]));
    // Nor what it was sent already; a trend frame of a known epoch still goes.
    let again = [
        aged("epoch", 7, 8, Duration::ZERO),
        aged("trending", 7, 9, Duration::ZERO),
    ];
    assert!(outlet.offer(&again, &mut sent));
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    assert_eq!(
        wire.text(),
        sse(&ring[3]) + &sse(&ring[4]) + &sse(&again[1])
    );
}
