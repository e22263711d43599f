//! `cluster.toml`: one file names the brokers, the dataflow processes, the epoch rules and the
//! broadcaster topology. Any field can be overridden from the environment as
//! `EMOSTREAM_<SECTION>__<FIELD>=<value>`, e.g. `EMOSTREAM_KAFKA__BROKERS=10.0.0.5:9092` or
//! `EMOSTREAM_EPOCHS__WINDOW_MS=1000`, so one file serves every host. figment reads both; an
//! override replaces its field whole (a table too), and an unknown or mistyped one is refused
//! with the variable's name.

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub epochs: EpochConfig,
    pub gateway: GatewayConfig,
    pub dataflow: DataflowConfig,
    pub broadcaster: BroadcasterConfig,
    #[serde(default)]
    pub dev_broker: DevBrokerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
}

/// `[auth]`: who a client is. Off by default, so the seed clients, the load tools and a local
/// run work without tokens. On, the gateway's ingest routes and the main publisher's
/// `/register` take only requests with the platform's signed user token (a JWT in
/// `Authorization: Bearer`), whose `sub` is the user: a tap for another user is refused (403),
/// and the per-user limits key on the verified id.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The platform's shared secret, for HS256 tokens; or …
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// … a JWKS file (RFC 7517) of the platform's public keys, for RS256 and EdDSA tokens,
    /// chosen by the token's `kid`.
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// The `aud` a token must carry.
    #[serde(default = "AuthConfig::audience")]
    pub audience: String,
    /// The `iss` a token must carry, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "AuthConfig::leeway_s")]
    pub leeway_s: u64,
}

impl AuthConfig {
    fn audience() -> String {
        "emostream".into()
    }

