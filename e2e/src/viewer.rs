//! A WebSocket viewer that records every text frame with the wall-clock time it arrived.

use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// One received frame: its text and its arrival time (Unix ms).
#[derive(Debug, Clone)]
pub struct Received {
    pub text: String,
    pub at_ms: u64,
}

pub struct Viewer {
    pub url: String,
    frames: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Viewer {
    /// Connects to `ws://{subscriber}/v1/streams/{stream}/ws` and records until dropped.
    pub async fn connect(subscriber_url: &str, stream: &str) -> Viewer {
        let url = format!(
            "{}/v1/streams/{stream}/ws",
            subscriber_url.trim_end_matches('/')
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&frames);
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let at_ms = emostream_testkit::now_ms();
                    sink.lock().expect("viewer lock").push(Received {
                        text: text.to_string(),
                        at_ms,
                    });
                }
            }
        });
        Viewer { url, frames, task }
    }

    pub fn frames(&self) -> Vec<Received> {
        self.frames.lock().expect("viewer lock").clone()
    }

    /// The `{"type":"epoch",…}` frames only: viewers also receive trend frames (`trending`,
    /// `sentiment`, `popular`) and lag notices on the same socket.
    pub fn epoch_frames(&self) -> Vec<Received> {
        self.frames()
            .into_iter()
            .filter(|r| {
                serde_json::from_str::<serde_json::Value>(&r.text)
                    .unwrap_or_else(|e| {
                        panic!(
                            "{} sent a frame that is not JSON ({e}): {}",
                            self.url, r.text
                        )
                    })
                    .get("type")
                    .and_then(|t| t.as_str())
                    == Some("epoch")
            })
            .collect()
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
