//! Every Kafka client the tiers build gets its librdkafka settings here: what its role needs
//! for Emostream's guarantees, then `[kafka.client]`, passed through as it is.
//!
//! The pass-through is how a deployment reaches any Kafka cluster by configuration alone
//! (`security.protocol = "sasl_ssl"`, `sasl.mechanism`, `ssl.ca.location`, `client.id`, …). It
//! goes to every client, producers and consumers alike (librdkafka ignores, with a warning, a
//! producer key on a consumer). It may tune what is only tuning (`linger.ms`,
//! `compression.type`, …), but never a key the guarantees rest on: those are refused when the
//! configuration is read, not silently overridden.

use crate::config::{ConfigError, KafkaConfig};
use std::collections::BTreeMap;

/// What a client is for; each role adds the settings its guarantees need.
#[derive(Debug, Clone, Copy)]
pub enum ClientRole<'a> {
    /// The gateway's producer of batch records: a 2xx waits for its acknowledgement.
    BatchProducer {
        /// librdkafka gives up on a record (and the gateway answers 503) after this long.
        delivery_timeout_ms: u64,
        /// The largest record the gateway can build.
        max_message_bytes: usize,
    },
    /// The dataflow's producers of closed epochs, progress records and trend frames: a few small
    /// records per epoch, each awaited before the next step.
    EpochProducer,
    /// A consumer of partitions it is assigned (never subscribed, so its group never
    /// rebalances); where it starts comes from the caller, not from committed offsets.
    AssignedReader {
        /// The group offsets are committed to (for lag monitoring only), or none.
        group: &'a str,
        /// How long the broker may hold an empty fetch: it bounds how stale "nothing new" is.
        fetch_wait_ms: u64,
        /// Report the end of each partition (the dataflow's idle rule and "read to the end").
        partition_eof: bool,
    },
}

/// Keys Emostream sets for correctness; `[kafka.client]` may not change them.
const GUARDED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set it with [kafka] brokers"),
    ("metadata.broker.list", "set it with [kafka] brokers"),
    (
        "message.timeout.ms",
        "set it with [gateway] delivery_timeout_ms, which the request deadline is checked against",
    ),
    (
        "delivery.timeout.ms",
        "set it with [gateway] delivery_timeout_ms, which the request deadline is checked against",
    ),
    (
        "enable.idempotence",
        "a retried send must never be written twice",
    ),
    (
        "acks",
        "an acknowledged record must be on every in-sync replica",
    ),
    (
        "enable.auto.commit",
        "positions are the dataflow's progress record, not committed offsets",
    ),
    ("group.id", "each reader's group is part of its role"),
    (
        "enable.partition.eof",
        "the dataflow's source and the test readers act on end-of-partition events",
    ),
    (
        "auto.offset.reset",
        "a position below the log start must restart at the oldest record",
    ),
];

/// Refuses a pass-through table that would change a guarded key.
pub fn check_pass_through(client: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (key, why) in GUARDED {
        if client.contains_key(*key) {
            return Err(ConfigError::Invalid(format!(
                "kafka.client.\"{key}\" cannot be set through the pass-through: {why}"
            )));
        }
    }
    Ok(())
}

impl KafkaConfig {
    /// The librdkafka properties of a client in `role`: feed them to
    /// `rdkafka::ClientConfig::from_iter`.
    pub fn client_settings(&self, role: ClientRole<'_>) -> Vec<(String, String)> {
        let mut settings: Vec<(&str, String)> = vec![("bootstrap.servers", self.brokers.clone())];
        match role {
            ClientRole::BatchProducer {
                delivery_timeout_ms,
                max_message_bytes,
            } => settings.extend([
                // acks=all + idempotence: an acknowledged record survives a broker failover
                // and a retried send is never written twice.
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                // Batch records of NDJSON compress several times over.
                ("compression.type", "lz4".into()),
                // The gateway batches itself; librdkafka only coalesces the records of several
                // partitions into one produce request. At 0 records shrank and a durable tap
                // cost the broker a third more CPU (docs/benchmarks.md, Ingest).
                ("linger.ms", "5".into()),
                ("message.timeout.ms", delivery_timeout_ms.to_string()),
                ("message.max.bytes", max_message_bytes.to_string()),
            ]),
            ClientRole::EpochProducer => settings.extend([
                // A retry never duplicates an epoch frame or a progress record, and every
                // in-sync replica has it before the next step waits on it.
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                // A few records per epoch: waiting to fill a batch only adds latency.
                ("linger.ms", "0".into()),
                // Each step waits on its record's acknowledgement: a record sent while the last
                // one's bytes are unacknowledged must not wait for the broker's delayed ACK.
                ("socket.nagle.disable", "true".into()),
            ]),
            ClientRole::AssignedReader {
                group,
                fetch_wait_ms,
                partition_eof,
            } => settings.extend([
                // librdkafka's consumer will not start without one; with `assign` it only
                // names where (optional) commits go.
                ("group.id", group.to_string()),
                ("enable.auto.commit", "false".into()),
                // A position below the log's start (retention) restarts at the oldest record
                // rather than skipping to the newest.
                ("auto.offset.reset", "earliest".into()),
                ("enable.partition.eof", partition_eof.to_string()),
                ("fetch.wait.max.ms", fetch_wait_ms.to_string()),
                // A request sent while a fetch is outstanding (the end probe's ListOffsets on
                // the source's connection) must not wait for the broker's delayed ACK.
                ("socket.nagle.disable", "true".into()),
            ]),
        }
        settings.extend([
            // Every role: reconnect quickly once a restarted broker answers. librdkafka's
            // default backs off to 10 s, which the gateway would spend answering 503 and the
            // dataflow holding epochs open.
            ("reconnect.backoff.ms", "50".into()),
            ("reconnect.backoff.max.ms", "1000".into()),
        ]);
        let mut out: Vec<(String, String)> = settings
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for (key, value) in &self.client {
            match out.iter_mut().find(|(k, _)| k == key) {
                Some(existing) => existing.1.clone_from(value),
                None => out.push((key.clone(), value.clone())),
            }
        }
        out
    }
}

