//! The three roles, one per process ([`run`] starts the one launched), and what they take from
//! the configuration.

pub mod cluster;
pub mod main;
mod registrations;
pub mod subscriber;

pub use registrations::RegistrationLimit;

use crate::auth::TokenKey;
use crate::error::Error;
use crate::hub::{Hub, Retention};
use crate::metrics::Metrics;
use crate::server::tasks::Stop;
use crate::server::{bind, Accepting};
use crate::sources::kafka::{FrameSource, ReadBack};
use crate::sources::synthetic::Synthetic;
use crate::viewers::outlet::ViewerLimits;
use emostream_protocol::auth::UserTokens;
use emostream_protocol::client::TrustedProxies;
use emostream_protocol::config::{BroadcasterConfig, ConfigError};
use emostream_protocol::Config;
use emostream_web::Page;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Frames read from Kafka but not yet in the hub. Frames arrive a few per second, so this only
/// fills while the ring is being refilled at start-up.
const FRAME_QUEUE: usize = 1024;

/// Which tier this process is (the binary's subcommand), and where it runs when that is not
/// (only) what the configuration says.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Role {
    /// The main publisher: reads emoji-epochs and emoji-trends, feeds the cluster publishers, and
    /// assigns viewers to subscribers.
    Main {
        /// Serve here instead of broadcaster.main.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        #[command(flatten)]
        synthetic: Option<Synthetic>,
    },
    /// A cluster publisher: a [[broadcaster.clusters]] entry by name, or any name with --listen,
    /// which joins at run time.
    Cluster {
        /// The cluster's name.
        #[arg(long)]
        name: String,
        /// Serve here instead of the configured address.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// The main publisher, instead of broadcaster.main.
        #[arg(long, value_name = "HOST:PORT")]
        upstream: Option<String>,
    },
    /// A subscriber: {cluster}-s{i}, the i-th (from 0) address in its cluster's subscribers, or
    /// any name with --listen and --upstream, which joins at run time.
    Subscriber {
        /// The subscriber's name.
        #[arg(long)]
        name: String,
        /// Serve here instead of the configured address.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// The cluster publisher, instead of the configured one.
        #[arg(long, value_name = "HOST:PORT")]
        upstream: Option<String>,
        /// Where viewers reach this subscriber [default: ws://{listen}]
        #[arg(long, value_name = "URL")]
        advertise: Option<String>,
    },
}

/// What every tier takes from `[broadcaster]`.
#[derive(Clone)]
pub struct Settings {
    /// What every tier's hub keeps, and when it forgets a stream.
    pub retention: Retention,
    /// Epochs before this one may have passed this process by, so a lower tier or a viewer
    /// resuming from before it is told of a gap: a main publisher's read-back after a
    /// (re)start begins there ([`ReadBack`]). 0 for every other role, whose hub is filled from
    /// the ring above, and for a main publisher not fed from Kafka.
    pub missed_before: u64,
    /// Issues (main) and checks (subscribers) viewer tokens; `None`: viewers need none.
    pub tokens: Option<TokenKey>,
    /// Presented to the tier above and required from the tier below.
    pub link_secret: Option<String>,
    /// How far behind a viewer may fall, in bytes and in time.
    pub viewer_limits: ViewerLimits,
    /// How long a lane waits after an epoch frame for the same epoch's trend frames.
    pub bundle_wait: Duration,
    /// A subscriber's threads, one fan-out lane each; 0: one per core.
    pub subscriber_threads: usize,
    /// The services the viewer page served by subscribers talks to: the gateway it posts taps
    /// to, the main publisher it registers with; `None`: subscribers serve no page.
    pub page: Option<Page>,
    /// The platform's user tokens `/register` requires, when `[auth]` is on.
    pub user_tokens: Option<Arc<UserTokens>>,
    /// Viewers a subscriber holds at most (already cut to its descriptor limit).
    pub max_viewers: usize,
    /// Distinct streams a subscriber's viewers may watch at once.
    pub max_streams: usize,
    /// How long a connection may take to send a request's header.
    pub header_read_timeout: Duration,
    /// Connections not yet upgraded a role holds at once (see [`Accepting::max_pending`]): half
    /// the descriptors kept back from viewers, so a flood of them leaves the rest to the
    /// upstream link, the listener and the logs.
    pub max_pending: usize,
    /// The main publisher's `/register` limit per client.
    pub registrations: RegistrationLimit,
}

