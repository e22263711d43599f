//! Every way a dataflow worker fails to start, and how a delivery fails once it runs.

use emostream_protocol::exit;
use rdkafka::error::KafkaError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client (producer, source consumer, recovery reader) could not be created or
    /// assigned its partitions.
    #[error("{topic} {client}: {source}")]
    Client {
        topic: String,
        client: &'static str,
        source: KafkaError,
    },
    /// The brokers did not answer a metadata request for `topic`.
    #[error("{topic} metadata: {source}")]
    Metadata { topic: String, source: KafkaError },
    /// The brokers' `topic` has another partition count than the configuration.
    #[error(
        "topic {topic} has {found} partitions on the brokers; the configuration needs {expected}"
    )]
    Partitions {
        topic: String,
        found: usize,
        expected: u32,
    },
    /// The progress topic's newest record could not be read back.
    #[error("reading {topic}: {source}")]
    ProgressRead { topic: String, source: KafkaError },
    /// One of the progress topic's newest records is not a progress record.
    #[error("a recent record of {topic} is not a progress record: {reason}")]
    ProgressUnreadable { topic: String, reason: String },
    /// The progress topic's newest record was written with another value of `setting` than
    /// the configuration's.
    #[error(
        "{setting} is {configured}, but the epochs recorded on {topic} were counted with \
         {recorded}: restarting with another value would renumber or recount epochs already \
         published. Restore {setting} = {recorded}, or start on new progress and epochs topics"
    )]
    SettingChanged {
        topic: String,
        setting: &'static str,
        recorded: u64,
        configured: u64,
    },
    /// The progress topic's newest record did not arrive in time.
    #[error("the last record of {topic} did not arrive within {patience:?}")]
    ProgressTimeout { topic: String, patience: Duration },
    /// The closed epochs the trends windows refill from could not be read back.
    #[error("reading the closed epochs on {topic} to refill the trends windows: {source}")]
    RefillRead { topic: String, source: KafkaError },
    /// The closed epochs the trends windows refill from did not all arrive in time.
    #[error("the closed epochs on {topic} to refill the trends windows did not arrive within {patience:?}")]
    RefillTimeout { topic: String, patience: Duration },
    /// The records before a resume offset, whose idempotency keys a restart remembers again,
    /// could not be read back.
    #[error("reading {topic} before the resume offsets to refill the idempotency keys: {source}")]
    DedupeRead { topic: String, source: KafkaError },
    /// Those records stopped arriving.
    #[error(
        "the records of {topic} before the resume offsets (to refill the idempotency keys) \
         stopped arriving for {patience:?}"
    )]
    DedupeTimeout { topic: String, patience: Duration },
    /// The admin client could not describe or create the progress topic.
    #[error("{topic} settings: {source}")]
    Admin { topic: String, source: KafkaError },
    /// The progress topic's settings let the broker delete its records.
    #[error(
        "refusing to start: {topic} can lose records ({reason}). It is the cluster's memory: \
         with its newest record deleted a restart would count retained events again. Keep every \
         record: kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
         --add-config retention.ms=-1,retention.bytes=-1, then start again"
    )]
    ProgressRetention { topic: String, reason: String },
    /// Progress records were deleted while the epochs they stood for are published.
    #[error(
        "refusing to start: {what}. Counting now would count retained events again and \
         re-publish epochs with other contents. Restore the progress topic's records, or start \
         over on new progress and epochs topics (docs/operations.md, \"The progress topic\")"
    )]
    ProgressLost { what: String },
    /// The published epochs could not be read back to check the progress topic against.
    #[error("reading the published epochs on {topic}: {source}")]
    EpochsRead { topic: String, source: KafkaError },
    /// The events topic's log start could not be read.
    #[error("reading where {topic} starts: {source}")]
    EventsRead { topic: String, source: KafkaError },
    /// Events not yet in a published epoch were deleted from the events topic.
    #[error(
        "refusing to start: {topic} partition {partition} starts at offset {low}, but the \
         progress record resumes it at offset {resume}: events of epochs not yet published were \
         deleted (its retention is shorter than the outage). Counting on would publish those \
         epochs without them. Raise {topic}'s retention above the longest outage; to go on \
         without the lost events, start over on new progress and epochs topics \
         (docs/operations.md, \"The progress topic\")"
    )]
    EventsDeleted {
        topic: String,
        partition: i32,
        resume: i64,
        low: i64,
    },
    /// The events topic ends below a resume offset: made again, or truncated.
    #[error(
        "refusing to start: {topic} partition {partition} ends at offset {high}, below the \
         offset {resume} the progress record resumes it at. A broker whose leader just changed \
         may say so briefly (the supervisor restarts this process); if it persists, the topic was \
         deleted and made again (or its log truncated), its offsets no longer name the events \
         the progress record counted, and replaying would skip new taps as counted ones: start \
         over on new progress and epochs topics (docs/operations.md, \"The progress topic\")"
    )]
    EventsBehind {
        topic: String,
        partition: i32,
        resume: i64,
        high: i64,
    },
    /// The broker refused a record of `epoch` after librdkafka's own retries.
    #[error("epoch {epoch} was not delivered: {source}")]
    Delivery { epoch: u64, source: KafkaError },
}

impl Error {
    /// The process's exit status for this error, which its supervisor reads: when a restart
    /// cannot help, [`exit::REFUSED`] (the cluster's memory is lost or can be, or events it needs
    /// are deleted) or [`exit::CONFIG`] (a configuration the brokers or the recorded epochs
    /// contradict); 2 (restart) otherwise.
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::ProgressRetention { .. }
            | Error::ProgressLost { .. }
            | Error::EventsDeleted { .. } => exit::REFUSED,
            Error::Partitions { .. } | Error::SettingChanged { .. } => exit::CONFIG,
            _ => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the supervisor does with each refusal: deleted events and a lost memory wait for an
    /// operator; an events partition ending below its resume offset is restarted (a leader's
    /// passing answer), and says what it means should it last.
    #[test]
    fn refusals_that_a_restart_cannot_fix_are_told_apart_from_those_it_may() {
        let topic = || "emoji-events".to_string();
        let deleted = Error::EventsDeleted {
            topic: topic(),
            partition: 1,
            resume: 5,
            low: 9,
        };
        let behind = Error::EventsBehind {
            topic: topic(),
            partition: 1,
            resume: 9,
            high: 5,
        };
        assert_eq!(deleted.exit_status(), exit::REFUSED);
        assert_eq!(behind.exit_status(), 2);
    }
}
