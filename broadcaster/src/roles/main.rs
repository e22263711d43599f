//! The main publisher: frames from its source into the hub and on to every cluster publisher,
//! and the viewers' front door (`/register`).

use super::registrations::Registrations;
use super::Settings;
use crate::auth::TokenKey;
use crate::error::Error;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::server::tasks::{Stop, Tasks};
use crate::server::{finish, nodelay, serve};
use crate::tiers::roster::{Roster, SILENCE};
use crate::tiers::{link_routes, LinkState};
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::Utf8Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::routing::{get, post};
use axum::{Json, Router};
use emostream_protocol::auth::UserTokens;
use emostream_protocol::wire::{
    stream_tag, Admission, Assignment, LinkUp, Member, Register, TopologyCluster, TopologyView,
};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_http::cors::{Any, CorsLayer};

/// Serves the main publisher on `listener`, taking frames (each an epoch's or a trend frame's
/// exact JSON; the hub tells them apart by `type`) from `frames`: Kafka's `emoji-epochs` and
/// `emoji-trends` in production, a channel in tests.
pub async fn main_publisher(
    listener: TcpListener,
    settings: Settings,
    frames: mpsc::Receiver<Utf8Bytes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    super::require_link_secret(&listener, &settings)?;
    let roster = Arc::new(Roster::default());
    let metrics = Arc::new(Metrics::new("main"));
    let tasks = Tasks::new();
    let hub = super::start_hub(settings.retention, &metrics, tasks.stop_handle());
    // Before the first frame, so that every stream the read-back makes knows it.
    hub.missed_before(settings.missed_before);
    tokio::spawn(ingest(
        frames,
        Arc::clone(&hub),
        Arc::clone(&metrics),
        tasks.stop_handle(),
    ));
    let placement = Arc::new(Placement {
        roster: Arc::clone(&roster),
        recent: Mutex::default(),
        tokens: settings.tokens.clone(),
        user_tokens: settings.user_tokens.clone(),
        registrations: Registrations::new(&settings.registrations, Arc::clone(&metrics)),
    });
    let link = LinkState {
        hub,
        roster,
        metrics: Arc::clone(&metrics),
        secret: settings.link_secret.clone(),
        stop: tasks.stop_handle(),
        upstream_lost: None,
    };
    let app = Router::new()
        .route("/register", post(register))
        .route("/v1/viewers", post(register))
        .route("/unregister", post(unregister))
        .route("/v1/topology", get(topology))
        // Before the layer, so that a preflight (OPTIONS) goes through it: the fallback `finish`
        // gives every route later would take it unwrapped and answer 405.
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(registration_cors())
        .with_state(placement)
        .merge(link_routes(link));
    let accepting = settings.accepting_requests(nodelay);
    serve(
        listener,
        finish(app, metrics),
        None,
        tasks,
        accepting,
        shutdown,
    )
    .await
}

/// The viewer page is served by the subscribers and registers here, cross-origin. Registration
/// is open to anyone and carries no credentials (a token comes back in the body), so any origin
/// may call it; the links to the tiers below are not covered.
fn registration_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
}

async fn ingest(
    mut frames: mpsc::Receiver<Utf8Bytes>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    mut stop: Stop,
) {
    loop {
        let text = tokio::select! {
            text = frames.recv() => text,
            _ = stop.stopped() => return,
        };
        let Some(text) = text else {
            tracing::warn!("the frame source ended; serving what the hub holds");
            return;
        };
        match hub.publish(text) {
            Ok(true) => metrics.frame_in(),
            Ok(false) => tracing::debug!("frame already passed on"),
            Err(e) => tracing::warn!(error = %e, "record without a stream and epoch"),
        }
    }
}

/// Chooses subscribers for new viewers.
struct Placement {
    roster: Arc<Roster>,
    /// Assignments from the last [`SILENCE`], oldest first, with a count per subscriber name.
    recent: Mutex<Recent>,
    /// Signs viewer tokens when viewer auth is on.
    tokens: Option<TokenKey>,
    /// The platform's user tokens, required to register when `[auth]` is on.
    user_tokens: Option<Arc<UserTokens>>,
    /// Each client's registration rate.
    registrations: Registrations,
}

