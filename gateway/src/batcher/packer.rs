//! The packer task: adds submissions to batches, sends the due ones, and passes each record's
//! answer back to every request whose events it holds.

use super::batches::{BatchKey, Batches, OpenBatch};
use super::Submission;
use crate::metrics::Metrics;
use crate::producer::{classify, Failure, Health, Kafka};
use crate::GatewayError;
use emostream_protocol::epoch::{epoch_bounds, epoch_of, now_ms};
use rdkafka::producer::{FutureRecord, Producer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The answer to requests whose record failed once the producer has failed for good: the
/// gateway is draining, a retry after the restart can pass.
pub(super) const PRODUCER_FAILED: GatewayError = GatewayError::BrokerUnavailable {
    reason: "the Kafka producer failed for good; the gateway is restarting, retry shortly",
};

/// The answer to every request once the packer task is gone (a panic): the gateway is
/// draining to exit, a retry after the restart can pass.
pub(super) const BATCHER_STOPPED: GatewayError = GatewayError::BrokerUnavailable {
    reason: "the gateway's batcher stopped; the gateway is restarting, retry shortly",
};

pub(super) struct Packer {
    pub(super) producer: Kafka,
    pub(super) topic: String,
    pub(super) batches: Batches,
    /// Each task resolves to its record's partition once the broker has answered.
    pub(super) in_flight: JoinSet<i32>,
    pub(super) health: Arc<Health>,
    pub(super) metrics: Arc<Metrics>,
}

impl Packer {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Submission>,
        flush_every: Duration,
        window_ms: u64,
    ) {
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let epoch_end = tokio::time::sleep(until_epoch_end(window_ms));
        tokio::pin!(epoch_end);
        loop {
            tokio::select! {
                submission = rx.recv() => match submission {
                    Some(s) => self.add(s),
                    None => break,
                },
                // Flushing everything each tick bounds a batch's age by `flush_ms`.
                _ = tick.tick() => self.flush_all(),
                // An epoch's batches leave at its end, not up to `flush_ms` later: its last
                // record then trails its end by one broker round trip, not a flush interval,
                // and the dataflow can close it that much sooner (`allowed_lateness_ms` covers
                // clock skew and the round trip only; docs/contracts.md, "Time and epochs").
                () = &mut epoch_end => {
                    self.flush_ended(epoch_of(now_ms(), window_ms));
                    epoch_end.as_mut().reset(tokio::time::Instant::now() + until_epoch_end(window_ms));
                }
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    let partition = done.expect("a delivery task does not panic");
                    self.acknowledged(partition);
                }
            }
        }
        self.flush_all();
        while self.in_flight.join_next().await.is_some() {}
        // Every record has been acknowledged or failed by now; this only drains librdkafka's own
        // bookkeeping, so it blocks for a moment at most.
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    }

    fn add(&mut self, s: Submission) {
        if let Some((key, batch)) = self.batches.room_for(&s) {
            self.send(key, batch);
        }
        if let Some((key, batch)) = self.batches.add(s) {
            self.send(key, batch);
        }
    }

    fn acknowledged(&mut self, partition: i32) {
        for (key, batch) in self.batches.acknowledged(partition) {
            self.send(key, batch);
        }
    }

    fn flush_ended(&mut self, epoch: u64) {
        for (key, batch) in self.batches.take_ended(epoch) {
            self.send(key, batch);
        }
    }

    fn flush_all(&mut self) {
        for (key, batch) in self.batches.take_all() {
            self.send(key, batch);
        }
    }

    fn send(&mut self, key: BatchKey, batch: OpenBatch) {
        let record = FutureRecord::to(&self.topic)
            .partition(key.partition)
            .key(key.stream.as_bytes())
            .payload(&batch.lines)
            .timestamp(batch.newest_recv_ms as i64);
        let OpenBatch {
            events, acks, held, ..
        } = batch;
        let partition = key.partition;
        match self.producer.send_result(record) {
            Ok(delivery) => {
                self.batches.sent(partition);
                let (health, metrics) = (Arc::clone(&self.health), Arc::clone(&self.metrics));
                let producer = self.producer.clone();
                let sent = Instant::now();
                self.in_flight.spawn(async move {
                    let outcome = match delivery.await {
                        Ok(Ok(_)) => {
                            metrics.broker_ack(sent.elapsed());
                            Ok(())
                        }
                        // After a fatal error librdkafka purges the queued records (as
                        // retriable errors): they are refused for the same reason.
                        Ok(Err(_)) if fatal(&producer, &health) => Err(PRODUCER_FAILED),
                        Ok(Err((e, _))) => match classify(&e) {
                            Failure::Retriable => {
                                tracing::warn!(error = %e, events, "broker did not acknowledge a batch");
                                health.set_down();
                                Err(GatewayError::BrokerUnavailable {
                                    reason: "broker did not acknowledge, retry shortly",
                                })
                            }
                            Failure::Permanent(reason) => {
                                tracing::error!(error = %e, events, "broker refused a batch");
                                Err(GatewayError::RecordRefused { reason })
                            }
                            Failure::Fatal => {
                                health.set_fatal(&e.to_string());
                                Err(PRODUCER_FAILED)
                            }
                        },
                        Err(_) => {
                            health.set_down();
                            Err(GatewayError::BrokerUnavailable {
                                reason: "producer stopped",
                            })
                        }
                    };
                    if outcome.is_err() {
                        metrics.undelivered(events as u64);
                    }
                    for ack in acks {
                        let _ = ack.send(outcome.clone());
                    }
                    // The budget is returned only now: until here these events were in memory.
                    drop(held);
                    partition
                });
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, events, "producer refused a batch");
                self.metrics.undelivered(events as u64);
                let refusal = match classify(&e) {
                    _ if fatal(&self.producer, &self.health) => PRODUCER_FAILED,
                    Failure::Retriable => GatewayError::Overloaded {
                        reason: "producer queue full, retry shortly",
                    },
                    Failure::Permanent(reason) => GatewayError::RecordRefused { reason },
                    Failure::Fatal => {
                        self.health.set_fatal(&e.to_string());
                        PRODUCER_FAILED
                    }
                };
                for ack in acks {
                    let _ = ack.send(Err(refusal.clone()));
                }
            }
        }
    }
}

/// Whether the producer has failed for good (librdkafka's fatal error), recorded in `health`.
fn fatal(producer: &Kafka, health: &Health) -> bool {
    if let Some((code, reason)) = producer.client().fatal_error() {
        health.set_fatal(&format!("{code:?}: {reason}"));
    }
    health.fatal().is_some()
}

/// How long until the current epoch ends on the wall clock (the receive clock of every tap);
/// never zero, so a timer that fires a moment early waits for the end rather than spinning.
fn until_epoch_end(window_ms: u64) -> Duration {
    let now = now_ms();
    let (_, end) = epoch_bounds(epoch_of(now, window_ms), window_ms);
    Duration::from_millis((end - now).max(1))
}
