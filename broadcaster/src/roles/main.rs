//! The main publisher: frames from its source into the hub and on to every cluster publisher,
//! and the viewers' front door (`/register`).

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
use axum::extract::State;
use axum::http::{header, Method};
use axum::routing::{get, post};
use axum::{Json, Router};
use emostream_protocol::wire::{
    Admission, Assignment, LinkUp, Member, Register, TopologyCluster, TopologyView,
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
    }

    fn add(&mut self, now: Instant, name: &str) {
        self.order.push_back((now, name.to_owned()));
        *self.per_subscriber.entry(name.to_owned()).or_default() += 1;
    }
}

impl Placement {
    /// The live subscriber with the most room across live clusters; ties go to the first by
    /// name. A subscriber with no room left is skipped, so viewers go elsewhere before they are
    /// refused there.
    fn assign(&self) -> Result<Assignment, Error> {
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
        let room = |m: &Member| {
            let placed = recent.per_subscriber.get(&m.name).copied().unwrap_or(0);
            // A subscriber that reports no room (one from before it was reported) has as much
            // as it has fewer viewers: the old least-loaded order.
            let room = m.room.unwrap_or(u64::MAX - m.viewers);
            room.saturating_sub(placed)
        };
        let (cluster, member) = members
            .into_iter()
            .filter(|(_, m)| room(m) > 0)
            .max_by(|(_, a), (_, b)| (room(a), &b.name).cmp(&(room(b), &a.name)))
            .ok_or(Error::Full)?;
        recent.add(now, &member.name);
        Ok(Assignment {
            cluster,
            subscriber: member.url,
            subscriber_name: member.name,
        })
    }
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

async fn register(
    State(placement): State<Arc<Placement>>,
    body: Result<Json<Register>, JsonRejection>,
) -> Result<Json<Admission>, Error> {
    // Placement is by room alone; who asks does not change where they go, only whose token it
    // is and for which stream.
    let Json(Register {
        user_id,
        group_id: _,
        stream,
    }) = body?;
    let stream = stream.unwrap_or_else(|| DEFAULT_STREAM.to_owned());
    if !emostream_protocol::wire::is_stream_id(&stream) {
        return Err(Error::Invalid {
            field: "stream",
            message: "a stream id is 1 to 64 of [a-z0-9_-]".into(),
        });
    }
    let assignment = placement.assign()?;
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
        }
    }

    fn names(placement: &Placement, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| placement.assign().unwrap().subscriber_name)
            .collect()
    }

    #[test]
    fn viewers_go_where_there_is_most_room_and_never_to_a_full_subscriber() {
        let p = placement(vec![
            member("a", 5, Some(2)),
            member("b", 1, Some(3)),
            member("full", 0, Some(0)),
        ]);
        // b (3), then a and b tie at 2 (a first by name), then b, a, and both are full.
        assert_eq!(names(&p, 5), ["b", "a", "b", "a", "b"]);
        assert!(matches!(p.assign(), Err(Error::Full)));

        // A member that reports no room counts as unbounded, ranked by its load.
        let p = placement(vec![member("new", 0, Some(1)), member("old", 7, None)]);
        assert_eq!(names(&p, 2), ["old", "old"]);

        assert!(matches!(
            placement(Vec::new()).assign(),
            Err(Error::NoLiveSubscriber)
        ));
    }
}
