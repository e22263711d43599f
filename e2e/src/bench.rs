//! What the end-to-end benchmarks (`emostream-bench-e2e`, `emostream-bench-platform`) share:
//! running until done or signalled, and the swarms' descriptor arithmetic.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

/// Descriptors a swarm keeps for itself besides its viewers (as scripts/bench_fanout.sh).
pub const SWARM_RESERVE: u64 = 1100;

/// Runs `run` on a one-thread runtime until it ends or Ctrl-C / SIGTERM comes: then its future is
/// dropped, and with it the system (stopped in order, the broker and its PostgreSQL last) and
/// the swarms (killed).
pub fn until_signalled(run: impl Future<Output = ExitCode>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime at start");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            code = run => code,
            _ = tokio::signal::ctrl_c() => { eprintln!("interrupted: everything this run started was stopped"); ExitCode::from(130) }
            _ = term.recv() => { eprintln!("terminated: everything this run started was stopped"); ExitCode::from(143) }
        }
    })
}

/// The hard limit on this process's open files: how many viewers one swarm may hold.
pub fn descriptor_hard_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}

/// The last ten lines of a log, for a failure's message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Waits until every swarm (`children[s]`, logging to `work/swarm-{s}.err`) has said
/// `ALL CONNECTED`, and returns those lines, one per swarm; `None` (after saying why) when a
/// swarm exits first or `limit` passes.
pub async fn swarms_connected(
    children: &mut [tokio::process::Child],
    work: &Path,
    limit: std::time::Duration,
) -> Option<Vec<String>> {
    let log = |s: usize| work.join(format!("swarm-{s}.err"));
    let connected = |s: usize| {
        let text = std::fs::read_to_string(log(s)).unwrap_or_default();
        (text.lines())
            .find(|l| l.starts_with("ALL CONNECTED"))
            .map(str::to_owned)
    };
    let deadline = std::time::Instant::now() + limit;
    loop {
        let lines: Vec<Option<String>> = (0..children.len()).map(connected).collect();
        if lines.iter().all(Option::is_some) {
            return Some(lines.into_iter().flatten().collect());
        }
        for (s, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("swarm {s} exited ({status}) before connecting:");
                eprintln!("{}", tail(&log(s)));
                return None;
            }
        }
        if std::time::Instant::now() > deadline {
            let ready = lines.iter().filter(|l| l.is_some()).count();
            eprintln!(
                "only {ready} of {} swarms connected within {limit:?}",
                children.len()
            );
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
