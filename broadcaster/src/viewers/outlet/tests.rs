use super::*;
use crate::hub::{FrameData, Hub};
use crate::metrics::Conn;
use std::sync::atomic::{AtomicBool, Ordering};

fn lagged_notice(missed: u64) -> String {
    wire::notice_json(&ViewerNotice::Lagged { missed })
}

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
    fn notice(notice: &ViewerNotice) -> Bytes {
        wire::notice_json(notice).into()
    }
    fn farewell(code: u16, reason: &str) -> Bytes {
        format!("close {code} {reason}").into()
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
    outlet.start(0, Vec::new(), None);
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
    outlet.start(f[0].seq, vec![Arc::clone(&f[0])], None);
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
    outlet.start(0, Vec::new(), None);
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
    patient.start(0, Vec::new(), None);
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

#[test]
fn a_replay_larger_than_the_budget_goes_whole_before_live_frames() {
    let hub = Hub::new(60);
    let f = frames(&hub, 1..=20);
    let frame_len = f[0].sse.len();
    let wire = Recorder::default();
    // A budget of four short frames, a replay of twelve, and three live frames while it waits.
    let outlet = Outlet::new(wire.clone(), 4 * frame_len);
    outlet.start(f[11].seq, f[..12].to_vec(), None);
    let mut sent = Deliveries::default();
    wire.blocked.store(true, Ordering::Relaxed);
    for frame in &f[12..=14] {
        assert!(outlet.offer(frame, &mut sent));
    }
    assert_eq!(outlet.standing(), Standing::Open, "the replay is not lag");
    wire.blocked.store(false, Ordering::Relaxed);
    let metrics = Metrics::new("subscriber");
    assert!(matches!(drain(&outlet, &metrics), Poll::Ready(Ok(()))));
    assert_eq!(wire.text(), f[..=14].iter().map(sse).collect::<String>());

    // Live frames past the outbox while a replay waits are conflated, and only they are.
    let other = Recorder::default();
    let joiner = Outlet::new(other.clone(), 1 << 20);
    let gap = ViewerNotice::Gap {
        since: 0,
        oldest: Some(1),
    };
    joiner.start(f[9].seq, f[..10].to_vec(), Some(&gap));
    other.blocked.store(true, Ordering::Relaxed);
    for frame in &f[10..] {
        assert!(joiner.offer(frame, &mut sent));
    }
    other.blocked.store(false, Ordering::Relaxed);
    assert!(matches!(drain(&joiner, &metrics), Poll::Ready(Ok(()))));
    let want = wire::notice_json(&gap)
        + &f[..10].iter().map(sse).collect::<String>()
        + &lagged_notice(6)
        + &f[16..].iter().map(sse).collect::<String>();
    assert_eq!(other.text(), want);
}
