//! Fencing a second cluster: two clusters writing into the same topics (`run_workers.sh` started
//! twice for one `cluster.toml`, or on two sets of hosts) must not both publish.
//!
//! Each progress record names the record it continues (`follows`). Of the records following one
//! offset, the first in the log wins; a cluster whose record lost that race stops before it
//! opens the gate to the next epoch, with [`EXIT_FENCED`], and its supervisor does not restart it.
//! So at most one cluster ever gets past a progress record: the loser may have published the
//! epochs of the floor schedule of the record both continued, which the replay rule makes
//! byte-identical to the winner's, and nothing later. Nisshi refuses transactional producers,
//! so the broker itself cannot fence the writer; the log's order decides instead.
//!
//! A record that beat the cluster's own is not always another cluster's: a record in flight when
//! the cluster's predecessor was killed can land after the restarted cluster read the topic's
//! end, and continue the same record. Each record names the cluster run that wrote it, so the
//! check watches the rival's run for a while ([`ChainCheck::start`]'s `quiet`): a live cluster
//! writes its next record within an epoch or two, following the rival or at least as the rival's
//! run; a killed one writes nothing. Silence means a ghost ([`Verdict::Ghost`]): the process
//! exits with [`EXIT_RESUME`] and its supervisor restarts the cluster, which then resumes from
//! the ghost, the newest record on the chain (the chain's epochs strictly increase, so the
//! cluster cannot simply carry on by writing its record again after the ghost).
//!
//! A record written right after the one it follows (`own == follows + 1`) is on the chain
//! without reading anything: no record lies between them, so none can have followed that one
//! first. That is every record while one cluster runs, and the check costs nothing on the
//! epoch's way out. Otherwise the check reads the progress topic from the followed record to the
//! cluster's own, on a thread of its own: the worker only sends the question and is woken with
//! the answer. The reader is assigned only while it reads: the development broker answers a
//! fetch that finds nothing by reading its storage again and again until the fetch's wait is
//! over, so a reader left fetching between questions cost it a fifth of a core with nothing to
//! read (docs/benchmarks.md, "What an idle cluster costs the broker").

use crate::error::Error;
use crate::reader;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::progress::Progress;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use timely::scheduling::SyncActivator;

/// The exit status of a process whose cluster lost the progress chain to another cluster:
/// `run_workers.sh` stops instead of restarting it.
pub const EXIT_FENCED: i32 = emostream_protocol::exit::FENCED;

/// The exit status of a process whose record lost to its own predecessor's ghost: the
/// supervisor restarts it (any status but 3 and 4), and the next run resumes from the ghost.
/// EX_TEMPFAIL of sysexits.h: try again.
pub const EXIT_RESUME: i32 = 75;

/// How long the broker may take to show the records up to the cluster's own (which it has
/// acknowledged already). The gate stays closed meanwhile, which is safe for any length: this
/// only bounds how long a broker outage right after an acknowledgement may last before the
/// process gives up and is restarted, far beyond the brief outages a restarted broker causes.
const PATIENCE: Duration = Duration::from_secs(60);

/// Whether a progress record continued the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No other record followed the same one before it: it is on the chain.
    OnChain,
    /// The record at `rival` followed the same one first, and its run wrote on: another
    /// cluster is live on these topics.
    Lost { rival: i64 },
    /// The record at `rival` followed the same one first, and its run wrote nothing more within
    /// the quiet time: a record in flight when the cluster's predecessor was killed.
    Ghost { rival: i64 },
}

type Answer = Result<Verdict, Error>;

/// The checking thread's handle.
pub struct ChainCheck {
    questions: mpsc::Sender<(i64, i64)>,
    answer: Arc<Mutex<Option<Answer>>>,
    wake: Arc<OnceLock<SyncActivator>>,
}

