//! The Kafka producer and what the gateway knows about the broker's health.
//!
//! A request must get 503 at once while the broker is unreachable, not after a delivery timeout,
//! so the producer's context watches librdkafka's "all brokers down" event and failed
//! deliveries, and a probe task (a metadata request every 250 ms) says when the broker is back.

use crate::StartError;
use emostream_protocol::config::GatewayConfig;
use emostream_protocol::kafka::ClientRole;
use emostream_protocol::Config;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A batch record is sent once its lines pass this size, whatever its event count: records
/// stay well under the broker's message size limit.
pub const FLUSH_BYTES: usize = 8 * 1024 * 1024;

/// The largest record the gateway builds, its key and librdkafka's framing included: the
/// producer's `message.max.bytes`, and the least the topic's `max.message.bytes` must allow.
pub const MAX_RECORD_BYTES: usize = 2 * FLUSH_BYTES;

/// What [`MAX_RECORD_BYTES`] leaves to a record's lines. librdkafka refuses a record for good
/// (MSG_SIZE_TOO_LARGE, a 500 for every request in it) when its payload, key and largest framing
/// together pass `message.max.bytes` (`rd_kafka_msg_new0` in rdkafka_msg.c: the framing is
/// `RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`, 36 bytes, and the key is the stream id, 64 bytes at
/// most); 1 KiB covers both with room to spare.
pub const RECORD_MARGIN_BYTES: usize = 1024;

/// The most a record's lines take: a request whose lines would take its open batch past it
/// sends that batch first and opens the next, and one request's lines never pass it (a 1 MiB
/// body encodes to about 10 MiB at most, since the stream and `request_id` are repeated on
/// every line).
pub const MAX_RECORD_LINES: usize = MAX_RECORD_BYTES - RECORD_MARGIN_BYTES;

/// How often a down broker is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often a reachable broker is probed, so that `/readyz` answers from a state at most this
/// old instead of costing the broker a metadata request per call.
const READY_EVERY: Duration = Duration::from_secs(1);

pub type Kafka = FutureProducer<HealthContext>;

/// Whether the broker is believed reachable (starts optimistic: the first failure flips it),
/// the probe's last readiness verdict, and whether the producer failed for good.
pub struct Health {
    down: AtomicBool,
    went_down: Notify,
    /// Another client error: the probe checks at once whether it was fatal.
    wake: Notify,
    /// None when ready, else why not; written by the probe, read by `/readyz`.
    not_ready: Mutex<Option<String>>,
    /// librdkafka's fatal error: the producer cannot send again (e.g. the idempotent producer
    /// fenced or out of sequence for good), so the gateway exits for its supervisor to restart it.
    fatal: OnceLock<String>,
    /// Why the batcher's packer task ended while requests could still come (a panic): no tap
    /// can be taken any more, so the gateway drains and exits for its supervisor to restart it.
    stopped: OnceLock<String>,
    failed: Notify,
}

/// `/readyz`'s reason once the packer task is gone.
pub const BATCHER_STOPPED: &str =
    "the gateway's batcher stopped; the gateway is exiting to be restarted";

impl Default for Health {
    fn default() -> Self {
        Health {
            down: AtomicBool::new(false),
            went_down: Notify::new(),
            wake: Notify::new(),
            not_ready: Mutex::new(Some("the broker has not been probed yet".into())),
            fatal: OnceLock::new(),
            stopped: OnceLock::new(),
            failed: Notify::new(),
        }
    }
}

impl Health {
    pub fn reachable(&self) -> bool {
        !self.down.load(Ordering::Relaxed) && self.fatal.get().is_none()
    }

    /// The last probe's verdict (None: ready), or the fatal error, or the batcher's end.
    pub fn not_ready(&self) -> Option<String> {
        if self.stopped.get().is_some() {
            return Some(BATCHER_STOPPED.into());
        }
        if let Some(reason) = self.fatal.get() {
            return Some(format!(
                "the Kafka producer failed for good ({reason}); the gateway is exiting to be restarted"
            ));
        }
        if self.down.load(Ordering::Relaxed) {
            return Some("broker unreachable".into());
        }
        self.not_ready.lock().expect("never poisoned").clone()
    }

    pub fn set_ready(&self, not_ready: Option<String>) {
        *self.not_ready.lock().expect("never poisoned") = not_ready;
    }

