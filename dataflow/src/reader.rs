//! The one way the dataflow reads a topic outside its source: a consumer of the partitions it is
//! assigned (never a group member), with the dataflow's errors. Recovery, the start-up checks,
//! the trends refill, the idempotency keys' refill and the fence all read through it.

use crate::error::Error;
use emostream_protocol::config::KafkaConfig;
use emostream_protocol::kafka::ClientRole;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::Duration;

/// A reader of `topic` for `client` (named in errors). `group` only names where commits would
/// go (none are made); `fetch_wait_ms` bounds how long the broker holds an empty fetch.
pub fn assigned(
    kafka: &KafkaConfig,
    topic: &str,
    client: &'static str,
    group: &str,
    fetch_wait_ms: u64,
) -> Result<BaseConsumer, Error> {
    ClientConfig::from_iter(kafka.client_settings(ClientRole::AssignedReader {
        group,
        fetch_wait_ms,
        partition_eof: false,
    }))
    .create()
    .map_err(|source| Error::Client {
        topic: topic.to_string(),
        client,
        source,
    })
}

/// The ids of `topic`'s partitions, as the broker knows them (none for a missing topic).
pub fn partitions(
    consumer: &BaseConsumer,
    topic: &str,
    patience: Duration,
) -> Result<Vec<i32>, Error> {
    Ok(consumer
        .fetch_metadata(Some(topic), patience)
        .map_err(|source| Error::Metadata {
            topic: topic.to_string(),
            source,
        })?
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}