    /// A minute: phones' clocks drift.
    const fn leeway_s() -> u64 {
        60
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` of the bootstrap brokers.
    pub brokers: String,
    /// Batch records of raw taps, written by the gateway.
    #[serde(default = "KafkaConfig::events_topic")]
    pub events_topic: String,
    /// Closed epochs, written by the dataflow, keyed by stream.
    #[serde(default = "KafkaConfig::epochs_topic")]
    pub epochs_topic: String,
    /// The dataflow's recovery state.
    #[serde(default = "KafkaConfig::progress_topic")]
    pub progress_topic: String,
    /// Partitions of `events_topic`; each is owned by exactly one timely worker.
    #[serde(default = "KafkaConfig::events_partitions")]
    pub events_partitions: u32,
    /// Partitions of `epochs_topic`.
    #[serde(default = "KafkaConfig::epochs_partitions")]
    pub epochs_partitions: u32,
    /// Trend frames, written by the dataflow's trends stage, keyed by stream. Without this
    /// topic on the brokers, trends are off and epochs flow as before.
    #[serde(default = "KafkaConfig::trends_topic")]
    pub trends_topic: String,
    /// Partitions of `trends_topic`, for the development broker's topic creation.
    #[serde(default = "KafkaConfig::trends_partitions")]
    pub trends_partitions: u32,
    /// librdkafka properties given to every client as they are (`security.protocol`, `sasl.*`,
    /// `ssl.*`, `client.id`, tuning), after Emostream's own; see `crate::kafka`.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

impl KafkaConfig {
    fn events_topic() -> String {
        "emoji-events".into()
    }
    fn epochs_topic() -> String {
        "emoji-epochs".into()
    }
    fn progress_topic() -> String {
        "emoji-progress".into()
    }
    fn trends_topic() -> String {
        "emoji-trends".into()
    }
    /// Like the epochs: a few records per epoch.
    const fn trends_partitions() -> u32 {
        2
    }
    /// Four partitions: one per worker of the default `run_workers.sh -n 4`.
    const fn events_partitions() -> u32 {
        4
    }
    /// Epochs are a few records per second; two partitions keep the main publisher's reads simple.
    const fn epochs_partitions() -> u32 {
        2
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochConfig {
    /// Width of one epoch.
    #[serde(default = "EpochConfig::window_ms")]
    pub window_ms: u64,
    /// How far behind a partition's newest record its watermark trails. Must cover the gateway's
    /// `flush_ms` plus the clock skew between gateways; default `flush_ms` + 250 ms.
    #[serde(default = "EpochConfig::allowed_lateness_ms")]
    pub allowed_lateness_ms: u64,
    /// Taps per swarm emoji in the reduction `max(1, n / divisor)`.
    #[serde(default = "EpochConfig::divisor")]
    pub divisor: u64,
    /// The most emojis an epoch frame lists (the most tapped; the rest are summed in its
    /// `other`), so a viewer's frame stays small whatever clients tap.
    #[serde(default = "EpochConfig::max_frame_emojis")]
    pub max_frame_emojis: usize,
}

impl EpochConfig {
    /// The product's 2-second epochs.
    const fn window_ms() -> u64 {
        2000
    }
    /// 250 ms of clock skew between gateways and of broker round trip. Not `flush_ms` as well:
    /// a gateway sends an epoch's batches at the epoch's end (gateway/src/batcher/packer.rs).
    const fn allowed_lateness_ms() -> u64 {
        250
    }
    /// One swarm emoji per 1000 taps.
    const fn divisor() -> u64 {
        1000
    }
    /// Twice the variety of a busy stream (about 30 distinct emojis an epoch, the synthetic
    /// production mix): such a stream's frames are never cut, and a frame is at most 7,200
    /// bytes (`EpochFrame::max_bytes(64)`) where every RGI emoji listed once would be 180 KB.
    const fn max_frame_emojis() -> usize {
        64
    }
}

impl Default for EpochConfig {
    fn default() -> Self {
        Self {
            window_ms: Self::window_ms(),
            allowed_lateness_ms: Self::allowed_lateness_ms(),
            divisor: Self::divisor(),
            max_frame_emojis: Self::max_frame_emojis(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `host:port` the HTTP server binds.
    pub listen: String,
    /// A batch record is flushed at most this long after its first event.
    #[serde(default = "GatewayConfig::flush_ms")]
    pub flush_ms: u64,
    /// … or as soon as it holds this many events.
    #[serde(default = "GatewayConfig::flush_max_events")]
    pub flush_max_events: usize,
    /// When a request is answered: after the broker's acknowledgement (`durable`, the default) or
    /// as soon as its events are queued (`fire_and_forget`, which loses what a crash or a broker
    /// failure catches unacknowledged).
    #[serde(default)]
    pub ack_mode: AckMode,
    /// The only emojis accepted, when not empty; empty (the default) accepts any single emoji.
    #[serde(default)]
    pub emoji_allow_list: Vec<String>,
    /// The gateway's memory for its clients: `max_connections` × 32 KiB (`CONNECTION_BYTES`) is
    /// set aside for the connections' buffers, and the rest holds bodies (their declared length,
    /// from before they are read) and encoded events until the broker's acknowledgement (queued,
    /// packed or sent). A request that does not fit in the rest is refused with 503 at once.
    #[serde(default = "GatewayConfig::max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// The most of `max_in_flight_bytes` one client (an IPv4 address or an IPv6 /64) holds at
    /// once, declared bodies and encoded taps alike; past it its requests get 429 at once, so
    /// one client cannot take the budget from the others.
    #[serde(default = "GatewayConfig::max_in_flight_bytes_per_ip")]
    pub max_in_flight_bytes_per_ip: usize,
    /// How long the producer may try to deliver a record before its requests get 503.
    #[serde(default = "GatewayConfig::delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// Deadline for reading a request's body; past it the answer is 408. It does not cover the
    /// wait for the broker, which `delivery_timeout_ms` bounds: a 408 for taps that may land
    /// would make a browser resend them.
    #[serde(default = "GatewayConfig::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A body must arrive at this rate at least, after `body_grace_ms`: by then, and at every
    /// moment after, `min_body_bytes_per_s` × (time − grace) bytes of it; a slower one is cut
    /// with 408 (before any of its taps reach the producer) and releases its reservation.
    #[serde(default = "GatewayConfig::min_body_bytes_per_s")]
    pub min_body_bytes_per_s: u64,
    /// See `min_body_bytes_per_s`.
    #[serde(default = "GatewayConfig::body_grace_ms")]
    pub body_grace_ms: u64,
    /// A connection whose answer has waited this long for the client to read it (the socket
    /// buffer full) is closed, so a client that stops reading frees its slot.
    #[serde(default = "GatewayConfig::write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// How long a stop (SIGTERM, or a fatal producer error) takes at most: connections get
    /// until `drain_timeout_ms - delivery_timeout_ms` to finish their requests and are then
    /// closed; the rest is for the broker to answer the last records. Acknowledged taps are in
    /// Kafka either way.
    #[serde(default = "GatewayConfig::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Open client connections; further ones wait in the listen backlog until one closes. Cut
    /// at start to the process's descriptor limit (raised to its hard limit) less a reserve.
    #[serde(default = "GatewayConfig::max_connections")]
    pub max_connections: usize,
    /// Open connections of one client IP; a further one is answered 429 and closed at accept.
    #[serde(default = "GatewayConfig::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// A connection that has not sent a request's whole header within this long is closed
    /// (slowloris clients hold no connection slot longer).
    #[serde(default = "GatewayConfig::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Origins (`http://host:port`) allowed to post taps from a browser, besides the viewer page
    /// of every subscriber named under `[broadcaster]`. Each as a browser sends it in `Origin`
    /// (lower case, no path or trailing slash); the gateway refuses to start on anything else,
    /// `"*"` included.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Token bucket per `user_id`: taps per second refilled …
    #[serde(default = "GatewayConfig::user_taps_per_s")]
    pub user_taps_per_s: u32,
    /// … and the most taps a user can send at once.
    #[serde(default = "GatewayConfig::user_burst_taps")]
    pub user_burst_taps: u32,
    /// Token bucket per client IP: requests per second refilled …
    #[serde(default = "GatewayConfig::ip_requests_per_s")]
    pub ip_requests_per_s: u32,
    /// … and the most requests one IP can send at once.
    #[serde(default = "GatewayConfig::ip_burst_requests")]
    pub ip_burst_requests: u32,
    /// Token bucket per client IP counting taps (a request may carry thousands): taps per
    /// second refilled …
    #[serde(default = "GatewayConfig::ip_taps_per_s")]
    pub ip_taps_per_s: u32,
    /// … and the most taps one IP can send at once (more in one request: 422).
    #[serde(default = "GatewayConfig::ip_burst_taps")]
    pub ip_burst_taps: u32,
    /// Load balancers (addresses, or networks as `10.0.0.0/8`) whose `Forwarded` or
    /// `X-Forwarded-For` header names the client; the per-client limits then count that address.
    /// A connection from any other address is its own client, whatever its headers say. Empty
    /// (the default): no header is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Start even when `emoji-events` has `min.insync.replicas` under 2 on a cluster of 3 or
    /// more brokers, where an acknowledged tap can be lost with its partition's leader (a
    /// warning then); false (the default): the gateway refuses to start.
    #[serde(default)]
    pub allow_min_insync_replicas_below_2: bool,
    /// Streams the gateway keeps open at once: a stream is open from its first accepted tap
    /// until `stream_idle_s` without one. A tap for another stream past this is refused (503),
    /// so the streams every tier below carries are a bounded set whatever names clients send.
    #[serde(default = "GatewayConfig::max_live_streams")]
    pub max_live_streams: usize,
    /// How long a stream stays open without a tap (as the broadcaster's `stream_idle_s`).
    #[serde(default = "GatewayConfig::stream_idle_s")]
    pub stream_idle_s: u64,
    /// Token bucket per client IP counting the streams it opens: new streams per second …
    #[serde(default = "GatewayConfig::ip_new_streams_per_s")]
    pub ip_new_streams_per_s: u32,
    /// … and the most it can open at once.
    #[serde(default = "GatewayConfig::ip_burst_new_streams")]
    pub ip_burst_new_streams: u32,
}

/// When the gateway answers a tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// 2xx only after the broker acknowledged the record (acks=all): an answered tap is counted.
    #[default]
    Durable,
    /// 2xx once queued, as the seeds and Hotstar do: lower latency, but taps still queued or
    /// unacknowledged when the gateway crashes or the broker fails are lost.
    FireAndForget,
}

