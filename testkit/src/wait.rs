//! Waiting on a condition with a deadline, never a sleep standing in for it.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How often a condition is polled: often enough that a wait adds little to what it measures.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `cond` holds, polling every 20 ms; panics naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, deadline, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Waits until `probe` yields a value, polling every 20 ms; panics naming `what` after
/// `deadline`. The deadline is on tokio's clock, so it also holds in a paused-clock test.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
