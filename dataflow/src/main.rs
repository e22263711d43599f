//! `emostream-dataflow`: one process of the timely cluster.
//!
//! ```text
//! emostream-dataflow --config cluster.toml -n 4 -p 0 -w 1 -h hostfile   # process 0 of 4
//! emostream-dataflow --config cluster.toml --print-hostfile              # the hostfile lines
//! ```
//! Timely's own flags (`-n`, `-p`, `-w`, `-h`, …) pass through unchanged.

use emostream_dataflow::metrics::{self, Metrics};
use emostream_protocol::Config;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(e) = run() {
        eprintln!("emostream-dataflow: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut options = getopts::Options::new();
    timely::Config::install_options(&mut options);
    options.optopt(
        "c",
        "config",
        "cluster configuration (default cluster.toml)",
        "FILE",
    );
    options.optflag(
        "",
        "print-hostfile",
        "print timely's hostfile from the configuration and exit",
    );
    let matches = options
        .parse(std::env::args().skip(1))
        .map_err(|e| e.to_string())?;
    let path = matches
        .opt_str("config")
        .unwrap_or_else(|| "cluster.toml".into());
    let config = Config::load(path.as_ref()).map_err(|e| e.to_string())?;
    if matches.opt_present("print-hostfile") {
        for process in &config.dataflow.processes {
            println!("{process}");
        }
        return Ok(());
    }
    // Threads per process come from the configuration unless `-w` says otherwise.
    let matches = if matches.opt_present("w") {
        matches
    } else {
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        args.extend(["-w".to_string(), config.dataflow.threads.to_string()]);
        options.parse(args).map_err(|e| e.to_string())?
    };
    let timely_config = timely::Config::from_matches(&matches)?;

    // SIGTERM/Ctrl-C only set a flag: the sources see it at their next activation and stop.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    let metrics = Arc::new(Metrics::default());
    let process: usize = matches
        .opt_str("p")
        .map_or(Ok(0), |p| p.parse())
        .map_err(|e| format!("-p: {e}"))?;
    if let Some(addr) = config.dataflow.metrics.get(process) {
        metrics::serve(addr, Arc::clone(&metrics))
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
    }
    let guards = timely::execute(timely_config, move |worker| {
        emostream_dataflow::run_worker(worker, &config, Arc::clone(&stop), Arc::clone(&metrics))
    })?;
    for result in guards.join() {
        result??;
    }
    Ok(())
}
