//! A frame source for benchmarks: the main publisher emits one epoch per stream every `every_ms`
//! without Kafka, each stamped so that `end_ms` is the moment it is emitted. A viewer's
//! `receipt - end_ms` is then exactly the main publisher's emit → receipt latency.

use axum::extract::ws::Utf8Bytes;
use emostream_protocol::synthetic::frame;
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
}

impl Synthetic {
    /// Sends every stream's frame at the end of each window until the receiver is dropped. A
    /// window that ends while the process is busy is sent late rather than skipped: consecutive
    /// epochs are what viewers' gap checks rely on.
    pub async fn run(self, frames: mpsc::Sender<Utf8Bytes>) {
        let every_ms = self.every_ms.max(1);
        let mut epoch = unix_ms() / every_ms;
        loop {
            let end_ms = (epoch + 1) * every_ms;
            let wait_ms = end_ms.saturating_sub(unix_ms());
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            for stream in &self.streams {
                if frames
                    .send(frame(stream, epoch, every_ms).into())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            epoch += 1;
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
    async fn one_frame_per_stream_per_window_in_epoch_order() {
        let (tx, mut rx) = mpsc::channel(8);
        let source = Synthetic {
            every_ms: 50,
            streams: vec!["a".into(), "b".into()],
        };
        let running = tokio::spawn(source.run(tx));
        let mut got = Vec::new();
        for _ in 0..4 {
            let text = rx.recv().await.unwrap();
            let f: EpochFrame = serde_json::from_str(&text).unwrap();
            got.push((f.stream, f.epoch));
        }
        drop(rx);
        running.await.unwrap();
        assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("a", "b"));
        assert_eq!(got[0].1, got[1].1);
        assert_eq!(got[2].1, got[0].1 + 1);
        assert_eq!(got[3], ("b".into(), got[0].1 + 1));
    }
}
