//! Stopping every socket and background task of a role, and knowing when they have all ended.
//!
//! axum's graceful shutdown does not see upgraded WebSockets (they run in tasks of their own), so
//! each such task holds a [`Stop`]: it learns of shutdown through the watch channel, and the
//! `mpsc::Sender` inside it is how [`Tasks::stop`] knows it has gone, as in mini-redis.

use tokio::sync::{mpsc, watch};

pub struct Tasks {
    stop: watch::Sender<bool>,
    done: mpsc::Sender<()>,
    all_done: mpsc::Receiver<()>,
}

/// Held by every long-lived task of a role.
#[derive(Clone)]
pub struct Stop {
    stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

impl Tasks {
    pub fn new() -> Self {
        let (done, all_done) = mpsc::channel(1);
        Self {
            stop: watch::channel(false).0,
            done,
            all_done,
        }
    }

    pub fn stop_handle(&self) -> Stop {
        Stop {
            stop: self.stop.subscribe(),
            _done: self.done.clone(),
        }
    }

    /// Tells every task to stop; usable before [`Tasks::stop`] so that sockets close while the
    /// HTTP server drains.
    pub fn trigger(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Stops every task and waits until each has dropped its [`Stop`].
    pub async fn stop(self) {
        let Self {
            stop,
            done,
            mut all_done,
        } = self;
        stop.send_replace(true);
        drop(done);
        // Nothing is ever sent: `None` means the last `Stop` is gone.
        let _ = all_done.recv().await;
    }
}

impl Stop {
    /// Resolves once shutdown has begun.
    pub async fn stopped(&mut self) {
        // An error means the `Tasks` is gone, which only happens once the role is ending anyway.
        let _ = self.stop.wait_for(|stopping| *stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stop_waits_for_every_task() {
        let tasks = Tasks::new();
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        for i in 0..3 {
            let mut stop = tasks.stop_handle();
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                stop.stopped().await;
                ended_tx.send(i).unwrap();
            });
        }
        drop(ended_tx);
        tokio::time::timeout(Duration::from_secs(5), tasks.stop())
            .await
            .expect("every task ends");
        let mut seen = Vec::new();
        while let Some(i) = ended.recv().await {
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
    }
}
