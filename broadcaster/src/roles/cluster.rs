//! A cluster publisher: one link up to the main publisher, a link down to each subscriber.

use super::{finish, link_routes, serve};
use crate::error::Error;
use crate::hub::Hub;
use crate::link;
use crate::roster::Roster;
use crate::tasks::Tasks;
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
    ring_epochs: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let hub = Arc::new(Hub::new(ring_epochs));
    let roster = Arc::new(Roster::default());
    let tasks = Tasks::new();
    let upstream = format!("ws://{main}{}", link::PATH);
    let (up_hub, up_roster, stop) = (Arc::clone(&hub), Arc::clone(&roster), tasks.stop_handle());
    tokio::spawn(async move {
        let heartbeat = || LinkUp::Cluster {
            name: name.clone(),
            subscribers: live_subscribers(&up_roster),
        };
        link::keep_upstream(upstream, &up_hub, heartbeat, stop).await;
    });
    let app = link_routes(hub, roster, tasks.stop_handle());
    serve(listener, finish(app), tasks, shutdown).await
}

fn live_subscribers(roster: &Roster) -> Vec<Member> {
    roster
        .live()
        .into_iter()
        .filter_map(|up| match up {
            LinkUp::Subscriber { name, url, viewers } => Some(Member { name, url, viewers }),
            // Only subscribers link to a cluster publisher.
            LinkUp::Cluster { .. } => None,
        })
        .collect()
}
