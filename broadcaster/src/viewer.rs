//! One task per viewer socket: the join replay, then the stream's live frames in order.
//!
//! A viewer reads from its own `broadcast::Receiver`, so the hub never waits for it. One that
//! falls [`LIVE_CAPACITY`](crate::hub::LIVE_CAPACITY) frames behind skips to the newest frame and
//! is told how many it missed, so it can reconnect with `since` if it wants the gap.

use crate::hub::Frame;
use crate::socket::{self, going_away, WriteFailed};
use crate::tasks::Stop;
use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, Stream, StreamExt};
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Idle viewers are pinged this often (Centrifugo's interval), which keeps proxies from timing out
/// the connection; a viewer that answers nothing by the next ping is gone.
pub const PING_EVERY: Duration = Duration::from_secs(25);

/// What the live feed has for a viewer next.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Frame(Frame),
    /// The viewer fell behind: `missed` frames are skipped and `newest` comes next.
    Lagged {
        missed: u64,
        newest: Option<Frame>,
    },
}

/// A viewer's live feed, conflating to the newest frame whenever it lags.
pub struct Feed {
    live: broadcast::Receiver<Frame>,
}

impl Feed {
    pub fn new(live: broadcast::Receiver<Frame>) -> Self {
        Self { live }
    }

    /// `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        match self.live.recv().await {
            Ok(frame) => Some(Delivery::Frame(frame)),
            Err(RecvError::Closed) => None,
            Err(RecvError::Lagged(skipped)) => {
                // The receiver now points at the oldest frame still buffered; newest wins, so
                // everything buffered but the last is skipped too.
                let mut missed = skipped;
                let mut newest = None;
                loop {
                    match self.live.try_recv() {
                        Ok(frame) => {
                            if newest.replace(frame).is_some() {
                                missed += 1;
                            }
                        }
                        Err(TryRecvError::Lagged(n)) => missed += n,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                Some(Delivery::Lagged { missed, newest })
            }
        }
    }
}

/// The notice a lagging viewer gets before the newest frame.
pub fn lagged_notice(missed: u64) -> Utf8Bytes {
    format!(r#"{{"type":"lagged","missed":{missed}}}"#).into()
}

/// Serves one viewer until it leaves, stops answering, or the role shuts down. Generic over the
/// socket's halves so that tests can drive it with channels.
pub async fn serve<W, R>(mut tx: W, mut rx: R, replay: Vec<Frame>, mut feed: Feed, mut stop: Stop)
where
    W: Sink<Message> + Unpin,
    W::Error: std::fmt::Display,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    if let Err(e) =
        socket::send_all(&mut tx, replay.into_iter().map(|f| Message::Text(f.text))).await
    {
        tracing::debug!(error = %e, "viewer dropped during replay");
        return;
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut awaiting_pong = false;
    loop {
        let written: Result<(), WriteFailed> = tokio::select! {
            delivery = feed.next() => match delivery {
                Some(Delivery::Frame(frame)) => socket::send(&mut tx, Message::Text(frame.text)).await,
                Some(Delivery::Lagged { missed, newest }) => {
                    tracing::debug!(missed, "viewer lagged");
                    let notice = Message::Text(lagged_notice(missed));
                    let newest = newest.map(|f| Message::Text(f.text));
                    socket::send_all(&mut tx, std::iter::once(notice).chain(newest)).await
                }
                None => break,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                // Pongs, and anything else the viewer says, prove it is still there.
                Some(Ok(_)) => {
                    awaiting_pong = false;
                    Ok(())
                }
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    tracing::debug!("viewer stopped answering pings");
                    break;
                }
                awaiting_pong = true;
                socket::send(&mut tx, Message::Ping(Bytes::new())).await
            }
            _ = stop.stopped() => {
                socket::close(&mut tx, going_away()).await;
                break;
            }
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "viewer dropped");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, LIVE_CAPACITY};
    use crate::tasks::Tasks;
    use tokio::sync::mpsc;

    fn frame(epoch: u64) -> Utf8Bytes {
        format!(r#"{{"type":"epoch","stream":"main","epoch":{epoch}}}"#).into()
    }

    #[tokio::test]
    async fn a_lagging_feed_skips_to_the_newest_frame_and_counts_the_rest() {
        let hub = Hub::new(60);
        let (_, live) = hub.join("main", None);
        let mut feed = Feed::new(live);
        let published = LIVE_CAPACITY as u64 + 5;
        for e in 1..=published {
            hub.publish(frame(e)).unwrap();
        }
        let newest = Frame {
            epoch: published,
            text: frame(published),
        };
        assert_eq!(
            feed.next().await,
            Some(Delivery::Lagged {
                missed: published - 1,
                newest: Some(newest)
            })
        );

        hub.publish(frame(published + 1)).unwrap();
        assert_eq!(
            feed.next().await,
            Some(Delivery::Frame(Frame {
                epoch: published + 1,
                text: frame(published + 1)
            }))
        );
    }

    #[tokio::test]
    async fn a_viewer_gets_its_replay_then_live_frames_then_a_close() {
        let hub = Hub::new(60);
        for e in [1, 2, 3] {
            hub.publish(frame(e)).unwrap();
        }
        let (replay, live) = hub.join("main", Some(1));
        let (sent_tx, mut sent) = mpsc::unbounded_channel::<Message>();
        let sink = Box::pin(futures_util::sink::unfold(
            sent_tx,
            |tx, msg: Message| async move {
                tx.send(msg).map_err(|_| "test dropped its end")?;
                Ok::<_, &str>(tx)
            },
        ));
        let tasks = Tasks::new();
        let viewer = tokio::spawn(serve(
            sink,
            futures_util::stream::pending(),
            replay,
            Feed::new(live),
            tasks.stop_handle(),
        ));

        assert_eq!(sent.recv().await, Some(Message::Text(frame(2))));
        assert_eq!(sent.recv().await, Some(Message::Text(frame(3))));
        hub.publish(frame(3)).unwrap();
        hub.publish(frame(4)).unwrap();
        assert_eq!(sent.recv().await, Some(Message::Text(frame(4))));

        tasks.stop().await;
        viewer.await.unwrap();
        assert_eq!(sent.recv().await, Some(going_away()));
        assert_eq!(sent.recv().await, None);
    }
}
