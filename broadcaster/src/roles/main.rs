//! The main publisher: frames from its source into the hub and on to every cluster publisher,
//! and the viewers' front door (`/register`).

use super::{finish, link_routes, serve, LinkState, Settings};
use crate::auth::TokenKey;
use crate::error::Error;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::roster::{Roster, SILENCE};
use crate::tasks::{Stop, Tasks};
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::Utf8Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use emostream_protocol::wire::{
    Admission, Assignment, LinkUp, Member, Register, TopologyCluster, TopologyView,
};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

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
    let hub = Arc::new(Hub::new(settings.ring_epochs));
    let roster = Arc::new(Roster::default());
    let metrics = Arc::new(Metrics::new("main"));
    let tasks = Tasks::new();
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
    };
    let app = Router::new()
        .route("/register", post(register))
        .route("/v1/viewers", post(register))
        .route("/unregister", post(unregister))
        .route("/v1/topology", get(topology))
        .with_state(placement)
        .merge(link_routes(link));
    serve(listener, finish(app, metrics), tasks, shutdown).await
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
    /// The least-loaded live subscriber across live clusters; ties go to the first by name.
    fn assign(&self) -> Option<Assignment> {
        let now = Instant::now();
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.expire(now);
        let (cluster, member) = live_clusters(&self.roster)
            .into_iter()
            .flat_map(|c| c.subscribers.into_iter().map(move |m| (c.name.clone(), m)))
            .min_by(|(_, a), (_, b)| {
                let load = |m: &Member| {
                    m.viewers + recent.per_subscriber.get(&m.name).copied().unwrap_or(0)
                };
                (load(a), &a.name).cmp(&(load(b), &b.name))
            })?;
        recent.add(now, &member.name);
        Some(Assignment {
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
    // Placement is by load alone; who asks does not change where they go, only whose token it is.
    let Json(Register {
        user_id,
        group_id: _,
    }) = body?;
    let assignment = placement.assign().ok_or(Error::NoLiveSubscriber)?;
    tracing::debug!(%user_id, subscriber = %assignment.subscriber_name, "viewer assigned");
    let (token, token_expires_s) = match &placement.tokens {
        Some(key) => {
            let (token, expires_s) = key.issue(&user_id, SystemTime::now());
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

/// Viewers are counted by their sockets at the subscribers, so leaving needs no bookkeeping here;
/// the route exists because the seeds' clients call it.
async fn unregister(
    body: Result<Json<Register>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Error> {
    let Json(Register {
        user_id: _,
        group_id: _,
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