/// The gateway's largest batch record (twice its 8 MiB flush threshold): a smaller in-flight
/// budget could never hold one.
pub const MIN_IN_FLIGHT_BYTES: usize = 16 << 20;

/// What one open client connection may hold of the gateway's memory, set aside in
/// `max_in_flight_bytes` for each of `max_connections`: hyper's read and write buffers (8 KiB
/// each at most, their smallest) and the connection's and its request's own state (the task, a
/// head of 32 fields at most, the handler), with room to spare: at its costliest (a whole 8 KiB
/// head, a declared body, part of it sent) a connection holds about 23 KiB besides its body,
/// which reserves its declared length itself (the gateway's
/// `a_connection_holds_at_most_its_32_kib_of_the_budget_whatever_its_client_sends`).
pub const CONNECTION_BYTES: usize = 32 << 10;

impl GatewayConfig {
    /// 100 ms keeps the answer to a tap well inside the 2 s epoch (the seeds use 500 ms).
    const fn flush_ms() -> u64 {
        100
    }
    /// 20,000 events: the design's cap, so one record stays a few MB before compression.
    const fn flush_max_events() -> usize {
        20_000
    }
    /// 128 MiB for bodies and taps (a second of the 1 M taps/s target at about 100 bytes an
    /// encoded event, plus headroom), and `CONNECTION_BYTES` for each of `max_connections`.
    const fn max_in_flight_bytes() -> usize {
        (128 << 20) + Self::max_connections() * CONNECTION_BYTES
    }
    /// An eighth of the default budget, and room for the largest request (a 1 MiB body of
    /// minimal taps encodes to about 10 MiB).
    const fn max_in_flight_bytes_per_ip() -> usize {
        16 << 20
    }
    /// 5 s: long enough to ride out a leader election, short enough for a client to retry.
    const fn delivery_timeout_ms() -> u64 {
        5_000
    }
    /// 1 KiB/s: a phone on 2G sends several times that; a client declaring a megabyte and
    /// sending nothing is cut after the grace.
    const fn min_body_bytes_per_s() -> u64 {
        1024
    }
    /// 2 s: a phone on a poor network starts sending its body well within it.
    const fn body_grace_ms() -> u64 {
        2_000
    }
    /// 10 s: an answer is a few hundred bytes, so only a client that stopped reading fills its
    /// socket buffer.
    const fn write_timeout_ms() -> u64 {
        10_000
    }
    /// 15 s: the delivery timeout (5 s) and 10 s for requests in progress, well inside a
    /// supervisor's usual 30 s before SIGKILL.
    const fn drain_timeout_ms() -> u64 {
        15_000
    }
    /// 10 s: a phone on a poor network sends a 4 KiB body well within it; a client that sends
    /// headers and then stalls holds its connection no longer.
    const fn request_timeout_ms() -> u64 {
        10_000
    }
    /// Half the 20,000 open files a process may hold here, leaving room for the producer.
    const fn max_connections() -> usize {
        10_000
    }
    /// A tenth of the connection cap: many viewers share an IP behind carrier-grade NAT, yet
    /// one address cannot take every slot.
    const fn max_connections_per_ip() -> usize {
        1_000
    }
    /// 5 s: a phone on a poor network sends a request's header (under 1 KiB) well within it.
    const fn header_read_timeout_ms() -> u64 {
        5_000
    }
    /// Five times a frantic human's ~10 taps/s: only scripts hit it.
    const fn user_taps_per_s() -> u32 {
        50
    }
    /// A phone that bundles two seconds of taps into one batch.
    const fn user_burst_taps() -> u32 {
        100
    }
    /// Many viewers share an IP behind carrier-grade NAT, so this is per crowd, not per person.
    const fn ip_requests_per_s() -> u32 {
        5_000
    }
    /// Two seconds of the per-IP rate.
    const fn ip_burst_requests() -> u32 {
        10_000
    }
    /// Ten per request at the per-IP request rate: a crowd behind one NAT bundling a few taps
    /// each, where one client's largest requests (about 34,000 taps each) pass about once a
    /// second.
    const fn ip_taps_per_s() -> u32 {
        50_000
    }
    /// Two seconds of the per-IP tap rate: the largest request fits.
    const fn ip_burst_taps() -> u32 {
        100_000
    }
    /// What the default broadcaster topology carries at once: nine subscribers of
    /// `max_streams` (2,048) each.
    const fn max_live_streams() -> usize {
        18_432
    }
    /// As the broadcaster's.
    const fn stream_idle_s() -> u64 {
        240
    }
    /// A client opens its streams now and then (a show, a match); a thousand at once covers a
    /// load tool or a test opening every stream it taps, ten a second after that.
    const fn ip_new_streams_per_s() -> u32 {
        10
    }
    const fn ip_burst_new_streams() -> u32 {
        1_000
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataflowConfig {
    /// One `host:port` per timely process; line i of timely's hostfile is process i.
    pub processes: Vec<String>,
    /// Worker threads per process.
    #[serde(default = "DataflowConfig::threads")]
    pub threads: usize,
    /// How often a source without partitions wakes to advance its floor with the wall clock (and
    /// one held back for the gate looks again); a source with partitions is woken by its
    /// consumer and its end probe instead.
    #[serde(default = "DataflowConfig::idle_poll_ms")]
    pub idle_poll_ms: u64,
    /// `host:port` where process i serves `/metrics` (entry i); empty: no metrics listener.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// How long a request's `Idempotency-Key` is remembered after its last copy: a copy read
    /// within this much of the previous one (on the partition's log clock, the newest record
    /// timestamp read) is not counted again. At a restart each worker reads this much of its
    /// partitions' log before its resume offsets to remember them again. 0: no repeat dropped.
    #[serde(default = "DataflowConfig::idempotency_horizon_ms")]
    pub idempotency_horizon_ms: u64,
    /// The most keys one partition remembers; past it the least recently seen key is forgotten
    /// early (about 60 bytes a key, so 15 MiB a partition at the default).
    #[serde(default = "DataflowConfig::idempotency_keys_per_partition")]
    pub idempotency_keys_per_partition: usize,
}

impl DataflowConfig {
    /// One thread per process: the default topology runs several processes on few cores.
    const fn threads() -> usize {
        1
    }
    /// 10 ms: small against a 2 s epoch, cheap for an idle worker.
    const fn idle_poll_ms() -> u64 {
        10
    }
    /// 5 minutes: a phone retries a request within seconds to a minute of its first attempt.
    const fn idempotency_horizon_ms() -> u64 {
        300_000
    }
    /// 262,144: a sustained 870 keyed requests a second per partition for the whole horizon.
    const fn idempotency_keys_per_partition() -> usize {
        262_144
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcasterConfig {
    /// `host:port` of the main publisher (reads `emoji-epochs`, serves `/register`).
    pub main: String,
    /// Recent epochs kept per stream at every tier, for `since` resumes.
    #[serde(default = "BroadcasterConfig::ring_epochs")]
    pub ring_epochs: usize,
    /// The tiers known in advance; more can join at run time (`--listen`/`--upstream`).
    pub clusters: Vec<ClusterConfig>,
    /// HMAC-SHA256 key for viewer tokens. When set, `/register` and `/v1/viewers` hand out a
    /// signed token and subscribers refuse a viewer without a valid, unexpired one (401); when
    /// absent, viewers connect without a token.
    #[serde(default)]
    pub viewer_token_secret: Option<String>,
    /// How long a viewer token stays valid after it is issued.
    #[serde(default = "BroadcasterConfig::viewer_token_ttl_s")]
    pub viewer_token_ttl_s: u64,
    /// Shared secret a lower tier presents on its link to the tier above (`Authorization:
    /// Bearer`); the upper tier refuses any other with 401. Absent: links are not authenticated,
    /// which a tier allows only while it listens on a loopback address (it refuses to start on
    /// any other without one).
    #[serde(default)]
    pub link_secret: Option<String>,
    /// Bytes a viewer may fall behind (frames waiting behind a write it has not taken, plus
    /// frames conflated away) before it is closed as too slow; it can resume with `since`.
    #[serde(default = "BroadcasterConfig::viewer_lag_budget_bytes")]
    pub viewer_lag_budget_bytes: usize,
    /// How stale a viewer's view may get, in milliseconds: live frames are held back while the
    /// oldest one its peer has not yet acknowledged arrived more than a third of this ago, and
    /// while held, a newer epoch replaces the waiting frames of older ones (the viewer is told
    /// `lagged`, and can fetch them with `since`); a viewer that keeps skipping for twice this
    /// long without reading an epoch within it is closed with 1013. Two 2 s epochs by default.
    #[serde(default = "BroadcasterConfig::viewer_max_staleness_ms")]
    pub viewer_max_staleness_ms: u64,
    /// How long a subscriber's lane waits, after an epoch frame, for the same epoch's trend
    /// frames (trending, sentiment, popular), so that each viewer gets them all in one write;
    /// 0: never wait.
    #[serde(default = "BroadcasterConfig::bundle_wait_ms")]
    pub bundle_wait_ms: u64,
    /// Threads a subscriber runs on, each writing frames to its share of the viewers (one fan-out
    /// lane per thread); 0 (the default): one per core. A host running several subscribers
    /// gives each fewer, since their fan-outs run at once and would only take turns on the cores.
    #[serde(default)]
    pub subscriber_threads: usize,
    /// Viewers one subscriber holds at most; more are answered 503 before the upgrade, and the
    /// subscriber reports its room left in its heartbeat so that `/register` sends viewers
    /// elsewhere. Absent: the process's descriptor limit (raised to its hard limit at start) less
    /// [`BroadcasterConfig::RESERVED_DESCRIPTORS`] (less a quarter of a limit under 4096); a
    /// larger value is cut to that.
    #[serde(default)]
    pub max_viewers: Option<usize>,
    /// Distinct streams one subscriber's viewers may watch at once; a viewer of one more stream
    /// is answered 503. Stream names are the clients' choice, and each costs the tiers above a
    /// subscription.
    #[serde(default = "BroadcasterConfig::max_streams")]
    pub max_streams: usize,
    /// A connection to any tier that has not sent a request's whole header within this long is
    /// closed, so slowloris clients cannot hold descriptors meant for viewers.
    #[serde(default = "BroadcasterConfig::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Every tier forgets a stream that none of its own viewers watch once it has had no frame
    /// for this many seconds: its ring, its trend frames, its place in a lower tier's resync.
    /// Stream names are the clients' choice, so without it every name ever tapped is kept. A
    /// stream that gets frames again starts a new ring; a resume from before that is told the
    /// gap.
    #[serde(default = "BroadcasterConfig::stream_idle_s")]
    pub stream_idle_s: u64,
    /// The most bytes of frames one tier holds (rings and trend frames of every stream, counted
    /// with their bookkeeping); past it, the unwatched streams quiet the longest are forgotten
    /// first, whatever their idle time.
    #[serde(default = "BroadcasterConfig::max_held_bytes")]
    pub max_held_bytes: usize,
    /// Token bucket per client (an IPv4 address, an IPv6 /64, or the address a trusted proxy
    /// names) at the main publisher's `/register` and `/v1/viewers`, one token per request:
    /// registrations per second refilled …
    #[serde(default = "BroadcasterConfig::ip_registrations_per_s")]
    pub ip_registrations_per_s: u32,
    /// … and the most one client makes at once; past them it gets 429 with `Retry-After`. Each
    /// registration counts against its subscriber's room until the subscriber's next report, so
    /// without this one client's flood would make placement answer 503 to every viewer.
    #[serde(default = "BroadcasterConfig::ip_burst_registrations")]
    pub ip_burst_registrations: u32,
    /// Load balancers in front of the main publisher (addresses, or networks as `10.0.0.0/8`)
    /// whose `Forwarded` or `X-Forwarded-For` header names the client; the registration limit
    /// then counts that address. A connection from any other address is its own client,
    /// whatever its headers say. Empty (the default): no header is believed. As the gateway's
    /// `trusted_proxies`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl BroadcasterConfig {
    /// Descriptors a subscriber keeps for everything but viewers: its link, the listener,
    /// connections not yet upgraded (at most half of these; past that a new one is closed at
    /// once), logs.
    pub const RESERVED_DESCRIPTORS: usize = 1024;

    /// Nine subscribers (the default topology) carry 18,000 streams at once, which placement
    /// spreads evenly; a watched stream with a full ring costs a subscriber about 200 KiB (its
    /// frames, and their WebSocket encodings), so 400 MiB at most.
    const fn max_streams() -> usize {
        2048
    }

    /// 5 s, as the gateway's: a phone on a poor network sends a request's header well within it.
    const fn header_read_timeout_ms() -> u64 {
        5_000
    }

    /// Two 2 s epochs.
    const fn viewer_max_staleness_ms() -> u64 {
        4_000
    }

    /// Trend frames come from their own topic after their epochs are published: 10–15 ms
    /// behind the epoch frame on the local system, where 30 ms made every viewer's epoch one
    /// write (4.0 frames a write, against 2.0–2.2 with 5 ms). The wait ends as soon as they are
    /// all in, so it delays an epoch frame by their lag only; its whole length only when a tier
    /// gets no trend frames at all.
    const fn bundle_wait_ms() -> u64 {
        30
    }

    /// Twice the ring's two minutes: a viewer that left a stream and comes back within the
    /// ring's span still resumes from every tier.
    const fn stream_idle_s() -> u64 {
        240
    }

    /// 1 GiB: about 10,000 streams with a full ring of 1.5 KiB epochs, and their trend frames.
    const fn max_held_bytes() -> usize {
        1 << 30
    }

    /// A page registers once per (re)connection and backs off with full jitter; the largest
    /// wave is a subscriber sending all its viewers away at once (1001 stopping, 1012 upstream
    /// lost), whose pages come back within 5 s (first backoff 2–5 s, a uniform delay up to it),
    /// under a third of them in the first second and about three fifths within two. 2,000 at once
    /// and 1,000 a second then let up to 5,000 pages behind one address (a carrier-grade NAT's
    /// crowd, all on the subscriber that went away) through such a wave without a 429, while
    /// one address's flood places at most 5,000 viewers in any 3 s a placement counts (2,000 +
    /// 3 × 1,000): not enough to fill the default topology's nine subscribers alone.
    const fn ip_registrations_per_s() -> u32 {
        1_000
    }
    /// See `ip_registrations_per_s`.
    const fn ip_burst_registrations() -> u32 {
        2_000
    }

    /// Two minutes of 2 s epochs.
    const fn ring_epochs() -> usize {
        60
    }

    /// An hour: a viewer registers again (and gets a fresh token) far more often than that.
    const fn viewer_token_ttl_s() -> u64 {
        3600
    }

    /// 64 KiB: a couple of hundred ~300-byte epochs, several minutes of a 2 s stream, yet small
    /// next to what a stuck socket would otherwise pin per connection (Centrifugo allows 1 MiB).
    const fn viewer_lag_budget_bytes() -> usize {
        64 * 1024
    }

    /// The cluster a subscriber belongs to, by the subscriber's listen address.
    pub fn cluster_of(&self, subscriber: &str) -> Option<&ClusterConfig> {
        self.clusters
            .iter()
            .find(|c| c.subscribers.iter().any(|s| s == subscriber))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name, reported to viewers in their assignment.
    pub name: String,
    /// `host:port` of the cluster publisher.
    pub listen: String,
    /// `host:port` of each subscriber in this cluster.
    pub subscribers: Vec<String>,
    /// Where viewers reach each subscriber (`ws://host:port` or `wss://…`), in the order of
    /// `subscribers`, for subscribers on other hosts, behind a proxy, or listening on an
    /// unspecified address (`0.0.0.0`). Empty (the default): `ws://` + its listen address.
    /// `/register` hands this out; `--advertise` overrides it.
    #[serde(default)]
    pub advertise: Vec<String>,
}

impl ClusterConfig {
    /// Where viewers reach the `i`-th subscriber: its configured `advertise` URL, or
    /// `ws://{listen}`.
    pub fn advertised(&self, i: usize) -> Option<String> {
        let listen = self.subscribers.get(i)?;
        Some(
            self.advertise
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("ws://{listen}")),
        )
    }

    /// The origin of each subscriber's viewer page (`http://host:port`, `https://` for a `wss://`
    /// URL), in order: where viewers load the page that posts taps to the gateway.
    pub fn page_origins(&self) -> Vec<String> {
        (0..self.subscribers.len())
            .filter_map(|i| self.advertised(i))
            .map(|url| {
                let (scheme, rest) = match url.strip_prefix("wss://") {
                    Some(rest) => ("https", rest),
                    None => ("http", url.strip_prefix("ws://").unwrap_or(&url)),
                };
                let authority = rest.split('/').next().unwrap_or(rest);
                format!("{scheme}://{authority}")
            })
            .collect()
    }
}

/// The development broker `scripts/broker.sh` runs for the local system, the tests and the
/// benchmarks. Production points `[kafka] brokers` at its own Kafka cluster and ignores this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevBrokerConfig {
    /// `host:port` the broker binds; `0.0.0.0:9092` lets workers on other hosts reach it.
    /// Clients are told (advertised) the first address of `[kafka] brokers`. Default: that
    /// address.
    #[serde(default)]
    pub listen: Option<String>,
    /// Where it keeps the log: `postgres` (a PostgreSQL server the script starts with its data
    /// in the broker's data folder; the default), `sqlite` or `memory` (see [`DevStorage`]).
    #[serde(default)]
    pub storage: DevStorage,
}

/// The development broker's storage engine (Nisshi 0.8.1's; docs/operations.md has the measurements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevStorage {
    /// The default: every acknowledged record is still there, and readable from offset 0, after
    /// a stop or a SIGKILL of the broker (e2e/tests/broker_contract.rs).
    #[default]
    Postgres,
    /// After a restart the log's start offset is reported at its end and older records cannot
    /// be read: a recovering dataflow would skip them. Kept for measuring.
    Sqlite,
    /// The fastest; nothing survives a restart.
    Memory,
}

impl DevStorage {
    /// The engine's name, as `--storage` and `[dev_broker] storage` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            DevStorage::Postgres => "postgres",
            DevStorage::Sqlite => "sqlite",
            DevStorage::Memory => "memory",
        }
    }
}