impl Settings {
    /// `descriptors`: this process's limit on open descriptors, which bounds `max_viewers`.
    /// Fails on a `trusted_proxies` entry that is neither an address nor a network.
    pub fn from_config(config: &BroadcasterConfig, descriptors: usize) -> Result<Self, Error> {
        let BroadcasterConfig {
            main: _,     // where the main publisher listens: placement, not a setting
            clusters: _, // the same
            ring_epochs,
            viewer_token_secret,
            viewer_token_ttl_s,
            link_secret,
            viewer_lag_budget_bytes,
            viewer_max_staleness_ms,
            bundle_wait_ms,
            subscriber_threads,
            max_viewers,
            max_streams,
            header_read_timeout_ms,
            stream_idle_s,
            max_held_bytes,
            ip_registrations_per_s,
            ip_burst_registrations,
            trusted_proxies,
        } = config;
        let trusted_proxies = TrustedProxies::new(trusted_proxies).map_err(|bad| {
            Error::Config(ConfigError::Invalid(format!(
                "broadcaster.trusted_proxies: {bad}"
            )))
        })?;
        // A small limit (1024 is common) still leaves most of it to viewers.
        let reserved = BroadcasterConfig::RESERVED_DESCRIPTORS.min(descriptors / 4);
        let room = descriptors - reserved;
        let max_viewers = match *max_viewers {
            Some(wanted) if wanted > room => {
                tracing::warn!(
                    max_viewers = wanted,
                    descriptors,
                    "max_viewers is more than the descriptor limit allows; cut to {room}"
                );
                room
            }
            Some(wanted) => wanted,
            None => room,
        };
        Ok(Self {
            retention: Retention {
                ring_epochs: *ring_epochs,
                idle: Duration::from_secs(*stream_idle_s),
                max_bytes: *max_held_bytes,
            },
            missed_before: 0,
            tokens: viewer_token_secret
                .as_deref()
                .map(|secret| TokenKey::new(secret, Duration::from_secs(*viewer_token_ttl_s))),
            link_secret: link_secret.clone(),
            viewer_limits: ViewerLimits::new(
                *viewer_lag_budget_bytes,
                Duration::from_millis(*viewer_max_staleness_ms),
            ),
            bundle_wait: Duration::from_millis(*bundle_wait_ms),
            subscriber_threads: *subscriber_threads,
            page: None,
            user_tokens: None,
            max_viewers,
            max_streams: *max_streams,
            header_read_timeout: Duration::from_millis(*header_read_timeout_ms),
            max_pending: (reserved / 2).max(1),
            registrations: RegistrationLimit {
                per_s: *ip_registrations_per_s,
                burst: *ip_burst_registrations,
                trusted_proxies: Arc::new(trusted_proxies),
            },
        })
    }

    /// How a subscriber's accept loop treats connections: the pending places the reserve leaves.
    pub(crate) fn accepting_viewers(&self, tune: fn(&TcpStream)) -> Accepting {
        Accepting {
            header_read_timeout: self.header_read_timeout,
            tune,
            max_pending: self.max_pending,
        }
    }

    /// How a main or cluster publisher's accept loop treats connections. They hold no viewers,
    /// so the descriptors a subscriber would give viewers are theirs for requests too (browsers
    /// calling `/register` in a reconnect storm). Like a subscriber's, every connection carries
    /// one request unless it upgrades (a lower tier's link): see [`crate::server::serve`].
    pub(crate) fn accepting_requests(&self, tune: fn(&TcpStream)) -> Accepting {
        Accepting {
            max_pending: self.max_pending.saturating_add(self.max_viewers),
            ..self.accepting_viewers(tune)
        }
    }
}