/// Viewer counts reach the main publisher a heartbeat or two late, so a burst of registrations
/// would all land on whichever subscriber looked emptiest. Each assignment therefore counts
/// against its subscriber until that delay has surely passed.
#[derive(Default)]
struct Recent {
    order: VecDeque<(Instant, String)>,
    per_subscriber: HashMap<String, u64>,
}

impl Recent {
    fn expire(&mut self, now: Instant) {
        while let Some((at, name)) = self.order.front() {
            if now.duration_since(*at) < SILENCE {
                break;
            }
            if let Some(n) = self.per_subscriber.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    self.per_subscriber.remove(name);
                }
            }
            self.order.pop_front();
        }
        if self.order.is_empty() {
            // The room of a burst of registrations (20,000 in a few seconds), kept for nothing.
            self.order.shrink_to_fit();
            self.per_subscriber.shrink_to_fit();
        }
    }

    fn add(&mut self, now: Instant, name: &str) {
        self.order.push_back((now, name.to_owned()));
        *self.per_subscriber.entry(name.to_owned()).or_default() += 1;
    }
}

/// How far above the average load a subscriber may go before a stream's viewers spill past
/// it: consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018).
const LOAD_BOUND: f64 = 1.25;

impl Placement {
    /// Where a viewer of `stream` goes: live subscribers in the stream's own order (rendezvous
    /// hashing of the stream and each subscriber's name), the first whose load (viewers, and
    /// viewers placed since its last report) is under [`LOAD_BOUND`] times the average with this
    /// viewer (at least 1), or else the least loaded, first in that order. So a
    /// stream's viewers stay on as few subscribers as balance allows (each carries fewer
    /// streams, and fewer copies of each cross the links above), a big stream spreads over
    /// every subscriber, and a subscriber's leaving moves only its own viewers' streams.
    /// Skipped: a subscriber with no room for viewers, or none for another stream when it does
    /// not carry this one (a full subscriber lists the streams it carries).
    fn assign(&self, stream: &str) -> Result<Assignment, Error> {
        let now = Instant::now();
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.expire(now);
        let members: Vec<(String, Member)> = live_clusters(&self.roster)
            .into_iter()
            .flat_map(|c| c.subscribers.into_iter().map(move |m| (c.name.clone(), m)))
            .collect();
        if members.is_empty() {
            return Err(Error::NoLiveSubscriber);
        }
        let placed = |m: &Member| recent.per_subscriber.get(&m.name).copied().unwrap_or(0);
        // A subscriber that reports no room (one from before it was reported) is unbounded.
        let tag = stream_tag(stream);
        let has_room = |m: &Member| {
            m.room.is_none_or(|room| room > placed(m))
                && (m.stream_room.is_none_or(|r| r > 0) || m.carrying.binary_search(&tag).is_ok())
        };
        let load = |m: &Member| m.viewers + placed(m);
        let mut open: Vec<(u64, String, Member)> = members
            .into_iter()
            .filter(|(_, m)| has_room(m))
            .map(|(cluster, m)| (rendezvous(stream, &m.name), cluster, m))
            .collect();
        if open.is_empty() {
            return Err(Error::Full);
        }
        open.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.name.cmp(&b.2.name)));
        let total: u64 = open.iter().map(|(_, _, m)| load(m)).sum();
        // Rounded down (and at least 1), so that a handful of viewers spread one by one too.
        let bound = ((LOAD_BOUND * (total + 1) as f64 / open.len() as f64) as u64).max(1);
        let chosen = open
            .iter()
            .position(|(_, _, m)| load(m) < bound)
            .unwrap_or_else(|| {
                let least = open.iter().map(|(_, _, m)| load(m)).min().unwrap_or(0);
                open.iter()
                    .position(|(_, _, m)| load(m) == least)
                    .unwrap_or(0)
            });
        let (_, cluster, member) = open.swap_remove(chosen);
        recent.add(now, &member.name);
        Ok(Assignment {
            cluster,
            subscriber: member.url,
            subscriber_name: member.name,
        })
    }
}