/// One topic as a development broker creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    /// `key=value` topic settings it is created with.
    pub settings: &'static [&'static str],
}

impl Config {
    /// Every topic the system uses, with the partitions and settings a development broker creates
    /// it with. The progress topic has exactly one partition, and keeps every record: its newest
    /// is the recovery state (the dataflow refuses a progress topic that can delete records).
    pub fn topic_specs(&self) -> Vec<TopicSpec> {
        let k = &self.kafka;
        const KEEP: &[&str] = &["retention.ms=-1", "retention.bytes=-1"];
        [
            (&k.events_topic, k.events_partitions, &[][..]),
            (&k.epochs_topic, k.epochs_partitions, &[][..]),
            (&k.progress_topic, 1, KEEP),
            (&k.trends_topic, k.trends_partitions, &[][..]),
        ]
        .into_iter()
        .map(|(name, partitions, settings)| TopicSpec {
            name: name.clone(),
            partitions,
            settings,
        })
        .collect()
    }

    /// Where the development broker binds and the address it tells clients (the first of
    /// `[kafka] brokers`).
    pub fn dev_broker_addresses(&self) -> (String, String) {
        let advertised = self
            .kafka
            .brokers
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let listen = self
            .dev_broker
            .listen
            .clone()
            .unwrap_or_else(|| advertised.clone());
        (listen, advertised)
    }
}