impl ChainCheck {
    /// Starts the thread and its consumer of `topic`'s partition 0. A rival whose run writes
    /// nothing more for `quiet` is taken for a ghost: `quiet` must cover the time a live
    /// cluster takes from one record to the next (an epoch closing, its frames and record
    /// acknowledged, its chain check).
    pub fn start(kafka: &KafkaConfig, topic: &str, quiet: Duration) -> Result<Self, Error> {
        let consumer = reader::assigned(kafka, topic, "fence reader", "emostream-fence", 10)?;
        let (questions, asked) = mpsc::channel::<(i64, i64)>();
        let answer = Arc::new(Mutex::new(None));
        let wake: Arc<OnceLock<SyncActivator>> = Arc::new(OnceLock::new());
        let (reply, woken, topic) = (Arc::clone(&answer), Arc::clone(&wake), topic.to_string());
        std::thread::Builder::new()
            .name("fence".into())
            .spawn(move || {
                // Ends when the operator (and with it the sender) is gone.
                while let Ok((follows, own)) = asked.recv() {
                    let verdict = check(&consumer, &topic, follows, own, quiet);
                    *reply.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
                    if let Some(wake) = woken.get() {
                        // The worker may be gone at shutdown; nothing is waiting then.
                        let _ = wake.activate();
                    }
                }
            })
            .expect("the fence thread starts");
        Ok(ChainCheck {
            questions,
            answer,
            wake,
        })
    }

    /// Routes answers to the operator at this activator.
    pub fn wake(&self, activator: SyncActivator) {
        let _ = self.wake.set(activator);
    }

    /// Asks whether the record at `own`, following the record at `follows`, is on the chain.
    pub fn ask(&self, follows: i64, own: i64) {
        self.questions
            .send((follows, own))
            .expect("the fence thread lives as long as its handle");
    }

    /// The answer to the last question, once it is there.
    pub fn answer(&self) -> Option<Answer> {
        self.answer.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Whether the record at `own`, following the record at `follows`, is on the chain: at once when
/// nothing lies between them, else by reading `topic` from `follows + 1` up to `own` (the first
/// record there following `follows` won) and, if that is not `own`, on for `quiet` to tell a
/// live rival from a ghost.
fn check(consumer: &BaseConsumer, topic: &str, follows: i64, own: i64, quiet: Duration) -> Answer {
    if own == follows + 1 {
        return Ok(Verdict::OnChain);
    }
    let read = |source| Error::ProgressRead {
        topic: topic.to_string(),
        source,
    };
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(follows + 1))
        .map_err(read)?;
    consumer.assign(&assignment).map_err(read)?;
    let verdict = read_chain(consumer, topic, follows, own, quiet);
    // Until the next question that needs reading (see the module's header).
    consumer.unassign().map_err(read)?;
    verdict
}

/// [`check`]'s reading, the reader assigned from `follows + 1`.
fn read_chain(
    consumer: &BaseConsumer,
    topic: &str,
    follows: i64,
    own: i64,
    quiet: Duration,
) -> Answer {
    let mut deadline = Instant::now() + PATIENCE;
    // The rival's offset and run, once found.
    let mut rival: Option<(i64, Option<u64>)> = None;
    loop {
        if Instant::now() >= deadline {
            return match rival {
                Some((offset, _)) => Ok(Verdict::Ghost { rival: offset }),
                None => Err(Error::ProgressTimeout {
                    topic: topic.to_string(),
                    patience: PATIENCE,
                }),
            };
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => message,
            // librdkafka reports a broker it cannot reach and carries on once it answers.
            Some(Err(error)) => {
                tracing::debug!(%error, "fence reader");
                continue;
            }
            None => continue,
        };
        let offset = message.offset();
        let record = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Progress>(p).ok());
        match rival {
            None if offset >= own => return Ok(Verdict::OnChain),
            None => {
                if let Some(record) = record.filter(|r| r.follows == Some(follows)) {
                    tracing::warn!(
                        rival = offset,
                        run = ?record.run,
                        ?quiet,
                        "another record continued the chain first; watching whether its run writes on"
                    );
                    rival = Some((offset, record.run));
                    deadline = Instant::now() + quiet;
                }
            }
            Some((rival, run)) => {
                let live = record
                    .is_some_and(|r| r.follows == Some(rival) || (run.is_some() && r.run == run));
                if live {
                    return Ok(Verdict::Lost { rival });
                }
            }
        }
    }
}
