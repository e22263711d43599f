//! `emostream-supervisor` (run as `scripts/run_workers.sh`): starts this host's timely processes
//! of cluster.toml and supervises them (see the crate documentation).

use clap::Parser;
use emostream_protocol::shutdown::shutdown_signal;
use emostream_supervisor::{exit, plan, supervise, Args, Backoff, Plan};

fn main() {
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
    match runtime.block_on(supervise::run(&plan, Backoff::default(), shutdown_signal())) {
        Ok(ending) => std::process::exit(ending.code()),
        Err(e) => {
            supervise::log(&e.to_string());
            std::process::exit(2);
        }
    }
}
