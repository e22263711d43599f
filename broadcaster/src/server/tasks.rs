//! Stopping every socket and background task of a role, and knowing when they have all ended.
//!
//! axum's graceful shutdown does not see upgraded WebSockets (they run in tasks of their own), so
//! each such task holds a [`Stop`]: it learns of shutdown through the cancellation token, and its
//! tracker token is how [`Tasks::stop`] knows it has gone.

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// Held by every long-lived task of a role.
#[derive(Clone)]
pub struct Stop {
    stop: CancellationToken,
    _running: TaskTrackerToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    pub fn stop_handle(&self) -> Stop {
        Stop {
            stop: self.stop.clone(),
            _running: self.tracker.token(),
        }
    }

    /// Tells every task to stop; usable before [`Tasks::stop`] so that sockets close while the
    /// HTTP server drains.
    pub fn trigger(&self) {
        self.stop.cancel();
    }

    /// Stops every task and waits until each has dropped its [`Stop`].
    pub async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Stop {
    /// Resolves once shutdown has begun.
    pub async fn stopped(&mut self) {
        self.stop.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

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
