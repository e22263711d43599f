//! A retried request counts once: the taps of a request that carries an `Idempotency-Key` are
//! counted from the first copy of it in its partition's log, and its other copies (the retries,
//! through any gateway: a request's partition follows its stream and first user) are dropped
//! while they keep coming within the horizon.
//!
//! Each partition's decisions are a function of that partition's log alone, so a replay after a
//! crash decides exactly as the first run did and re-published epochs are byte-identical:
//!
//! - **The clock** is the partition's log clock: the newest record timestamp read so far (a
//!   gateway's newest receive time in the batch), never the wall clock.
//! - **The key** is (stream, user, `Idempotency-Key`): one client's key cannot cancel another
//!   user's taps or another stream's. A tap's *attempt* is the number its gateway drew for the
//!   request that carried it (every tap of a request has the same one, and a request's taps all
//!   travel in one record).
//! - **The rule.** A key is remembered from the last record it was seen in until the clock has
//!   moved `horizon_ms` past that record. A tap whose key is remembered with another attempt is
//!   a repeat; otherwise it counts, and the key is remembered with its attempt. So a request's
//!   own taps all count, its copies in later records are dropped, and a copy that arrives after
//!   `horizon_ms` of silence counts again, as a new request.
//! - **Memory** is bounded by `max_keys` per partition: past it the key seen least recently is
//!   forgotten early, which is a function of the log too. A key costs 32 bytes in the table
//!   (16-byte hash, attempt, last seen), about 1 byte of control and the table's slack (7/8
//!   full at most, doubling), plus 24 bytes in the age queue: about 60–100 bytes.
//! - **At a restart** [`refill`] reads, for each partition, the records from the first one stamped
//!   at or after (the timestamp of the record just before the resume offset − horizon) up to the
//!   resume offset, only to remember their keys. Every key still remembered at the resume offset
//!   was last seen in those records, so the replay decides as the first run did (the unit tests
//!   below check it on random logs; the argument is in docs/dataflow.md).
//!
//! A line without an attempt (from a foreign producer) is never a repeat.

use crate::error::Error;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::wire::EmojiEvent;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

/// A key's hash: 128 bits from two SipHash keys drawn at random per process. Random keys
/// keep a client from making two keys collide on purpose; a process's state is rebuilt from
/// the log at every start, so the hash never has to be the same twice.
type Key = [u64; 2];

#[derive(Debug, Clone, Copy)]
struct Seen {
    attempt: u64,
    last_ms: u64,
}

/// What one tap is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Count,
    /// Another copy of a request already counted.
    Repeat,
}

/// One partition's remembered keys.
#[derive(Debug, Clone)]
pub struct Dedupe {
    horizon_ms: u64,
    max_keys: usize,
    /// The newest record timestamp read.
    clock_ms: u64,
    seen: HashMap<Key, Seen>,
    /// (last seen, key) in the order keys were last seen, oldest first. An entry whose key was
    /// seen again later is stale (its time no longer matches) and is skipped.
    by_age: VecDeque<(u64, Key)>,
    hashers: [RandomState; 2],
}

