//! `emostream-supervisor` (run as `scripts/run_workers.sh`): starts this host's timely processes
//! of cluster.toml and supervises them (see the crate documentation).

use clap::Parser;
use emostream_supervisor::{exit, plan, supervise, Args, Backoff, Plan};
use tokio::signal::unix::{signal, SignalKind};

fn main() {
    // Before anything installs a handler: whether this process started with SIGINT ignored.
    let interrupt_ignored = started_ignoring(libc::SIGINT);
    let args = Args::parse();
    // The supervisor reads the configuration its processes will read (file and environment):
    // an error in it is reported once, here, instead of by every start of every process.
    let config = args.config.load().unwrap_or_else(|e| {
        supervise::log(&e.to_string());
        std::process::exit(exit::CONFIG);
    });
    let plan = Plan::new(args, &config, plan::is_local).unwrap_or_else(|e| {
        supervise::log(&e);
        std::process::exit(2);
    });
    // One thread, this one: the supervisor only waits on children, signals and timers, and a
    // process's PR_SET_PDEATHSIG (supervise.rs) fires when the thread that spawned it ends, so
    // that thread must live as long as the supervisor.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime builds on any host");
    let shutdown = shutdown(interrupt_ignored);
    match runtime.block_on(supervise::run(&plan, Backoff::default(), shutdown)) {
        Ok(ending) => std::process::exit(ending.code()),
        Err(e) => {
            supervise::log(&e.to_string());
            std::process::exit(2);
        }
    }
}

/// Whether `signal` was ignored when this process started (an inherited `SIG_IGN`).
fn started_ignoring(signal: libc::c_int) -> bool {
    // SAFETY: sigaction(2) with no new action only reads the current one into `current`.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

/// Resolves on SIGTERM, and on SIGINT unless the supervisor started with SIGINT ignored: a
/// script's background job ignores the terminal's Ctrl-C, as shells make them, and its script
/// stops it with SIGTERM in its own order (up.sh does).
async fn shutdown(interrupt_ignored: bool) {
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    if interrupt_ignored {
        term.recv().await;
        return;
    }
    let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
}