    /// Records librdkafka's fatal error (the first one: later ones follow from it).
    pub fn set_fatal(&self, reason: &str) {
        if self.fatal.set(reason.to_string()).is_ok() {
            tracing::error!(
                reason,
                "the Kafka producer failed for good: draining, then exiting"
            );
            self.down.store(true, Ordering::Relaxed);
            self.failed.notify_one();
        }
    }

    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// Records why the batcher's packer task ended early (the first reason only).
    pub fn set_stopped(&self, reason: &str) {
        if self.stopped.set(reason.to_string()).is_ok() {
            tracing::error!(reason, "the batcher stopped: draining, then exiting");
            self.failed.notify_one();
        }
    }

    pub fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    /// Resolves once the producer has failed for good or the batcher has stopped: either way
    /// no tap can be taken any more.
    pub async fn failed(&self) {
        while self.fatal.get().is_none() && self.stopped.get().is_none() {
            self.failed.notified().await;
        }
    }

    pub fn set_down(&self) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!("broker unreachable: refusing requests with 503 until it answers");
            self.went_down.notify_one();
        }
    }

    fn set_up(&self) {
        if self.fatal.get().is_none() && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("broker reachable again");
        }
    }
}

/// The producer's context: librdkafka reports global errors here, on its own thread.
pub struct HealthContext {
    health: Arc<Health>,
}

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.health.set_down(),
            // A fatal error arrives here with its underlying code (the event's fatal flag is
            // not passed on), so the probe asks the client whether it is fatal.
            _ => self.health.wake.notify_one(),
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

pub fn create(config: &Config, health: Arc<Health>) -> Result<Kafka, KafkaError> {
    let GatewayConfig {
        delivery_timeout_ms,
        // The rest shape requests and batches, not the producer.
        listen: _,
        flush_max_events: _,
        flush_ms: _,
        ack_mode: _,
        emoji_allow_list: _,
        max_in_flight_bytes: _,
        max_in_flight_bytes_per_ip: _,
        request_timeout_ms: _,
        min_body_bytes_per_s: _,
        body_grace_ms: _,
        write_timeout_ms: _,
        drain_timeout_ms: _,
        max_connections: _,
        max_connections_per_ip: _,
        header_read_timeout_ms: _,
        cors_origins: _,
        user_taps_per_s: _,
        user_burst_taps: _,
        ip_requests_per_s: _,
        ip_burst_requests: _,
        ip_taps_per_s: _,
        ip_burst_taps: _,
        trusted_proxies: _,
        allow_min_insync_replicas_below_2: _,
        max_live_streams: _,
        stream_idle_s: _,
        ip_new_streams_per_s: _,
        ip_burst_new_streams: _,
    } = &config.gateway;
    ClientConfig::from_iter(config.kafka.client_settings(ClientRole::BatchProducer {
        delivery_timeout_ms: *delivery_timeout_ms,
        max_message_bytes: MAX_RECORD_BYTES,
    }))
    .create_with_context(HealthContext { health })
}

/// What a failed record means for its requests and for everyone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The broker is away or slow (timed out, transport, leader moving): the requests get 503
    /// with `Retry-After`, and the gateway refuses new taps at once until the probe sees the
    /// broker again.
    Retriable,
    /// The broker refuses this record itself (too large, corrupt, not authorised): a retry
    /// fails the same way, so its requests get 500 with the reason, and every other request goes
    /// on as before: the broker is not marked down.
    Permanent(&'static str),
    /// The producer itself failed for good (librdkafka's fatal error): no record can be sent
    /// again, so the requests get 503 and the gateway drains and exits to be restarted.
    Fatal,
}

/// Tells a record's delivery error apart by its code.
pub fn classify(error: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::Fatal) => Failure::Fatal,
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            Failure::Permanent("the broker refused the record as too large")
        }
        Some(C::InvalidMessage | C::InvalidRecord | C::BadMessage) => {
            Failure::Permanent("the broker refused the record as invalid")
        }
        Some(C::TopicAuthorizationFailed) => {
            Failure::Permanent("the gateway may not write to the events topic")
        }
        _ => Failure::Retriable,
    }
}