impl Dedupe {
    pub fn new(horizon_ms: u64, max_keys: usize) -> Self {
        Dedupe {
            horizon_ms,
            max_keys,
            clock_ms: 0,
            seen: HashMap::new(),
            by_age: VecDeque::new(),
            hashers: [RandomState::new(), RandomState::new()],
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Call before the taps of a record stamped `timestamp_ms`: the clock moves to it (never
    /// back), and keys not seen for a horizon are forgotten.
    pub fn record(&mut self, timestamp_ms: u64) {
        self.clock_ms = self.clock_ms.max(timestamp_ms);
        while let Some(&(last_ms, key)) = self.by_age.front() {
            if self.clock_ms.saturating_sub(last_ms) < self.horizon_ms {
                break;
            }
            self.by_age.pop_front();
            self.forget_if_last_seen(key, last_ms);
        }
    }

    /// The verdict on one tap of the current record.
    pub fn event(&mut self, event: &EmojiEvent<'_>) -> Verdict {
        match (&event.request_id, event.attempt) {
            (Some(key), Some(attempt)) => self.tap(&event.stream, &event.user_id, key, attempt),
            _ => Verdict::Count,
        }
    }

    /// The verdict on a tap of (`stream`, `user_id`) sent with `request_id` by `attempt`.
    pub fn tap(&mut self, stream: &str, user_id: &str, request_id: &str, attempt: u64) -> Verdict {
        let scoped = (stream, user_id, request_id);
        let key = [
            self.hashers[0].hash_one(scoped),
            self.hashers[1].hash_one(scoped),
        ];
        let now = self.clock_ms;
        match self.seen.get_mut(&key) {
            Some(seen) => {
                let verdict = if seen.attempt == attempt {
                    Verdict::Count
                } else {
                    Verdict::Repeat
                };
                if seen.last_ms != now {
                    seen.last_ms = now;
                    self.by_age.push_back((now, key));
                }
                verdict
            }
            None => {
                self.seen.insert(
                    key,
                    Seen {
                        attempt,
                        last_ms: now,
                    },
                );
                self.by_age.push_back((now, key));
                while self.seen.len() > self.max_keys {
                    let (last_ms, oldest) = self
                        .by_age
                        .pop_front()
                        .expect("every remembered key has an entry in the age queue");
                    self.forget_if_last_seen(oldest, last_ms);
                }
                Verdict::Count
            }
        }
    }

    /// Remembers the keys of a record read before the resume offset, without counting.
    fn refill_record(&mut self, timestamp_ms: u64, payload: &[u8]) {
        self.record(timestamp_ms);
        for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(event) = serde_json::from_slice::<EmojiEvent>(line) {
                self.event(&event);
            }
        }
    }

    fn forget_if_last_seen(&mut self, key: Key, last_ms: u64) {
        if self.seen.get(&key).is_some_and(|s| s.last_ms == last_ms) {
            self.seen.remove(&key);
        }
    }
}

/// A refill that receives nothing for this long has failed.
const PATIENCE: Duration = Duration::from_secs(15);

/// Each of `resumes`' partitions (partition, resume offset) of `topic` with the keys the log
/// before its resume offset leaves remembered, read from the broker (see the module's doc).
/// Runs before the dataflow is built, on the worker's thread, so its blocking calls stall
/// nothing.
pub fn refill(
    kafka: &KafkaConfig,
    topic: &str,
    resumes: &[(i32, i64)],
    horizon_ms: u64,
    max_keys: usize,
) -> Result<BTreeMap<i32, Dedupe>, Error> {
    let mut out: BTreeMap<i32, Dedupe> = resumes
        .iter()
        .map(|(p, _)| (*p, Dedupe::new(horizon_ms, max_keys)))
        .collect();
    let resumes: BTreeMap<i32, i64> = resumes.iter().copied().filter(|r| r.1 > 0).collect();
    if resumes.is_empty() || horizon_ms == 0 || max_keys == 0 {
        return Ok(out);
    }
    let read = |source| Error::DedupeRead {
        topic: topic.to_string(),
        source,
    };
    let consumer = crate::reader::assigned(
        kafka,
        topic,
        "idempotency key reader",
        "emostream-dedupe-refill",
        100,
    )?;
    // Each partition is read up to its resume offset, or to its end if the log ends before (the
    // records there are not written yet, or were lost: no replay will read them either).
    let (mut ends, mut lows, mut before) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (&partition, &resume) in &resumes {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, PATIENCE)
            .map_err(read)?;
        let end = resume.min(high);
        if low < end {
            ends.insert(partition, end);
            lows.insert(partition, low);
            // The record just before the end: the clock there is at least its timestamp.
            before.insert(partition, end - 1);
        }
    }
    let mut last_ms: BTreeMap<i32, i64> = BTreeMap::new();
    read_until(
        &consumer,
        topic,
        &before,
        &ends,
        |partition, offset, ts, _| {
            if offset + 1 == ends[&partition] {
                last_ms.insert(partition, ts);
            }
        },
    )
    .map_err(|e| e.into_error(topic))?;
    for partition in before.keys().filter(|p| !last_ms.contains_key(p)) {
        tracing::warn!(
            partition,
            resume = resumes[partition],
            "no record just before the resume offset: its idempotency keys are not refilled"
        );
    }
    // From the first record stamped a horizon before that.
    let mut by_time = TopicPartitionList::new();
    for (&partition, &ts) in &last_ms {
        let from = ts.saturating_sub(horizon_ms as i64).max(0);
        by_time
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(read)?;
    }
    let mut starts = BTreeMap::new();
    if by_time.count() > 0 {
        for element in consumer
            .offsets_for_times(by_time, PATIENCE)
            .map_err(read)?
            .elements()
        {
            let partition = element.partition();
            // The record before the end is stamped that late, so the broker names an offset
            // below the end; anything else, and the whole log before it is read.
            let start = match element.offset() {
                Offset::Offset(at) if at < ends[&partition] => at,
                _ => lows[&partition],
            };
            starts.insert(partition, start);
        }
    }
    let started = Instant::now();
    let mut records: BTreeMap<i32, u64> = BTreeMap::new();
    read_until(
        &consumer,
        topic,
        &starts,
        &ends,
        |partition, _, ts, payload| {
            *records.entry(partition).or_default() += 1;
            out.get_mut(&partition)
                .expect("a partition of the refill")
                .refill_record(ts.max(0) as u64, payload);
        },
    )
    .map_err(|e| e.into_error(topic))?;
    for (partition, resume) in &resumes {
        tracing::info!(
            partition,
            from = starts.get(partition),
            resume,
            keys = out[partition].len(),
            records = records.get(partition).copied().unwrap_or(0),
            ms = started.elapsed().as_millis() as u64,
            "idempotency keys refilled from the log"
        );
    }
    Ok(out)
}

enum ReadError {
    Kafka(rdkafka::error::KafkaError),
    Silent,
}

impl ReadError {
    fn into_error(self, topic: &str) -> Error {
        match self {
            ReadError::Kafka(source) => Error::DedupeRead {
                topic: topic.to_string(),
                source,
            },
            ReadError::Silent => Error::DedupeTimeout {
                topic: topic.to_string(),
                patience: PATIENCE,
            },
        }
    }
}

/// Reads each partition of `from` (partition → first offset) up to (not including) its offset
/// in `until`, and hands every record to `visit` (partition, offset, timestamp, payload).
fn read_until(
    consumer: &BaseConsumer,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    until: &BTreeMap<i32, i64>,
    mut visit: impl FnMut(i32, i64, i64, &[u8]),
) -> Result<(), ReadError> {
    let mut assignment = TopicPartitionList::new();
    let mut open = BTreeMap::new();
    for (&partition, &start) in from {
        let end = until[&partition];
        if start < end {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(ReadError::Kafka)?;
            open.insert(partition, end);
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    // Nothing fetched for an earlier assignment of this consumer may come through.
    consumer.unassign().map_err(ReadError::Kafka)?;
    consumer.assign(&assignment).map_err(ReadError::Kafka)?;
    let mut heard = Instant::now();
    while !open.is_empty() {
        if heard.elapsed() >= PATIENCE {
            return Err(ReadError::Silent);
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(ReadError::Kafka(e)),
            None => continue,
        };
        heard = Instant::now();
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = open.get(&partition) else {
            continue;
        };
        if offset < end {
            let ts = message.timestamp().to_millis().unwrap_or(0);
            visit(partition, offset, ts, message.payload().unwrap_or_default());
        }
        if offset + 1 >= end {
            open.remove(&partition);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
