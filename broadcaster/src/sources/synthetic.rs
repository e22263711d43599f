//! A frame source for benchmarks: the main publisher emits one epoch per stream every `every_ms`
//! without Kafka — each stream's epoch frame and trend frames, and the popular frame, as
//! production publishes them ([`emostream_protocol::synthetic::frames`]) — each stamped so that
//! `end_ms` is the moment it is emitted. A viewer's `receipt - end_ms` is then exactly the main
//! publisher's emit → receipt latency.

use axum::extract::ws::Utf8Bytes;
use emostream_protocol::synthetic::frames;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// `--synthetic-ms` and `--synthetic-streams` of the main publisher.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Synthetic {
    /// Emit one epoch per stream every MS instead of reading Kafka, each with end_ms = the
    /// moment it is emitted (benchmarks).
    #[arg(
        long = "synthetic-ms",
        value_name = "MS",
        value_parser = clap::value_parser!(u64).range(1..),
        // Required only with --synthetic-streams: the derive would otherwise require it even
        // when no synthetic option is given at all.
        required = false
    )]
    pub every_ms: u64,
    /// The streams of the synthetic epochs.
    #[arg(
        long = "synthetic-streams",
        value_name = "A,B",
        value_delimiter = ',',
        default_value = "main",
        requires = "every_ms"
    )]
    pub streams: Vec<String>,
    /// Stop after this many epochs (the main publisher keeps serving what it holds): a
    /// benchmark then sees every tier with the streams live, and after they go idle.
    #[arg(long = "synthetic-epochs", value_name = "N", requires = "every_ms")]
    pub epochs: Option<u64>,
}

impl Synthetic {
    /// Sends every frame of each window at its end until the receiver is dropped (or `epochs`
    /// windows have been sent). A window that ends while the process is busy is sent late
    /// rather than skipped: consecutive epochs are what viewers' gap checks rely on.
    pub async fn run(self, frames_tx: mpsc::Sender<Utf8Bytes>) {
        let every_ms = self.every_ms.max(1);
        let first = unix_ms() / every_ms;
        let last = self.epochs.map_or(u64::MAX, |n| first.saturating_add(n));
        for epoch in first..last {
            let end_ms = (epoch + 1) * every_ms;
            let wait_ms = end_ms.saturating_sub(unix_ms());
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            for text in frames(&self.streams, epoch, every_ms) {
                if frames_tx.send(text.into()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use emostream_protocol::wire::EpochFrame;

    #[tokio::test]
    async fn every_frame_of_each_window_in_publication_order() {
        let (tx, mut rx) = mpsc::channel(8);
        let source = Synthetic {
            every_ms: 50,
            streams: vec!["a".into(), "b".into()],
            epochs: None,
        };
        let running = tokio::spawn(source.run(tx));
        let mut got = Vec::new();
        // Two windows of seven frames: two epochs, two trending, two sentiment, one popular.
        for _ in 0..14 {
            got.push(rx.recv().await.unwrap().to_string());
        }
        drop(rx);
        running.await.unwrap();
        let first: EpochFrame = serde_json::from_str(&got[0]).unwrap();
        let epoch = first.epoch;
        assert_eq!(got[..7], frames(&["a", "b"], epoch, 50));
        assert_eq!(got[7..], frames(&["a", "b"], epoch + 1, 50));
    }

    #[tokio::test]
    async fn a_source_with_a_count_of_epochs_ends_after_them() {
        let (tx, mut rx) = mpsc::channel(64);
        let source = Synthetic {
            every_ms: 10,
            streams: vec!["a".into()],
            epochs: Some(2),
        };
        let running = tokio::spawn(source.run(tx));
        let mut got = Vec::new();
        while let Some(text) = rx.recv().await {
            got.push(text.to_string());
        }
        running.await.unwrap();
        // Two windows of four frames (epoch, trending, sentiment, popular), then the end.
        assert_eq!(got.len(), 8);
    }
}