/// The rank of subscriber `name` for `stream`: every stream orders the subscribers its own way,
/// and the same way wherever and whenever it is asked.
fn rendezvous(stream: &str, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable across calls (the standard library does not promise it
    // across releases, and nothing outlives this process).
    let mut h = std::hash::DefaultHasher::new();
    (stream, name).hash(&mut h);
    h.finish()
}

fn live_clusters(roster: &Roster) -> Vec<TopologyCluster> {
    roster
        .live()
        .into_iter()
        .filter_map(|up| match up {
            LinkUp::Cluster {
                name,
                mut subscribers,
            } => {
                subscribers.sort_by(|a, b| a.name.cmp(&b.name));
                Some(TopologyCluster {
                    name,
                    viewers: subscribers.iter().map(|m| m.viewers).sum(),
                    subscribers,
                })
            }
            // Only cluster publishers link to the main publisher.
            LinkUp::Subscriber { .. } => None,
        })
        .collect()
}

/// A registration its client's bucket let through ([`Registrations::admit`]); taken before the
/// body is read, so a flood is refused before any of its work is done.
struct Admitted;

impl FromRequestParts<Arc<Placement>> for Admitted {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        placement: &Arc<Placement>,
    ) -> Result<Self, Error> {
        placement.registrations.admit(parts).map(|()| Admitted)
    }
}

async fn register(
    State(placement): State<Arc<Placement>>,
    _: Admitted,
    headers: HeaderMap,
    body: Result<Json<Register>, JsonRejection>,
) -> Result<Json<Admission>, Error> {
    // With `[auth]` on, only the platform's signed-in users get a viewer token, and only for
    // themselves.
    let verified = match &placement.user_tokens {
        Some(tokens) => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            Some(
                tokens
                    .user(authorization)
                    .map_err(|refused| Error::Unauthenticated(refused.to_string()))?,
            )
        }
        None => None,
    };
    // Placement is by stream and load; who asks does not change where they go, only whose
    // token it is.
    let Json(Register {
        user_id,
        group_id: _,
        stream,
    }) = body?;
    // The gateway's bound on the same field: the id goes into the token and the log, and an
    // unbounded one would let one request make every later use of it megabytes long.
    if user_id.chars().count() > MAX_USER_ID_CHARS {
        return Err(Error::Invalid {
            field: "user_id",
            message: format!("user_id must be at most {MAX_USER_ID_CHARS} characters"),
        });
    }
    if verified.as_ref().is_some_and(|user| *user != user_id) {
        return Err(Error::OtherUser);
    }
    let stream = stream.unwrap_or_else(|| DEFAULT_STREAM.to_owned());
    if !emostream_protocol::wire::is_stream_id(&stream) {
        return Err(Error::Invalid {
            field: "stream",
            message: "a stream id is 1 to 64 of [a-z0-9_-]".into(),
        });
    }
    let assignment = placement.assign(&stream)?;
    tracing::debug!(%user_id, subscriber = %assignment.subscriber_name, "viewer assigned");
    let (token, token_expires_s) = match &placement.tokens {
        Some(key) => {
            let (token, expires_s) = key.issue(&user_id, &stream, SystemTime::now());
            (Some(token), Some(expires_s))
        }
        None => (None, None),
    };
    Ok(Json(Admission {
        assignment,
        token,
        token_expires_s,
    }))
}

/// The longest `user_id` a registration may name, as the gateway takes at most for a tap
/// (`gateway/src/parse/validate.rs`): a viewer id the gateway takes registers too.
const MAX_USER_ID_CHARS: usize = 128;

/// The stream of a registration that names none: the seeds' clients watch only this one.
const DEFAULT_STREAM: &str = "main";