/// What can go wrong reading the configuration.
#[derive(Debug)]
pub enum ConfigError {
    Read(std::path::PathBuf, std::io::Error),
    Parse(String),
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ConfigError::Parse(e) => write!(f, "invalid configuration: {e}"),
            ConfigError::Invalid(e) => write!(f, "invalid configuration: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// `EMOSTREAM_<SECTION>__<FIELD>` names one field of one section. Other `EMOSTREAM_*` variables
/// (no `__`, such as `EMOSTREAM_BIN_DIR`) belong to the scripts and are not configuration.
const ENV_PREFIX: &str = "EMOSTREAM_";

/// `--config FILE`, the same flag for every binary that reads the configuration.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ConfigArg {
    /// The cluster configuration; `EMOSTREAM_<SECTION>__<FIELD>=<value>` variables override its
    /// fields.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        default_value = "cluster.toml",
        global = true
    )]
    pub path: PathBuf,
}

impl ConfigArg {
    /// The file with the environment's overrides, as [`Config::load`] reads it.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.path)
    }
}

impl Config {
    /// Reads `path`, then applies `EMOSTREAM_*` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        std::fs::File::open(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let file = FileUnderOverrides(Toml::file_exact(path));
        Self::extract(Figment::from(file).merge(Overrides))
    }

    /// Parses `text` alone, without the environment.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::extract(Figment::from(Toml::string(text)))
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.epochs.window_ms == 0 {
            return bad("epochs.window_ms must be at least 1");
        }
        if self.epochs.divisor == 0 {
            return bad("epochs.divisor must be at least 1");
        }
        if self.epochs.max_frame_emojis == 0 {
            return bad("epochs.max_frame_emojis must be at least 1");
        }
        if self.kafka.events_partitions == 0 {
            return bad("kafka.events_partitions must be at least 1");
        }
        crate::kafka::check_pass_through(&self.kafka.client)?;
        if self.dataflow.processes.is_empty() || self.dataflow.threads == 0 {
            return bad("dataflow.processes and dataflow.threads must not be empty");
        }
        if self.gateway.flush_ms >= self.epochs.window_ms {
            return bad("gateway.flush_ms must be shorter than epochs.window_ms");
        }
        if self.gateway.flush_max_events == 0 {
            return bad("gateway.flush_max_events must be at least 1");
        }
        for c in &self.broadcaster.clusters {
            if !c.advertise.is_empty() && c.advertise.len() != c.subscribers.len() {
                return Err(ConfigError::Invalid(format!(
                    "broadcaster.clusters {:?}: advertise has {} URLs for {} subscribers (one each, in order, or none)",
                    c.name,
                    c.advertise.len(),
                    c.subscribers.len()
                )));
            }
            if let Some(url) = c
                .advertise
                .iter()
                .find(|u| !(u.starts_with("ws://") || u.starts_with("wss://")))
            {
                return Err(ConfigError::Invalid(format!(
                    "broadcaster.clusters {:?}: advertise URL {url:?} must start with ws:// or wss://",
                    c.name
                )));
            }
        }
        let b = &self.broadcaster;
        if b.ip_registrations_per_s == 0 || b.ip_burst_registrations == 0 {
            return bad("broadcaster.ip_registrations_per_s and broadcaster.ip_burst_registrations must be at least 1");
        }
        let g = &self.gateway;
        let taps_budget = g
            .max_in_flight_bytes
            .saturating_sub(g.max_connections.saturating_mul(CONNECTION_BYTES));
        if taps_budget < MIN_IN_FLIGHT_BYTES {
            return bad("gateway.max_in_flight_bytes must be at least 16 MiB (16777216, the largest batch record) plus 32 KiB (32768) for each of gateway.max_connections");
        }
        if g.request_timeout_ms == 0 {
            return bad("gateway.request_timeout_ms must be at least 1");
        }
        if g.max_in_flight_bytes_per_ip < MIN_IN_FLIGHT_BYTES
            || g.max_in_flight_bytes_per_ip > taps_budget
        {
            return bad("gateway.max_in_flight_bytes_per_ip must be between 16 MiB (16777216, the largest request's encoding fits) and max_in_flight_bytes less 32 KiB (32768) for each of gateway.max_connections");
        }
        if g.min_body_bytes_per_s == 0 || g.write_timeout_ms == 0 {
            return bad(
                "gateway.min_body_bytes_per_s and gateway.write_timeout_ms must be at least 1",
            );
        }
        if g.drain_timeout_ms <= g.delivery_timeout_ms {
            return bad("gateway.drain_timeout_ms must be longer than gateway.delivery_timeout_ms: the last records need that long");
        }
        if g.max_connections == 0 {
            return bad("gateway.max_connections must be at least 1");
        }
        let a = &self.auth;
        if a.enabled && a.hs256_secret.is_some() == a.jwks_file.is_some() {
            return bad("auth.enabled needs exactly one of auth.hs256_secret and auth.jwks_file");
        }
        if a.hs256_secret.as_deref() == Some("") {
            return bad("auth.hs256_secret is empty");
        }
        if g.max_live_streams == 0 || g.stream_idle_s == 0 {
            return bad("gateway.max_live_streams and gateway.stream_idle_s must be at least 1");
        }
        if [
            g.user_taps_per_s,
            g.user_burst_taps,
            g.ip_requests_per_s,
            g.ip_burst_requests,
            g.ip_taps_per_s,
            g.ip_burst_taps,
            g.ip_new_streams_per_s,
            g.ip_burst_new_streams,
        ]
        .contains(&0)
        {
            return bad("gateway rate limits (user_*, ip_*) must be at least 1");
        }
        Ok(())
    }
}

