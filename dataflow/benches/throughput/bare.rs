//! The limit the dataflow is compared with: one bare rdkafka consumer reading the preloaded
//! topic to its end and counting newlines, doing no other work.

use crate::load::Preload;
use crate::report::{Cpu, Row};
use crate::{check_interrupted, Bench, EVENTS_TOPIC};
use emostream_testkit::procfs::cpu_secs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl Bench {
    /// (a) The best of two bare passes: the first also warms the broker's page cache and SQLite,
    /// which would otherwise flatter the dataflow runs that follow it.
    pub(crate) fn bare_consume(&self, preload: &Preload) -> Row {
        let passes = [self.bare_pass(preload), self.bare_pass(preload)];
        eprintln!(
            "  bare passes: {:.2} s, {:.2} s (the best is shown)",
            passes[0].secs, passes[1].secs
        );
        let [first, second] = passes;
        if second.secs < first.secs {
            second
        } else {
            first
        }
    }

    /// One BaseConsumer on every partition from the beginning to the high watermarks.
    fn bare_pass(&self, preload: &Preload) -> Row {
        let (broker_cpu0, own_cpu0) = (self.broker.cpu_secs(), cpu_secs(std::process::id()));
        let idle0 = Cpu::idle_mark();
        let started = Instant::now();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.address())
            .set("group.id", "emostream-bench-bare")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let mut high = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in 0..self.args.partitions as i32 {
            let (_, h) = consumer
                .fetch_watermarks(EVENTS_TOPIC, p, Duration::from_secs(10))
                .expect("high watermarks");
            if h > 0 {
                high.insert(p, h);
                assignment
                    .add_partition_offset(EVENTS_TOPIC, p, Offset::Beginning)
                    .expect("an assignment");
            }
        }
        consumer.assign(&assignment).expect("assign");
        let (mut events, mut bytes, mut records) = (0u64, 0u64, 0u64);
        let deadline = started + self.args.deadline();
        while !high.is_empty() {
            check_interrupted();
            assert!(Instant::now() < deadline, "bare consume timed out");
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(msg)) => {
                    if let Some(payload) = msg.payload() {
                        events += payload.iter().filter(|b| **b == b'\n').count() as u64;
                        bytes += payload.len() as u64;
                    }
                    records += 1;
                    if high.get(&msg.partition()) == Some(&(msg.offset() + 1)) {
                        high.remove(&msg.partition());
                    }
                }
                Some(Err(e)) => panic!("bare consumer: {e}"),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(records, preload.records, "bare consumer records");
        assert_eq!(events, self.args.events, "bare consumer taps");
        Row {
            name: "bare rdkafka consume".into(),
            secs,
            events,
            bytes: Some(bytes),
            cpu: Cpu {
                reader: cpu_secs(std::process::id()) - own_cpu0,
                broker: self.broker.cpu_secs() - broker_cpu0,
                bench: 0.0,
                idle: Cpu::idle_since(idle0),
            },
        }
    }
}