/// Viewers are counted by their sockets at the subscribers, so leaving needs no bookkeeping here;
/// the route exists because the seeds' clients call it.
async fn unregister(
    body: Result<Json<Register>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Error> {
    let Json(Register {
        user_id: _,
        group_id: _,
        stream: _,
    }) = body?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

async fn topology(State(placement): State<Arc<Placement>>) -> Json<TopologyView> {
    let clusters = live_clusters(&placement.roster);
    Json(TopologyView {
        viewers: clusters.iter().map(|c| c.viewers).sum(),
        clusters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, viewers: u64, room: Option<u64>) -> Member {
        Member {
            name: name.into(),
            url: format!("ws://{name}"),
            viewers,
            room,
            stream_room: None,
            carrying: Vec::new(),
        }
    }

    fn placement(subscribers: Vec<Member>) -> Placement {
        let roster = Arc::new(Roster::default());
        roster.heard(
            roster.open(),
            LinkUp::Cluster {
                name: "c0".into(),
                subscribers,
            },
        );
        Placement {
            roster,
            recent: Mutex::default(),
            tokens: None,
            user_tokens: None,
            registrations: Registrations::new(
                &crate::RegistrationLimit {
                    per_s: 1,
                    burst: 1,
                    trusted_proxies: Arc::default(),
                },
                Arc::new(Metrics::new("main")),
            ),
        }
    }

    fn names(placement: &Placement, stream: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| placement.assign(stream).unwrap().subscriber_name)
            .collect()
    }

    /// The subscribers in `stream`'s own order.
    fn order(stream: &str, names: &[&str]) -> Vec<String> {
        let mut names: Vec<&str> = names.to_vec();
        names.sort_by_key(|name| std::cmp::Reverse(rendezvous(stream, name)));
        names.into_iter().map(String::from).collect()
    }

    #[test]
    fn a_streams_viewers_keep_to_its_own_subscribers_as_far_as_balance_allows() {
        let all = ["a", "b", "c"];
        // Balanced and busy: every viewer of a stream goes to the stream's first subscriber,
        // and two streams' firsts are where the hash puts them.
        let p = placement(all.map(|n| member(n, 100, Some(1000))).to_vec());
        for stream in ["football", "concert", "news"] {
            let first = order(stream, &all)[0].clone();
            assert_eq!(names(&p, stream, 3), [first.clone(), first.clone(), first]);
        }
        // One big stream on idle subscribers spreads over all of them, in the stream's order:
        // each takes one, then each takes a second (1.25 × the average, rounded down, is 1 and
        // then 2), and so on.
        let p = placement(all.map(|n| member(n, 0, Some(100))).to_vec());
        let o = order("final", &all);
        let want = [0, 1, 2, 0, 1, 2, 0].map(|i| o[i].clone());
        assert_eq!(names(&p, "final", 7), want);
        // The same stream asked again elsewhere ranks the subscribers the same way.
        assert_eq!(order("final", &["c", "a", "b"]), o);
    }

    #[test]
    fn a_subscriber_without_room_for_viewers_or_streams_is_skipped() {
        let o = order("main", &["a", "b", "full"]);
        let mut members = vec![
            member("a", 0, Some(1)),
            member("b", 0, Some(1)),
            member("full", 0, Some(0)),
        ];
        // Whichever of a and b ranks first for "main" has no room for another stream.
        let first_open = o.iter().find(|n| *n != "full").unwrap().clone();
        let other = if first_open == "a" { "b" } else { "a" };
        members
            .iter_mut()
            .find(|m| m.name == first_open)
            .unwrap()
            .stream_room = Some(0);
        let p = placement(members);
        assert_eq!(names(&p, "main", 1), [other]);
        assert!(matches!(p.assign("main"), Err(Error::Full)));

        // A member that reports no room counts as unbounded.
        let p = placement(vec![member("new", 0, Some(1)), member("old", 7, None)]);
        let got = names(&p, "main", 3);
        assert_eq!(got.iter().filter(|n| *n == "old").count(), 2, "{got:?}");

        assert!(matches!(
            placement(Vec::new()).assign("main"),
            Err(Error::NoLiveSubscriber)
        ));
    }

    /// A subscriber with no room for another stream still takes viewers of the streams it
    /// carries: with every subscriber full of streams, a viewer of a carried stream is placed
    /// where it is carried, and one of a new stream is refused.
    #[test]
    fn a_subscriber_full_of_streams_takes_viewers_of_the_streams_it_carries() {
        let full = |name: &str, carrying: &[&str]| {
            let mut tags: Vec<u32> = carrying.iter().map(|s| stream_tag(s)).collect();
            tags.sort_unstable();
            Member {
                stream_room: Some(0),
                carrying: tags,
                ..member(name, 10, Some(100))
            }
        };
        let p = placement(vec![full("a", &["news", "final"]), full("b", &["concert"])]);
        assert_eq!(names(&p, "final", 2), ["a", "a"]);
        assert_eq!(names(&p, "concert", 1), ["b"]);
        assert!(matches!(p.assign("cooking"), Err(Error::Full)));
    }

    /// Pinned (FNV-1a's published values): subscribers and the main publisher of different
    /// builds compute a stream's tag alike.
    #[test]
    fn stream_tags_are_pinned() {
        assert_eq!(stream_tag(""), 0x811c_9dc5);
        assert_eq!(stream_tag("a"), 0xe40c_292c);
        assert_eq!(stream_tag("main"), 0xea90_e208);
    }
}