/// The `EMOSTREAM_<SECTION>__<FIELD>=<value>` variables, as `section.field`. A value is read as
/// a number, a boolean, an `[array]` or an `{ inline = "table" }` where it parses as one, and as
/// text otherwise. Errors name the variable a bad value came from.
struct Overrides;

impl Overrides {
    fn env() -> Env {
        Env::raw().filter_map(|key| {
            let (section, field) = key.as_str().strip_prefix(ENV_PREFIX)?.split_once("__")?;
            Some(format!("{section}.{field}").into())
        })
    }
}

impl Provider for Overrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("the environment").interpolater(|_, path| {
            let var = match path {
                [section] => format!("{ENV_PREFIX}{section}__…"),
                [section, field, ..] => format!("{ENV_PREFIX}{section}__{field}"),
                [] => ENV_PREFIX.to_string(),
            };
            let rest = path.iter().skip(2).map(|key| format!(".{key}"));
            var.to_ascii_uppercase() + &rest.collect::<String>()
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Self::env().data()
    }
}

/// The file less every field an override sets, so that an override replaces the field whole:
/// merged, a table such as `kafka.client` would take the override's keys on top of the file's.
struct FileUnderOverrides(figment::providers::Data<Toml>);

impl Provider for FileUnderOverrides {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.0.data()?;
        for (key, _) in Overrides::env().iter() {
            let (section, field) = key
                .as_str()
                .split_once('.')
                .expect("Overrides names section.field");
            for sections in data.values_mut() {
                if let Some(Value::Dict(_, fields)) = sections.get_mut(section) {
                    fields.remove(field);
                }
            }
        }
        Ok(data)
    }
}

