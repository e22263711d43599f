//! Every way a dataflow worker fails to start, and how a delivery fails once it runs.

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
    /// The broker refused a record of `epoch` after librdkafka's own retries.
    #[error("epoch {epoch} was not delivered: {source}")]
    Delivery { epoch: u64, source: KafkaError },
}