/// Runs the launched role until `shutdown` resolves, then closes every socket and returns.
pub async fn run(
    config: Config,
    role: Role,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let broadcaster = &config.broadcaster;
    let settings = Settings {
        // The addresses the tiers themselves use: the main publisher's is the one cluster
        // publishers on other hosts connect to, so browsers can reach it too.
        page: Some(Page {
            gateway: format!("http://{}", config.gateway.listen),
            main: Some(format!("http://{}", broadcaster.main)),
        }),
        user_tokens: UserTokens::from_config(&config.auth)
            .map_err(Error::Role)?
            .map(Arc::new),
        ..Settings::from_config(
            broadcaster,
            emostream_protocol::limits::raise_descriptor_limit(),
        )?
    };
    match role {
        Role::Main { listen, synthetic } => {
            let listener = bind(listen.as_deref().unwrap_or(&broadcaster.main)).await?;
            let (frames_tx, frames) = mpsc::channel(FRAME_QUEUE);
            let (sources, missed_before) = match synthetic {
                Some(synthetic) => (vec![tokio::spawn(synthetic.run(frames_tx))], 0),
                None => {
                    let read_back = ReadBack::before(
                        std::time::SystemTime::now(),
                        settings.retention.ring_epochs,
                        config.epochs.window_ms,
                    );
                    let sources = FrameSource::all(&config.kafka, read_back)?
                        .map(|source| tokio::spawn(source.run(frames_tx.clone())));
                    // Only the sources hold senders, so the hub hears when both have ended.
                    drop(frames_tx);
                    (sources.into(), read_back.first_epoch)
                }
            };
            let settings = Settings {
                missed_before,
                ..settings
            };
            let served = main::main_publisher(listener, settings, frames, shutdown).await;
            for source in sources {
                source.abort();
                // Waiting for the abort drops the consumer, which leaves its broker sessions
                // cleanly.
                let _ = source.await;
            }
            served
        }
        Role::Cluster {
            name,
            listen,
            upstream,
        } => {
            let configured = broadcaster.clusters.iter().find(|c| c.name == name);
            let listen = match (listen, configured) {
                (Some(listen), _) => listen,
                (None, Some(c)) => c.listen.clone(),
                (None, None) => {
                    return Err(Error::Role(format!(
                        "no cluster named {name:?} in broadcaster.clusters; give --listen to join one at run time"
                    )))
                }
            };
            let listener = bind(&listen).await?;
            let main = upstream.unwrap_or_else(|| broadcaster.main.clone());
            cluster::cluster_publisher(listener, name, main, settings, shutdown).await
        }
        Role::Subscriber {
            name,
            listen,
            upstream,
            advertise,
        } => {
            let configured = broadcaster
                .clusters
                .iter()
                .flat_map(|c| {
                    c.subscribers
                        .iter()
                        .enumerate()
                        .map(move |(i, s)| (c, i, s))
                })
                .find(|(c, i, _)| format!("{}-s{i}", c.name) == name)
                .map(|(c, i, s)| (c.listen.clone(), s.clone(), c.advertise.get(i).cloned()));
            let (cluster, listen, configured_url) = match (upstream, listen, configured) {
                (Some(up), Some(listen), configured) => {
                    (up, listen, configured.and_then(|(_, _, url)| url))
                }
                (up, listen, Some((c, s, url))) => (up.unwrap_or(c), listen.unwrap_or(s), url),
                (_, _, None) => {
                    return Err(Error::Role(format!(
                        "no subscriber named {name:?}: subscribers are named {{cluster}}-s{{i}}, \
                         i counting from 0 in the cluster's subscribers list; give --listen and \
                         --upstream to join one at run time"
                    )))
                }
            };
            let listener = bind(&listen).await?;
            let url = advertise
                .or(configured_url)
                .unwrap_or_else(|| format!("ws://{listen}"));
            if unspecified(&url) {
                return Err(Error::Role(format!(
                    "subscriber {name} would tell viewers to connect to {url}, which is no host: \
                     give --advertise, or its URL in its cluster's advertise list in cluster.toml"
                )));
            }
            subscriber::subscriber(listener, name, cluster, url, settings, shutdown).await
        }
    }
}

/// Whether a `ws://` URL names the unspecified address (`0.0.0.0`, `[::]`): a place to listen
/// on, not to connect to.
fn unspecified(url: &str) -> bool {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_unspecified())
}

/// Refuses to serve a tier on an address other hosts can reach without the link secret: its
/// link route would take any lower tier, and a subscriber on such an address links to a tier
/// above it across the network, which needs the secret too.
pub fn require_link_secret(listener: &TcpListener, settings: &Settings) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: "the listener".into(),
        source,
    })?;
    let has_secret = settings
        .link_secret
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    if addr.ip().is_loopback() || has_secret {
        return Ok(());
    }
    Err(Error::Role(format!(
        "listening on {addr}, which is not a loopback address, needs broadcaster.link_secret \
         (or EMOSTREAM_BROADCASTER__LINK_SECRET): without it any host that reaches this port \
         could link to this tier"
    )))
}