/// [`Config::load`] of `text` with exactly the variables `vars` in the environment.
#[cfg(test)]
#[allow(clippy::result_large_err)] // the closure's error type is figment's, fixed by Jail
pub(crate) fn load_with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (name, value) in vars {
            jail.set_env(name, value);
        }
        jail.create_file("cluster.toml", text)?;
        loaded = Some(Config::load(Path::new("cluster.toml")));
        Ok(())
    });
    loaded.expect("the jail ran the closure")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
[gateway]
listen = "127.0.0.1:8080"
[dataflow]
processes = ["127.0.0.1:2101", "127.0.0.1:2102"]
[broadcaster]
main = "127.0.0.1:9000"
[[broadcaster.clusters]]
name = "c0"
listen = "127.0.0.1:9010"
subscribers = ["127.0.0.1:9011"]
"#;

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = Config::from_toml(SAMPLE).unwrap();
        assert_eq!(
            c.epochs,
            EpochConfig {
                window_ms: 2000,
                allowed_lateness_ms: 250,
                divisor: 1000,
                max_frame_emojis: 64,
            }
        );
        assert_eq!(c.kafka.events_topic, "emoji-events");
        assert_eq!(c.kafka.events_partitions, 4);
        assert_eq!(c.gateway.flush_ms, 100);
        assert_eq!(c.dataflow.threads, 1);
        assert_eq!(c.broadcaster.ring_epochs, 60);
        assert_eq!(c.broadcaster.ip_registrations_per_s, 1_000);
        assert_eq!(c.broadcaster.ip_burst_registrations, 2_000);
        assert!(c.broadcaster.trusted_proxies.is_empty());
        assert_eq!(
            c.broadcaster.cluster_of("127.0.0.1:9011").unwrap().name,
            "c0"
        );
    }

    #[test]
    fn environment_overrides_keep_types() {
        let env = [
            ("EMOSTREAM_KAFKA__BROKERS", "10.0.0.5:9092"),
            ("EMOSTREAM_EPOCHS__WINDOW_MS", "1000"),
            ("EMOSTREAM_DATAFLOW__PROCESSES", r#"["h1:2101"]"#),
            ("UNRELATED", "x"),
        ];
        let c = load_with_env(SAMPLE, &env).unwrap();
        assert_eq!(c.kafka.brokers, "10.0.0.5:9092");
        assert_eq!(c.epochs.window_ms, 1000);
        assert_eq!(c.dataflow.processes, vec!["h1:2101".to_string()]);
    }

    #[test]
    fn a_comma_separated_list_stays_text() {
        let env = [("EMOSTREAM_KAFKA__BROKERS", "kafka1:9092,kafka2:9092")];
        let c = load_with_env(SAMPLE, &env).unwrap();
        assert_eq!(c.kafka.brokers, "kafka1:9092,kafka2:9092");
    }

    #[test]
    fn the_scripts_own_variables_are_not_configuration() {
        let env = [
            ("EMOSTREAM_BIN_DIR", "/opt/emostream"),
            ("EMOSTREAM_KEEP_LOGS", "1"),
            ("emostream_epochs__window_ms", "1000"),
        ];
        let c = load_with_env(SAMPLE, &env).unwrap();
        assert_eq!(c, Config::from_toml(SAMPLE).unwrap());
    }

    #[test]
    fn an_unknown_variable_is_refused_by_name() {
        let err = load_with_env(SAMPLE, &[("EMOSTREAM_EPOCHS__WINDOW", "5")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            // figment's own wording, quirky backquotes included.
            "invalid configuration: unknown field: found `window`, expected `one of \
             `window_ms`, `allowed_lateness_ms`, `divisor`, `max_frame_emojis`` for key \
             \"EMOSTREAM_EPOCHS__WINDOW\" in the environment"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_by_name() {
        let err = load_with_env(SAMPLE, &[("EMOSTREAM_EPOCHS__WINDOW_MS", "2s")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: invalid type: found string \"2s\", expected u64 for key \
             \"EMOSTREAM_EPOCHS__WINDOW_MS\" in the environment"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/cluster.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/cluster.toml: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Config::from_toml(&format!("{SAMPLE}\n[epochs]\nwindow = 5\n")).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }

    #[test]
    fn zero_divisor_is_refused() {
        let err = load_with_env(SAMPLE, &[("EMOSTREAM_EPOCHS__DIVISOR", "0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: epochs.divisor must be at least 1"
        );
    }

    #[test]
    fn the_connections_part_of_the_budget_leaves_room_for_the_largest_record() {
        let c = Config::from_toml(SAMPLE).unwrap();
        assert_eq!(
            c.gateway.max_in_flight_bytes - c.gateway.max_connections * CONNECTION_BYTES,
            128 << 20
        );
        // 1,000 connections set 31.25 MiB aside: 47 MiB leaves 15.75, under one record.
        let err = load_with_env(
            SAMPLE,
            &[
                ("EMOSTREAM_GATEWAY__MAX_CONNECTIONS", "1000"),
                ("EMOSTREAM_GATEWAY__MAX_IN_FLIGHT_BYTES", "49283072"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: gateway.max_in_flight_bytes must be at least 16 MiB (16777216, the largest batch record) plus 32 KiB (32768) for each of gateway.max_connections"
        );
        let c = load_with_env(
            SAMPLE,
            &[
                ("EMOSTREAM_GATEWAY__MAX_CONNECTIONS", "1000"),
                ("EMOSTREAM_GATEWAY__MAX_IN_FLIGHT_BYTES", "49545216"),
            ],
        )
        .unwrap();
        assert_eq!(c.gateway.max_in_flight_bytes_per_ip, 16 << 20);
    }

    #[test]
    fn a_registration_limit_of_zero_is_refused() {
        for var in [
            "EMOSTREAM_BROADCASTER__IP_REGISTRATIONS_PER_S",
            "EMOSTREAM_BROADCASTER__IP_BURST_REGISTRATIONS",
        ] {
            let err = load_with_env(SAMPLE, &[(var, "0")]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid configuration: broadcaster.ip_registrations_per_s and broadcaster.ip_burst_registrations must be at least 1",
                "{var}"
            );
        }
    }

    #[test]
    fn a_frame_bound_of_zero_is_refused() {
        let err =
            load_with_env(SAMPLE, &[("EMOSTREAM_EPOCHS__MAX_FRAME_EMOJIS", "0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: epochs.max_frame_emojis must be at least 1"
        );
    }

    #[test]
    fn each_subscriber_can_advertise_its_own_url() {
        let c = Config::from_toml(SAMPLE).unwrap();
        let c0 = &c.broadcaster.clusters[0];
        assert_eq!(c0.advertised(0).as_deref(), Some("ws://127.0.0.1:9011"));
        assert_eq!(c0.advertised(1), None);
        let two = SAMPLE.replace(
            r#"subscribers = ["127.0.0.1:9011"]"#,
            r#"subscribers = ["0.0.0.0:9011", "0.0.0.0:9012"]
advertise = ["ws://host-a:9011", "wss://host-b/s1"]"#,
        );
        let c = Config::from_toml(&two).unwrap();
        let c0 = &c.broadcaster.clusters[0];
        assert_eq!(c0.advertised(0).as_deref(), Some("ws://host-a:9011"));
        assert_eq!(c0.advertised(1).as_deref(), Some("wss://host-b/s1"));
        assert_eq!(c0.page_origins(), ["http://host-a:9011", "https://host-b"]);

        let short = two.replace(r#", "wss://host-b/s1""#, "");
        assert_eq!(
            Config::from_toml(&short).unwrap_err().to_string(),
            "invalid configuration: broadcaster.clusters \"c0\": advertise has 1 URLs for 2 \
             subscribers (one each, in order, or none)"
        );
        let http = two.replace("wss://host-b/s1", "http://host-b");
        assert_eq!(
            Config::from_toml(&http).unwrap_err().to_string(),
            "invalid configuration: broadcaster.clusters \"c0\": advertise URL \"http://host-b\" \
             must start with ws:// or wss://"
        );
    }
}
