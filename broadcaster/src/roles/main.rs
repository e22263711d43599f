//! The main publisher: frames from its source into the hub and on to every cluster publisher,
//! and the viewers' front door (`/register`).

use super::{finish, link_routes, serve};
use crate::error::Error;
use crate::hub::Hub;
use crate::roster::{Roster, SILENCE};
use crate::tasks::{Stop, Tasks};
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::Utf8Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use emostream_protocol::wire::{Assignment, LinkUp, Member, Register};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Serves the main publisher on `listener`, taking frames (each an epoch's exact JSON) from
/// `frames`: Kafka in production, a channel in tests.
pub async fn main_publisher(
    listener: TcpListener,
    ring_epochs: usize,
    frames: mpsc::Receiver<Utf8Bytes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let hub = Arc::new(Hub::new(ring_epochs));
    let roster = Arc::new(Roster::default());
    let tasks = Tasks::new();
    tokio::spawn(ingest(frames, Arc::clone(&hub), tasks.stop_handle()));
    let placement = Arc::new(Placement {
        roster: Arc::clone(&roster),
        recent: Mutex::default(),
    });
    let app = Router::new()
        .route("/register", post(register))
        .route("/v1/viewers", post(register))
        .route("/unregister", post(unregister))
        .route("/v1/topology", get(topology))
        .with_state(placement)
        .merge(link_routes(hub, roster, tasks.stop_handle()));
    serve(listener, finish(app), tasks, shutdown).await
}

async fn ingest(mut frames: mpsc::Receiver<Utf8Bytes>, hub: Arc<Hub>, mut stop: Stop) {
    loop {
        let text = tokio::select! {
            text = frames.recv() => text,
            _ = stop.stopped() => return,
        };
        let Some(text) = text else {
            tracing::warn!("the epoch source ended; serving what the ring holds");
            return;
        };
        match hub.publish(text) {
            Ok(true) => {}
            Ok(false) => tracing::debug!("epoch already passed on"),
            Err(e) => tracing::warn!(error = %e, "epoch record without a stream and epoch"),
        }
    }
}

/// Chooses subscribers for new viewers.
struct Placement {
    roster: Arc<Roster>,
    /// Assignments from the last [`SILENCE`], oldest first, with a count per subscriber name.
    recent: Mutex<Recent>,
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

/// What `GET /v1/topology` answers: the live clusters and their live subscribers, by name.
#[derive(Debug, Serialize)]
struct Topology {
    clusters: Vec<ClusterView>,
}

#[derive(Debug, Serialize)]
struct ClusterView {
    name: String,
    subscribers: Vec<Member>,
}

fn live_clusters(roster: &Roster) -> Vec<ClusterView> {
    roster
        .live()
        .into_iter()
        .filter_map(|up| match up {
            LinkUp::Cluster {
                name,
                mut subscribers,
            } => {
                subscribers.sort_by(|a, b| a.name.cmp(&b.name));
                Some(ClusterView { name, subscribers })
            }
            // Only cluster publishers link to the main publisher.
            LinkUp::Subscriber { .. } => None,
        })
        .collect()
}

async fn register(
    State(placement): State<Arc<Placement>>,
    body: Result<Json<Register>, JsonRejection>,
) -> Result<Json<Assignment>, Error> {
    // Placement is by load alone; who asks does not change where they go.
    let Json(Register {
        user_id,
        group_id: _,
    }) = body?;
    let assignment = placement.assign().ok_or(Error::NoLiveSubscriber)?;
    tracing::debug!(%user_id, subscriber = %assignment.subscriber_name, "viewer assigned");
    Ok(Json(assignment))
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

async fn topology(State(placement): State<Arc<Placement>>) -> Json<Topology> {
    Json(Topology {
        clusters: live_clusters(&placement.roster),
    })
}
