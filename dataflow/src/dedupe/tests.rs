use super::{Dedupe, Verdict};
use emostream_testkit::Rng;

const H: u64 = 300_000;
use Verdict::{Count, Repeat};

/// One tap: (stream, user, key, attempt).
type Tap = (&'static str, &'static str, &'static str, u64);

/// Reads one record stamped `ts` and returns each tap's verdict.
fn record(d: &mut Dedupe, ts: u64, taps: &[Tap]) -> Vec<Verdict> {
    d.record(ts);
    taps.iter()
        .map(|&(stream, user, key, attempt)| d.tap(stream, user, key, attempt))
        .collect()
}

#[test]
fn a_request_counts_once_and_its_copies_are_dropped() {
    let mut d = Dedupe::new(H, 1_000);
    // The first attempt: three taps of one user, all count.
    assert_eq!(
        record(&mut d, 1_000, &[("s", "u", "k", 1); 3]),
        [Count, Count, Count]
    );
    // Its retries, through other gateways (other attempts), in later records.
    assert_eq!(record(&mut d, 2_000, &[("s", "u", "k", 2); 3]), [Repeat; 3]);
    assert_eq!(record(&mut d, 2_500, &[("s", "u", "k", 3)]), [Repeat]);
    // The same key from another user, on another stream, or another key: other requests.
    assert_eq!(
        record(
            &mut d,
            3_000,
            &[("s", "v", "k", 4), ("t", "u", "k", 5), ("s", "u", "k2", 6)]
        ),
        [Count, Count, Count]
    );
    assert_eq!(d.len(), 4);
}

/// Two attempts packed into one record (one gateway took both before its batch went out):
/// the first one's taps count, the second one's do not, wherever they fall in the record.
#[test]
fn two_attempts_in_one_record_count_once() {
    let mut d = Dedupe::new(H, 1_000);
    assert_eq!(
        record(
            &mut d,
            1_000,
            &[
                ("s", "u", "k", 1),
                ("s", "u", "k", 1),
                ("s", "u", "k", 2),
                ("s", "u", "k", 2),
                ("s", "u", "k", 1),
            ]
        ),
        [Count, Count, Repeat, Repeat, Count]
    );
}

/// The horizon runs on record timestamps from the key's last copy: a copy just inside it is
/// dropped (and keeps the key remembered), one a whole horizon after the last is a new
/// request; a record stamped earlier than the clock does not move it back.
#[test]
fn the_horizon_runs_from_the_last_copy_on_the_log_clock() {
    let mut d = Dedupe::new(H, 1_000);
    assert_eq!(record(&mut d, 10_000, &[("s", "u", "k", 1)]), [Count]);
    assert_eq!(
        record(&mut d, 10_000 + H - 1, &[("s", "u", "k", 2)]),
        [Repeat]
    );
    // An older record (another gateway's clock) within the horizon of the newest.
    assert_eq!(record(&mut d, 5_000, &[("s", "u", "k", 3)]), [Repeat]);
    assert_eq!(
        record(&mut d, 10_000 + 2 * H - 2, &[("s", "u", "k", 4)]),
        [Repeat]
    );
    // A horizon of silence: forgotten, the next copy counts as a new request.
    assert_eq!(
        record(&mut d, 10_000 + 3 * H - 2, &[("s", "u", "k", 5)]),
        [Count]
    );
    assert_eq!(d.len(), 1);
    d.record(10_000 + 4 * H - 2);
    assert!(d.is_empty(), "forgotten once its horizon has passed");
}

/// At most `max_keys` keys: the one seen least recently goes first, and a copy of it then
/// counts again.
#[test]
fn the_least_recently_seen_key_is_forgotten_past_the_bound() {
    let mut d = Dedupe::new(H, 2);
    record(&mut d, 1_000, &[("s", "u", "a", 1), ("s", "u", "b", 2)]);
    // `a` seen again (a repeat), so `b` is now the least recent.
    assert_eq!(record(&mut d, 2_000, &[("s", "u", "a", 3)]), [Repeat]);
    assert_eq!(record(&mut d, 3_000, &[("s", "u", "c", 4)]), [Count]);
    assert_eq!(d.len(), 2);
    assert_eq!(
        record(&mut d, 4_000, &[("s", "u", "a", 5), ("s", "u", "b", 6)]),
        [Repeat, Count],
        "b was forgotten"
    );
}

#[test]
fn a_line_without_a_key_or_an_attempt_always_counts() {
    let mut d = Dedupe::new(H, 16);
    let line = |request_id: Option<&'static str>, attempt: Option<u64>| {
        emostream_protocol::wire::EmojiEvent {
            stream: "s".into(),
            user_id: "u".into(),
            emoji: "🔥".into(),
            ts: None,
            recv_ms: 1_000,
            request_id: request_id.map(Into::into),
            attempt,
        }
    };
    d.record(1_000);
    for _ in 0..2 {
        assert_eq!(d.event(&line(None, None)), Count);
        assert_eq!(d.event(&line(Some("k"), None)), Count);
    }
    assert_eq!(d.event(&line(Some("k"), Some(1))), Count);
    assert_eq!(d.event(&line(Some("k"), Some(2))), Repeat);
}