/// glibc's allocator set so that what the main publisher frees can go back to the system: two
/// arenas instead of one per thread (up to 8 per core; tokio's and librdkafka's threads each take
/// one, and a few long-lived allocations pin pages in every one of them), and blocks from
/// 128 KiB on mapped on their own and unmapped when freed (glibc's default raises that bound to
/// the largest block freed, so the peak's large buffers would land in the arenas). Called before
/// the role's threads start; other allocators: nothing. With 2,000 streams and 2,201 viewers
/// (docs/benchmarks.md) the main publisher ended +2.0 MiB over its baseline after the idle
/// time, from +3.7.
pub fn allocate_to_give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters, before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hands the memory freed by forgetting streams back to the system: glibc's allocator keeps
/// freed heap pages mapped in its arenas, so without this a tier's resident memory would stay at
/// its peak after thousands of streams went idle.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A role's hub, kept within its [`Retention`] for as long as the role runs: idle streams are
/// forgotten, and what it holds is reported, every quarter of the idle time (between 1 and 30 s).
fn start_hub(retention: Retention, metrics: &Arc<Metrics>, mut stop: Stop) -> Arc<Hub> {
    let hub = Arc::new(Hub::with_retention(retention));
    let every = (retention.idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let (kept, metrics) = (Arc::clone(&hub), Arc::clone(metrics));
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Links and lanes let go of what they kept of a forgotten stream at their next ping
        // (within a second), after this sweep's trim: the next sweep trims once more for them.
        let mut trim_next_sweep = false;
        loop {
            tokio::select! {
                _ = sweep.tick() => {}
                () = stop.stopped() => return,
            }
            let forgotten = kept.forget_idle();
            let (streams, bytes) = kept.held();
            if forgotten > 0 {
                tracing::debug!(forgotten, streams, bytes, "forgot idle streams");
            }
            if forgotten > 0 || trim_next_sweep {
                give_back_freed_memory();
            }
            trim_next_sweep = forgotten > 0;
            metrics.held(streams, bytes, forgotten);
        }
    });
    hub
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_viewers: Option<usize>) -> BroadcasterConfig {
        serde_json::from_value(serde_json::json!({
            "main": "127.0.0.1:9000",
            "clusters": [],
            "max_viewers": max_viewers,
        }))
        .unwrap()
    }

    #[test]
    fn max_viewers_stays_below_the_descriptor_limit() {
        let cases = [
            (None, 20_000, 18_976),
            (Some(50_000), 20_000, 18_976),
            (Some(100), 20_000, 100),
            (Some(1000), 1024, 768),
            (None, 4096, 3072),
            (None, 8192, 7168),
        ];
        for (wanted, descriptors, got) in cases {
            let settings = Settings::from_config(&config(wanted), descriptors).unwrap();
            assert_eq!(settings.max_viewers, got, "{wanted:?} of {descriptors}");
        }
    }

    #[test]
    fn pending_connections_get_half_the_reserve() {
        for (descriptors, pending) in [(20_000, 512), (1024, 128), (256, 32), (3, 1)] {
            let settings = Settings::from_config(&config(None), descriptors).unwrap();
            assert_eq!(settings.max_pending, pending, "of {descriptors}");
        }
    }

    #[test]
    fn a_trusted_proxy_must_be_an_address_or_a_network() {
        let with = |entry: &str| {
            serde_json::from_value::<BroadcasterConfig>(serde_json::json!({
                "main": "127.0.0.1:9000",
                "clusters": [],
                "trusted_proxies": ["10.0.0.0/8", entry],
            }))
            .unwrap()
        };
        let refused = Settings::from_config(&with("10.0.0.0/33"), 20_000).err();
        assert_eq!(
            refused.map(|e| e.to_string()),
            Some(
                "invalid configuration: broadcaster.trusted_proxies: \"10.0.0.0/33\" is not an \
                 address or a CIDR network"
                    .into()
            )
        );
        let settings = Settings::from_config(&with("2001:db8::/32"), 20_000).unwrap();
        assert!(settings
            .registrations
            .trusted_proxies
            .contains("2001:db8::1".parse().unwrap()));
        assert_eq!(
            (settings.registrations.per_s, settings.registrations.burst),
            (1_000, 2_000)
        );
    }

    #[test]
    fn an_advertised_url_must_name_a_host() {
        for (url, unusable) in [
            ("ws://0.0.0.0:9011", true),
            ("ws://[::]:9011/", true),
            ("ws://127.0.0.1:9011", false),
            ("ws://10.77.0.3:9011", false),
            ("wss://viewers.example/s1", false),
            ("ws://host:9011", false),
        ] {
            assert_eq!(unspecified(url), unusable, "{url}");
        }
    }
}
