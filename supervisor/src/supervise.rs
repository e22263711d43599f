//! The supervision loop: start this host's processes, wait until one exits or a signal comes,
//! stop the others, then restart after a backoff or end.

use crate::{exit, Backoff, Plan};
use futures_util::future::select_all;
use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long the processes get to stop after SIGTERM: enough for a process to publish the epochs
/// that have closed and record them in the progress topic; whatever still runs is killed.
pub const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Why the supervisor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM or Ctrl-C: every process was stopped.
    Stopped,
    /// A process was fenced by another cluster on the same topics.
    Fenced,
    /// A process found the configuration unworkable.
    Misconfigured,
    /// A process refused to start: its progress topic or the events it must resume from were
    /// lost.
    Refused,
}

impl Ending {
    /// The supervisor's exit status: the process's own, so that what runs the supervisor
    /// (systemd, up.sh, a test) can tell the two apart.
    pub fn code(self) -> i32 {
        match self {
            Ending::Stopped => 0,
            Ending::Fenced => exit::FENCED,
            Ending::Misconfigured => exit::CONFIG,
            Ending::Refused => exit::REFUSED,
        }
    }
}

/// One running dataflow process.
struct Worker {
    index: usize,
    child: Child,
}

/// Supervises `plan`'s processes until `shutdown` resolves or a process ends in a way a restart
/// cannot mend. An error is a process that could not be spawned at all.
pub async fn run(
    plan: &Plan,
    mut backoff: Backoff,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Ending> {
    let mut shutdown = std::pin::pin!(shutdown);
    let total = plan.processes;
    for restart in 1.. {
        let started = Instant::now();
        let mut workers = Vec::with_capacity(plan.mine.len());
        for &index in &plan.mine {
            let child = match spawn(plan, index) {
                Ok(child) => child,
                Err(e) => {
                    stop(workers).await;
                    return Err(e);
                }
            };
            log(&format!(
                "process {index} of {total} started (pid {})",
                child.id().unwrap_or_default()
            ));
            workers.push(Worker { index, child });
        }
        // Shutdown first: Ctrl-C reaches the processes too, and their exits are not crashes.
        let (index, status) = tokio::select! {
            biased;
            () = &mut shutdown => {
                log("stopping");
                stop(workers).await;
                return Ok(Ending::Stopped);
            }
            exited = first_exit(&mut workers) => exited,
        };
        // How long the cluster ran, not counting the stop of the others.
        let ran = started.elapsed();
        let others = stop(workers).await;
        // A fenced or misconfigured process may not be the first to exit (its peers' links
        // reset as it goes): its status decides, whichever process exited first.
        let telling = [exit::FENCED, exit::CONFIG, exit::REFUSED];
        let (index, status) = std::iter::once((index, status))
            .chain(others)
            .find(|(_, s)| s.code().is_some_and(|c| telling.contains(&c)))
            .unwrap_or((index, status));
        match status.code() {
            Some(exit::FENCED) => {
                log("fenced: another cluster is publishing into these topics; stopping, not restarting");
                return Ok(Ending::Fenced);
            }
            Some(exit::CONFIG) => {
                log(&format!(
                    "process {index} found the configuration unworkable (its error is above); \
                     stopping, not restarting"
                ));
                return Ok(Ending::Misconfigured);
            }
            Some(exit::REFUSED) => {
                log(&format!(
                    "process {index} refused to start (its error above says why and how to \
                     recover); stopping, not restarting"
                ));
                return Ok(Ending::Refused);
            }
            _ => {}
        }
        let delay = backoff.after(ran);
        log(&format!(
            "process {index} exited ({status}) after {:.1} s; restarting the whole cluster in {} s \
             (restart {restart})",
            ran.as_secs_f64(),
            delay.as_secs_f64()
        ));
        tokio::select! {
            biased;
            () = &mut shutdown => {
                log("stopping");
                return Ok(Ending::Stopped);
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
    unreachable!("the restarts are counted without end")
}

/// Every line the supervisor writes goes to stderr, beside its processes' own output. A stderr
/// that is gone (a closed pipe, as after Ctrl-C on `run_workers.sh | tee`) is no reason to stop
/// supervising, unlike eprintln!'s panic.
pub fn log(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "run_workers: {line}");
}

fn spawn(plan: &Plan, index: usize) -> std::io::Result<Child> {
    let mut command = Command::new(&plan.dataflow);
    command.args(plan.args(index)).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // A supervisor killed outright (SIGKILL, a crash) still stops its processes: they
            // get the SIGTERM it could not send, instead of running on unsupervised.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", plan.dataflow.display())))
}

/// The first process to exit, and how.
async fn first_exit(workers: &mut [Worker]) -> (usize, ExitStatus) {
    let waits = workers.iter_mut().map(|w| {
        Box::pin(async move {
            let status = w
                .child
                .wait()
                .await
                .expect("waiting on a child this process spawned");
            (w.index, status)
        })
    });
    select_all(waits).await.0
}

/// SIGTERM to every process still running, then SIGKILL to those still running after
/// [`STOP_WITHIN`]; returns once every one has been reaped, with how each ended.
async fn stop(workers: Vec<Worker>) -> Vec<(usize, ExitStatus)> {
    for worker in &workers {
        // None once reaped: a pid that may since belong to another process is never signalled.
        if let Some(pid) = worker.child.id() {
            // SAFETY: kill(2) with a pid of our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_WITHIN;
    let mut ended = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let status = match tokio::time::timeout_at(deadline, worker.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                log(&format!(
                    "process {} still running {} s after SIGTERM; killing it",
                    worker.index,
                    STOP_WITHIN.as_secs()
                ));
                // SIGKILL, then reap.
                let _ = worker.child.start_kill();
                worker.child.wait().await
            }
        };
        let status = status.expect("waiting on a child this process spawned");
        ended.push((worker.index, status));
    }
    ended
}