/// Probes the broker and the events topic: every [`READY_EVERY`] (at once when a client error
/// is seen) while the broker is reachable, every [`PROBE_EVERY`] while it is down. Each verdict
/// is kept for `/readyz`. Stops once the producer has failed for good.
pub fn spawn_probe(
    producer: Kafka,
    topic: String,
    partitions: u32,
    health: Arc<Health>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some((code, reason)) = producer.client().fatal_error() {
                health.set_fatal(&format!("{code:?}: {reason}"));
                return;
            }
            match topic_ready(&producer, &topic, partitions).await {
                Ok(()) => {
                    health.set_up();
                    health.set_ready(None);
                }
                Err(e) => health.set_ready(Some(e.to_string())),
            }
            let wait = if health.reachable() {
                READY_EVERY
            } else {
                PROBE_EVERY
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = health.went_down.notified() => {}
                () = health.wake.notified() => {}
            }
        }
    })
}

/// Raises librdkafka's own fatal error on `producer`, as its idempotent producer does when
/// fenced: the test hook librdkafka provides, since a broker cannot be made to cause one.
pub fn raise_fatal(producer: &Kafka, reason: &str) {
    let reason = std::ffi::CString::new(reason).expect("no NUL in a test reason");
    // SAFETY: the client pointer is alive while `producer` is; the reason is copied.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
}

/// The broker answers and the topic exists with `partitions` partitions (taps are routed over
/// `events_partitions`, so any other count would leave partitions idle or taps unroutable).
/// The metadata call blocks, so it runs on the blocking pool.
pub async fn topic_ready(producer: &Kafka, topic: &str, partitions: u32) -> Result<(), StartError> {
    let (producer, topic) = (producer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(1))
            .map_err(StartError::BrokerUnreachable)?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                let found = t.partitions().len();
                if found == partitions as usize {
                    Ok(())
                } else {
                    Err(StartError::Partitions {
                        topic,
                        found,
                        expected: partitions,
                    })
                }
            }
            _ => Err(StartError::TopicMissing(topic)),
        }
    })
    .await?
}

/// What the events topic's `max.message.bytes` says about the gateway's largest record.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordLimit {
    /// At least [`MAX_RECORD_BYTES`].
    Enough,
    /// The broker did not say (no DescribeConfigs, or no such entry): why, for a warning.
    Unknown(String),
}

/// What the start-up check of the events topic found that is worth a warning but not a refusal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TopicCheck {
    pub record_limit: Option<RecordLimit>,
    /// Why the topic's durability is below what a 2xx promises, or could not be read.
    pub durability: Option<String>,
}

/// Asks the broker for the events topic's settings (DescribeConfigs) and the cluster's size:
/// a topic that would refuse the gateway's larger records, or one that could lose an
/// acknowledged tap with its leader, is an error at start instead of 500s under load or taps
/// lost after their 2xx.
pub async fn check_topic(config: &Config) -> Result<TopicCheck, StartError> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let topic = &config.kafka.events_topic;
    // The same connection settings as the epoch producer (TLS, SASL and the pass-through).
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::from_iter(config.kafka.client_settings(ClientRole::EpochProducer))
            .create()
            .map_err(StartError::Producer)?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let answer = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await;
    let settings = match answer.as_deref() {
        Ok([Ok(resource)]) => Ok(resource),
        Ok([Err(code)]) => Err(format!("{code:?}")),
        Ok(other) => Err(format!("{} answers", other.len())),
        Err(e) => Err(e.to_string()),
    };
    let setting = |name: &str| match &settings {
        Ok(resource) => resource
            .get(name)
            .and_then(|e| e.value.clone())
            .ok_or_else(|| format!("no {name} entry")),
        Err(why) => Err(why.clone()),
    };
    let record_limit = record_limit(topic, setting("max.message.bytes"))?;
    // The metadata call blocks, so it runs on the blocking pool; the count of brokers only
    // decides whether a warning is due, so a failure leaves it unknown.
    let brokers = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.brokers().len())
            .ok()
    })
    .await?;
    let durability = durability(
        topic,
        brokers,
        setting("min.insync.replicas"),
        config.gateway.allow_min_insync_replicas_below_2,
    )?;
    Ok(TopicCheck {
        record_limit: Some(record_limit).filter(|l| *l != RecordLimit::Enough),
        durability,
    })
}

