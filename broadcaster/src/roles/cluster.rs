//! A cluster publisher: one link up to the main publisher, a link down to each subscriber.

use super::Settings;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::server::tasks::Tasks;
use crate::server::{finish, nodelay, serve};
use crate::tiers::link::{self, Upstream, UpstreamHealth};
use crate::tiers::roster::Roster;
use crate::tiers::{link_routes, LinkState};
use emostream_protocol::wire::{LinkUp, Member};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves cluster publisher `name` on `listener`, linked to the main publisher at `main`
/// (`host:port`).
pub async fn cluster_publisher(
    listener: TcpListener,
    name: String,
    main: String,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    super::require_link_secret(&listener, &settings)?;
    let roster = Arc::new(Roster::default());
    let metrics = Arc::new(Metrics::new("cluster"));
    let tasks = Tasks::new();
    let hub = super::start_hub(settings.retention, &metrics, tasks.stop_handle());
    let upstream = Upstream {
        url: format!("ws://{main}{}", link::PATH),
        secret: settings.link_secret.clone(),
        // Few clusters, tiny frames: a cluster takes every stream so its subscribers' new
        // subscriptions are served from its ring at once.
        subscribe: false,
    };
    let (up_hub, up_roster, up_metrics, stop) = (
        Arc::clone(&hub),
        Arc::clone(&roster),
        Arc::clone(&metrics),
        tasks.stop_handle(),
    );
    let health = Arc::new(UpstreamHealth::start(tasks.stop_handle()));
    let upstream_lost = health.lost();
    tokio::spawn(async move {
        let heartbeat = || {
            health.heard();
            LinkUp::Cluster {
                name: name.clone(),
                subscribers: live_subscribers(&up_roster),
            }
        };
        link::keep_upstream(upstream, &up_hub, &up_metrics, heartbeat, stop).await;
    });
    let accepting = settings.accepting_requests(nodelay);
    let link = LinkState {
        hub,
        roster,
        metrics: Arc::clone(&metrics),
        secret: settings.link_secret,
        stop: tasks.stop_handle(),
        upstream_lost: Some(upstream_lost),
    };
    serve(
        listener,
        finish(link_routes(link), metrics),
        None,
        tasks,
        accepting,
        shutdown,
    )
    .await
}

fn live_subscribers(roster: &Roster) -> Vec<Member> {
    roster
        .live()
        .into_iter()
        .filter_map(|up| match up {
            LinkUp::Subscriber {
                name,
                url,
                viewers,
                room,
                stream_room,
                carrying,
            } => Some(Member {
                name,
                url,
                viewers,
                room,
                stream_room,
                carrying,
            }),
            // Only subscribers link to a cluster publisher.
            LinkUp::Cluster { .. } => None,
        })
        .collect()
}