/// The `emoji-events` partition of a request's taps: a function of its stream and the user of its
/// first tap alone, the same on every gateway of every build, so that a retried request lands
/// where its first attempt did whichever gateway takes it (the dataflow drops a repeated
/// `Idempotency-Key` per partition), and load spreads with the audience, not with the number of
/// streams.
///
/// 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3) of the stream's UTF-8
/// bytes, a 0xff byte (never in UTF-8, so no two (stream, user) pairs run together), the user's,
/// then murmur3's 64-bit finalizer (FNV's low bits depend only on the bytes' low bits), modulo
/// `partitions`. Written out rather than `std`'s `DefaultHasher`, which may change between Rust
/// releases: two gateways built by two toolchains must agree.
pub fn events_partition(stream: &str, user_id: &str, partitions: u32) -> i32 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = (stream.bytes())
        .chain(std::iter::once(0xff))
        .chain(user_id.bytes());
    let mut h = bytes.fold(OFFSET_BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(partitions.max(1))) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    const SAMPLE: &str = r#"
[kafka]
brokers = "k1:9093,k2:9093"
[kafka.client]
"security.protocol" = "sasl_ssl"
"sasl.mechanism" = "SCRAM-SHA-512"
"ssl.ca.location" = "/etc/emostream/ca.pem"
"linger.ms" = "20"
[gateway]
listen = "127.0.0.1:8080"
[dataflow]
processes = ["127.0.0.1:2101"]
[broadcaster]
main = "127.0.0.1:9000"
clusters = []
"#;

    fn settings(config: &Config, role: ClientRole<'_>) -> Vec<(String, String)> {
        config.kafka.client_settings(role)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_batch_producer_is_idempotent_and_takes_the_pass_through_last() {
        let config = Config::from_toml(SAMPLE).unwrap();
        let role = ClientRole::BatchProducer {
            delivery_timeout_ms: 5000,
            max_message_bytes: 8 << 20,
        };
        assert_eq!(
            settings(&config, role),
            pairs(&[
                ("bootstrap.servers", "k1:9093,k2:9093"),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", "20"),
                ("message.timeout.ms", "5000"),
                ("message.max.bytes", "8388608"),
                ("reconnect.backoff.ms", "50"),
                ("reconnect.backoff.max.ms", "1000"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("security.protocol", "sasl_ssl"),
                ("ssl.ca.location", "/etc/emostream/ca.pem"),
            ])
        );
    }

    #[test]
    fn a_reader_names_its_group_and_never_commits_by_itself() {
        let config = Config::from_toml(SAMPLE).unwrap();
        let role = ClientRole::AssignedReader {
            group: "emostream-dataflow",
            fetch_wait_ms: 20,
            partition_eof: true,
        };
        assert_eq!(
            settings(&config, role),
            pairs(&[
                ("bootstrap.servers", "k1:9093,k2:9093"),
                ("group.id", "emostream-dataflow"),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "true"),
                ("fetch.wait.max.ms", "20"),
                ("socket.nagle.disable", "true"),
                ("reconnect.backoff.ms", "50"),
                ("reconnect.backoff.max.ms", "1000"),
                ("linger.ms", "20"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("security.protocol", "sasl_ssl"),
                ("ssl.ca.location", "/etc/emostream/ca.pem"),
            ])
        );
    }

    #[test]
    fn the_pass_through_comes_from_the_environment_too() {
        let env = [(
            "EMOSTREAM_KAFKA__CLIENT",
            r#"{ "security.protocol" = "ssl", "ssl.ca.location" = "/tmp/ca.pem" }"#,
        )];
        let config = crate::config::load_with_env(SAMPLE, &env).unwrap();
        let all = settings(&config, ClientRole::EpochProducer);
        assert_eq!(
            all[7..],
            pairs(&[
                ("security.protocol", "ssl"),
                ("ssl.ca.location", "/tmp/ca.pem")
            ])[..]
        );
    }

    #[test]
    fn the_pass_through_cannot_weaken_a_guarantee() {
        let text = SAMPLE.replace(r#""linger.ms" = "20""#, r#"acks = "1""#);
        let err = Config::from_toml(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: kafka.client.\"acks\" cannot be set through the pass-through: \
             an acknowledged record must be on every in-sync replica"
        );
    }

    /// Pinned: a change here moves users between partitions, and a retry taken by a gateway of
    /// the new build would land apart from its first attempt taken by one of the old.
    #[test]
    fn events_partition_is_pinned() {
        let table = [
            ("main", "u1", 2, 10),
            ("main", "u2", 0, 4),
            ("alpha", "user-7", 2, 10),
            ("cricket", "42", 2, 2),
            ("", "", 3, 7),
        ];
        for (stream, user, of4, of12) in table {
            assert_eq!(events_partition(stream, user, 4), of4, "{stream} {user}");
            assert_eq!(events_partition(stream, user, 12), of12, "{stream} {user}");
        }
        let mut spread = [0; 4];
        for i in 0..1000 {
            spread[events_partition("main", &format!("user-{i}"), 4) as usize] += 1;
        }
        assert_eq!(spread, [228, 235, 270, 267]);
    }
}