/// One record of a random log: its timestamp and taps.
#[derive(Debug, Clone)]
struct Record {
    ts: u64,
    taps: Vec<(&'static str, &'static str, &'static str, u64)>,
}

const USERS: [&str; 3] = ["u0", "u1", "u2"];
const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];

/// A log whose record timestamps wander (gateways' clocks apart, a late record now and then),
/// whose requests reuse a few keys, each copy as its own attempt, sometimes two in one record.
fn random_log(rng: &mut Rng, horizon: u64, len: usize) -> Vec<Record> {
    let mut clock = 1_000_000;
    let mut attempt = 0;
    (0..len)
        .map(|_| {
            clock += rng.next_u64() % (horizon / 3);
            // A record stamped up to a horizon behind the newest.
            let ts = clock - rng.next_u64() % (horizon + horizon / 2).min(clock);
            let mut taps = Vec::new();
            for _ in 0..1 + rng.next_u64() % 2 {
                attempt += 1;
                let user = USERS[(rng.next_u64() % 3) as usize];
                let key = KEYS[(rng.next_u64() % 6) as usize];
                for _ in 0..1 + rng.next_u64() % 3 {
                    taps.push(("s", user, key, attempt));
                }
            }
            Record { ts, taps }
        })
        .collect()
}

/// The replay decides as the first run did: for random logs, every resume offset R, and a
/// bound on keys that bites, a partition refilled as `refill` does it (from the first record
/// stamped at or after the timestamp of record R − 1 minus the horizon, up to R) gives every
/// tap from R on the verdict the run that read the whole log gave it.
#[test]
fn a_refilled_replay_decides_as_the_first_run() {
    let mut rng = Rng::seeded(22);
    let mut repeats = 0;
    for case in 0..300 {
        let horizon = 1_000 + rng.next_u64() % 4_000;
        let max_keys = 1 + (rng.next_u64() % 12) as usize;
        let log = random_log(&mut rng, horizon, 60);
        let mut first = Dedupe::new(horizon, max_keys);
        let verdicts: Vec<Vec<Verdict>> = log
            .iter()
            .map(|r| record(&mut first, r.ts, &r.taps))
            .collect();
        repeats += verdicts.iter().flatten().filter(|v| **v == Repeat).count();
        for resume in 1..log.len() {
            let from_ms = log[resume - 1].ts.saturating_sub(horizon);
            let start = log
                .iter()
                .position(|r| r.ts >= from_ms)
                .expect("record resume − 1 itself");
            let mut replay = Dedupe::new(horizon, max_keys);
            for r in &log[start..resume] {
                record(&mut replay, r.ts, &r.taps);
            }
            for (i, r) in log.iter().enumerate().skip(resume) {
                assert_eq!(
                    record(&mut replay, r.ts, &r.taps),
                    verdicts[i],
                    "case {case}, resumed at {resume}, record {i}"
                );
            }
        }
    }
    // The logs repeat keys within the horizon often enough for the check to mean something.
    assert!(repeats > 1_000, "{repeats} repeats");
}
