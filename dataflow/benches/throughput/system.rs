//! The system under test: a dataflow cluster under `scripts/run_workers.sh`, the frames it
//! publishes, and the catch-up measurement (spawn to the last preloaded epoch published).

use crate::load::Preload;
use crate::report::{group, Cpu, Row};
use crate::{check_interrupted, Bench, EVENTS_TOPIC};
use emostream_protocol::wire::EpochFrame;
use emostream_testkit::procfs::{self, cpu_secs};
use emostream_testkit::{now_ms, workers, Process};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// A timely cluster under `scripts/run_workers.sh`; SIGTERM (then SIGKILL) on drop.
pub struct Workers {
    supervisor: Process,
    config: PathBuf,
    log: PathBuf,
}

impl Workers {
    pub fn start(processes: usize, config: &Path, log: &Path) -> Workers {
        Workers {
            supervisor: Process::spawn(
                "run_workers.sh",
                &mut workers::command(processes, config),
                log,
            ),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    /// The running dataflow processes of this cluster (children of the supervisor).
    fn pids(&self) -> Vec<u32> {
        workers::pids(&self.config)
    }

    /// The supervisor's exit status, once it has exited (it should not before we stop it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.supervisor.try_exit()
    }

    /// How often the supervisor restarted the cluster because a process died.
    pub fn restarts(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map_or(0, |l| l.matches("restarting the whole cluster").count())
    }

    /// User + system CPU seconds of the dataflow processes so far.
    pub fn cpu_secs(&self) -> f64 {
        self.pids().into_iter().map(procfs::cpu_secs).sum()
    }

    /// Waits until each of the `processes` has logged its worker starting: timely runs a worker
    /// only once every process of the cluster has connected, so the cluster is up.
    pub fn wait_connected(&mut self, processes: usize, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            check_interrupted();
            if let Some(status) = self.exited() {
                panic!(
                    "run_workers.sh exited ({status}); see {}",
                    self.log.display()
                );
            }
            let started = std::fs::read_to_string(&self.log)
                .map_or(0, |l| l.matches("worker starting").count());
            if started >= processes {
                return;
            }
            assert!(
                Instant::now() < until,
                "{started} of {processes} workers started in {deadline:?}; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let leftovers = self.pids();
        // SIGTERM to the supervisor: it stops its processes (TERM, then KILL after 10 s).
        self.supervisor.stop(Duration::from_secs(15));
        for pid in leftovers {
            // Only if the supervisor did not get to it (the pid is re-checked by its cmdline).
            if self.pids().contains(&pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Reads an epochs topic from the beginning: every frame with the wall time it was consumed.
pub struct FrameReader {
    consumer: BaseConsumer,
}

impl FrameReader {
    pub fn new(brokers: &str, topic: &str) -> FrameReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "emostream-bench-frames")
            .set("enable.auto.commit", "false")
            // A frame should reach the bench as soon as it is written: short fetch waits.
            .set("fetch.wait.max.ms", "5")
            .create()
            .expect("a consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..2 {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("an assignment");
        }
        consumer.assign(&assignment).expect("assign");
        FrameReader { consumer }
    }

    pub fn poll(&self, timeout: Duration) -> Vec<(EpochFrame, u64)> {
        let mut out = Vec::new();
        let mut wait = timeout;
        while let Some(result) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            let msg = result.unwrap_or_else(|e| panic!("frames consumer: {e}"));
            let at = now_ms();
            let payload = msg.payload().expect("a frame has a payload");
            let frame: EpochFrame = serde_json::from_slice(payload)
                .unwrap_or_else(|e| panic!("not an epoch frame ({e}): {payload:?}"));
            out.push((frame, at));
        }
        out
    }
}

impl Bench {
    /// (b) The dataflow with `processes` processes, from spawn to the last preloaded epoch
    /// of every stream consumed from its epochs topic.
    pub(crate) fn dataflow_catch_up(&self, processes: usize, preload: &Preload) -> Row {
        let suffix = format!("{processes}p");
        let config = self.config(&format!("run-{suffix}"), EVENTS_TOPIC, &suffix, processes);
        let epochs_topic = format!("bench-epochs-{suffix}");
        let frames = FrameReader::new(&self.broker.address(), &epochs_topic);
        let (broker_cpu0, own_cpu0) = (self.broker.cpu_secs(), cpu_secs(std::process::id()));
        let idle0 = Cpu::idle_mark();
        let log = self.dir.join(format!("workers-{suffix}.log"));
        let started = Instant::now();
        let mut workers = Workers::start(processes, &config, &log);

        let expected = self.args.events;
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        let mut last: HashMap<String, u64> = HashMap::new();
        let (mut total, mut duplicates, mut late) = (0u64, 0u64, 0u64);
        let deadline = started + self.args.deadline();
        let mut cpu = 0.0;
        let mut next_report = Instant::now() + Duration::from_secs(10);
        loop {
            check_interrupted();
            if Instant::now() >= deadline {
                panic!(
                    "dataflow ({processes} processes) did not publish every epoch in {:?}: \
                     {total} of {expected} taps in {} frames, {} cluster restarts; see {}",
                    self.args.deadline(),
                    seen.len(),
                    workers.restarts(),
                    log.display()
                );
            }
            if let Some(status) = workers.exited() {
                panic!("run_workers.sh exited ({status}); see {}", log.display());
            }
            // CPU is sampled while the processes live (they are gone after the drop).
            cpu = workers.cpu_secs().max(cpu);
            if Instant::now() >= next_report {
                eprintln!(
                    "  [{processes}p] {:.0} s: {} frames, {} of {} taps",
                    started.elapsed().as_secs_f64(),
                    seen.len(),
                    group(total),
                    group(expected)
                );
                next_report += Duration::from_secs(10);
            }
            for (frame, _) in frames.poll(Duration::from_millis(50)) {
                if !seen.insert((frame.stream.clone(), frame.epoch)) {
                    duplicates += 1;
                    continue;
                }
                total += frame.total;
                late += frame.late;
                let entry = last.entry(frame.stream.clone()).or_default();
                *entry = (*entry).max(frame.epoch);
            }
            let done = self
                .streams
                .iter()
                .all(|s| last.get(s).is_some_and(|e| *e >= preload.last_epoch));
            if done && total >= expected {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let idle = Cpu::idle_since(idle0);
        let broker_cpu = self.broker.cpu_secs() - broker_cpu0;
        let own_cpu = cpu_secs(std::process::id()) - own_cpu0;
        cpu = workers.cpu_secs().max(cpu);
        let restarts = workers.restarts();
        drop(workers);
        assert_eq!(
            restarts,
            0,
            "a dataflow process died; see {}",
            log.display()
        );
        assert_eq!(
            total, expected,
            "the frames' totals must add up to the preloaded taps"
        );
        assert_eq!(duplicates, 0, "a fresh run published an epoch twice");
        assert_eq!(
            seen.len() as u64,
            self.args.streams * (preload.last_epoch - preload.first_epoch + 1),
            "one frame per (stream, epoch)"
        );
        if late > 0 {
            eprintln!("  [{processes}p] note: {late} taps reported late");
        }
        Row {
            name: format!(
                "dataflow, {processes} process{}",
                if processes == 1 { "" } else { "es" }
            ),
            secs,
            events: total,
            bytes: Some(preload.bytes),
            cpu: Cpu {
                reader: cpu,
                broker: broker_cpu,
                bench: own_cpu,
                idle,
            },
        }
    }
}