fn record_limit(topic: &str, value: Result<String, String>) -> Result<RecordLimit, StartError> {
    let value = match value {
        Ok(value) => value,
        Err(why) => return Ok(RecordLimit::Unknown(why)),
    };
    match value.parse::<u64>() {
        Ok(found) if found >= MAX_RECORD_BYTES as u64 => Ok(RecordLimit::Enough),
        Ok(found) => Err(StartError::RecordLimit {
            topic: topic.to_string(),
            found,
            needed: MAX_RECORD_BYTES,
        }),
        Err(_) => Ok(RecordLimit::Unknown(format!(
            "max.message.bytes = {value:?}"
        ))),
    }
}

/// With acks=all, a write is acknowledged once the in-sync replicas have it, and with
/// `min.insync.replicas` 1 that can be the leader alone: a cluster of 3 or more brokers is a
/// production cluster, where losing that leader would lose taps already answered 2xx. There
/// it is refused unless `allow_min_insync_replicas_below_2` says the loss is accepted (then a
/// warning). A smaller cluster (the development broker) has nothing better to offer.
fn durability(
    topic: &str,
    brokers: Option<usize>,
    min_insync: Result<String, String>,
    allowed: bool,
) -> Result<Option<String>, StartError> {
    let Some(brokers) = brokers.filter(|&n| n >= 3) else {
        return Ok(None);
    };
    let found = match min_insync.map(|v| v.parse::<u64>()) {
        Ok(Ok(found)) if found >= 2 => return Ok(None),
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Ok(Some(format!("min.insync.replicas unreadable: {e}"))),
        Err(why) => return Ok(Some(format!("min.insync.replicas unknown: {why}"))),
    };
    if allowed {
        Ok(Some(format!(
            "topic {topic} has min.insync.replicas = {found} on a cluster of {brokers} brokers: \
             an acknowledged tap can be lost with its partition's leader \
             (allowed by gateway.allow_min_insync_replicas_below_2)"
        )))
    } else {
        Err(StartError::MinInsyncReplicas {
            topic: topic.to_string(),
            found,
            brokers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_production_cluster_must_keep_an_acknowledged_tap_on_two_replicas() {
        let check = |brokers: Option<usize>, min_insync: Result<&str, &str>, allowed: bool| {
            durability(
                "emoji-events",
                brokers,
                min_insync.map(str::to_string).map_err(str::to_string),
                allowed,
            )
            .map_err(|e| e.to_string())
        };
        let refused = "topic emoji-events has min.insync.replicas = 1 on a cluster of 3 brokers: \
             an acknowledged tap can be lost with its partition's leader; set it to 2 or more, \
             or allow it with gateway.allow_min_insync_replicas_below_2 = true";
        assert_eq!(check(Some(3), Ok("1"), false), Err(refused.to_string()));
        assert_eq!(
            check(Some(5), Ok("1"), true),
            Ok(Some(
                "topic emoji-events has min.insync.replicas = 1 on a cluster of 5 brokers: an \
                 acknowledged tap can be lost with its partition's leader (allowed by \
                 gateway.allow_min_insync_replicas_below_2)"
                    .to_string()
            ))
        );
        assert_eq!(check(Some(3), Ok("2"), false), Ok(None));
        // The development broker, or a cluster whose size is not known.
        assert_eq!(check(Some(1), Ok("1"), false), Ok(None));
        assert_eq!(check(None, Ok("1"), false), Ok(None));
        assert_eq!(
            check(Some(3), Err("no min.insync.replicas entry"), false),
            Ok(Some(
                "min.insync.replicas unknown: no min.insync.replicas entry".to_string()
            ))
        );
    }

    #[test]
    fn only_a_record_the_broker_refuses_for_good_is_permanent() {
        use RDKafkaErrorCode as C;
        let cases = [
            (
                C::MessageSizeTooLarge,
                Failure::Permanent("the broker refused the record as too large"),
            ),
            (
                C::MessageBatchTooLarge,
                Failure::Permanent("the broker refused the record as too large"),
            ),
            (
                C::InvalidRecord,
                Failure::Permanent("the broker refused the record as invalid"),
            ),
            (
                C::TopicAuthorizationFailed,
                Failure::Permanent("the gateway may not write to the events topic"),
            ),
            (C::Fatal, Failure::Fatal),
            (C::MessageTimedOut, Failure::Retriable),
            (C::AllBrokersDown, Failure::Retriable),
            (C::NotEnoughReplicas, Failure::Retriable),
            (C::NotLeaderForPartition, Failure::Retriable),
            (C::QueueFull, Failure::Retriable),
        ];
        for (code, failure) in cases {
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                failure,
                "{code:?}"
            );
        }
    }
}
