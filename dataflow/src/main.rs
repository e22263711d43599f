//! `emostream-dataflow`: one process of the timely cluster.
//!
//! ```text
//! emostream-dataflow --config cluster.toml -n 4 -p 0 -w 1   # process 0 of 4, dataflow.processes
//! emostream-dataflow --config cluster.toml -n 4 -p 0 -h hostfile   # line i of hostfile: process i
//! ```
//! It exits 2 on a failure a restart may mend, and with `emostream_protocol::exit`'s statuses
//! when a restart cannot: 3 fenced by another cluster, 4 refused (its memory is lost or can
//! be), 78 a configuration that cannot work; 75 when it lost to its predecessor's late record
//! (restart it).
//! Timely's own flags (`-n`, `-p`, `-w`, `-h`, `-r`, `-z`, `--progress-mode`, `--idle-spin`) keep
//! the names and meanings of timely's getopts parser; clap reads them and timely's configuration
//! is built from the values.

use clap::Parser;
use emostream_dataflow::links;
use emostream_dataflow::metrics::{self, Metrics};
use emostream_protocol::config::ConfigArg;
use emostream_protocol::exit;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use timely::worker::ProgressMode;
use timely::{CommunicationConfig, WorkerConfig};

/// One process of the timely cluster: emoji-events in, closed epochs on emoji-epochs out.
#[derive(Debug, Parser)]
#[command(name = "emostream-dataflow", disable_help_flag = true)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    timely: TimelyArgs,
    /// Print help (`-h` is timely's hostfile).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Timely's flags, spelled as timely's own parser spells them.
#[derive(Debug, clap::Args)]
struct TimelyArgs {
    /// Worker threads in this process [default: dataflow.threads]
    #[arg(short = 'w', long, value_name = "NUM")]
    threads: Option<usize>,
    /// Index of this process, from 0.
    #[arg(short = 'p', long, value_name = "IDX", default_value_t = 0)]
    process: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long, value_name = "NUM", default_value_t = 1)]
    processes: usize,
    /// File whose line i is process i's host:port [default: dataflow.processes]
    #[arg(short = 'h', long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// Report connection progress.
    #[arg(short = 'r', long)]
    report: bool,
    /// Zero-copy exchange between the threads of a process.
    #[arg(short = 'z', long)]
    zerocopy: bool,
    /// Progress tracking mode: eager or demand.
    #[arg(long, value_name = "MODE", default_value = "demand")]
    progress_mode: ProgressMode,
    /// Microseconds an idle worker polls before parking.
    #[arg(long, value_name = "MICROS")]
    idle_spin: Option<u64>,
}

impl TimelyArgs {
    /// Timely's configuration, as its own `Config::from_matches` builds it; without `-h` (as
    /// `run_workers.sh` and the systemd unit start it) the addresses are the first `-n` of the
    /// configuration's `dataflow.processes`.
    fn timely_config(&self, config: &emostream_protocol::Config) -> Result<timely::Config, String> {
        let threads = self.threads.unwrap_or(config.dataflow.threads);
        let communication = if self.processes > 1 {
            let addresses = match &self.hostfile {
                Some(path) => std::io::BufReader::new(
                    std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
                )
                .lines()
                .take(self.processes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?,
                None => config.dataflow.processes.clone(),
            };
            if addresses.len() < self.processes {
                return Err(format!(
                    "{} process addresses for -n {}",
                    addresses.len(),
                    self.processes
                ));
            }
            CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses: addresses[..self.processes].to_vec(),
                report: self.report,
                zerocopy: self.zerocopy,
            }
        } else if threads > 1 && self.zerocopy {
            CommunicationConfig::ProcessBinary(threads)
        } else if threads > 1 {
            CommunicationConfig::Process(threads)
        } else {
            CommunicationConfig::Thread
        };
        let mut worker = WorkerConfig::default().progress_mode(self.progress_mode);
        if let Some(micros) = self.idle_spin {
            worker = worker.idle_spin(Duration::from_micros(micros));
        }
        emostream_dataflow::trends::held::configure(&mut worker);
        Ok(timely::Config {
            communication,
            worker,
        })
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // A worker thread that panics takes the process down at once: the other threads would wait
    // on it forever, and the supervisor restarts the cluster only when a process exits.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    // A configuration that cannot work exits with exit::CONFIG, so that no supervisor restarts
    // it into the same error; any other failure exits 2 and is restarted.
    let config = cli.config.load().unwrap_or_else(|e| {
        eprintln!("emostream-dataflow: {e}");
        std::process::exit(exit::CONFIG);
    });
    let timely_config = cli.timely.timely_config(&config).unwrap_or_else(|e| {
        eprintln!("emostream-dataflow: {e}");
        std::process::exit(exit::CONFIG);
    });
    if let Err(e) = run(&cli, config, timely_config) {
        eprintln!("emostream-dataflow: {e}");
        std::process::exit(2);
    }
}

fn run(
    cli: &Cli,
    config: emostream_protocol::Config,
    timely_config: timely::Config,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(point) = emostream_dataflow::crash::arm_from_env()? {
        tracing::warn!(point, "crash point armed (EMOSTREAM_CRASH_AT)");
    }
    if let Some(point) = emostream_dataflow::crash::hold_from_env()? {
        tracing::warn!(point, "hold point armed (EMOSTREAM_HOLD_AT)");
    }

    // SIGTERM/Ctrl-C only set a flag: the sources see it at their next activation and stop.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    let metrics = Arc::new(Metrics::default());
    emostream_dataflow::trends::held::trim_after_forgetting(Arc::clone(&metrics))
        .map_err(|e| format!("the trim thread: {e}"))?;
    if let Some(addr) = config.dataflow.metrics.get(cli.timely.process) {
        metrics::serve(addr, Arc::clone(&metrics))
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
    }
    // A cluster's links are opened by links.rs (keepalive, user timeout); the rest as timely's
    // own `execute` does it.
    let timely::Config {
        communication,
        worker: worker_config,
    } = timely_config;
    let (allocators, links) = match communication {
        CommunicationConfig::Cluster {
            threads,
            process,
            addresses,
            report,
            zerocopy,
        } => links::cluster(threads, process, addresses, report, zerocopy)?,
        local => local.try_build()?,
    };
    let guards = timely::execute::execute_from(allocators, links, worker_config, move |worker| {
        let index = worker.index();
        let result = emostream_dataflow::run_worker(
            worker,
            &config,
            Arc::clone(&stop),
            Arc::clone(&metrics),
        );
        if let Err(e) = result {
            // Not at the join: the other threads may wait on this one forever (a check only
            // worker 0 makes, an exchange with a worker that is gone).
            eprintln!("emostream-dataflow: worker {index}: {e}");
            std::process::exit(e.exit_status());
        }
    })?;
    for result in guards.join() {
        result?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const CONFIG: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
[gateway]
listen = "127.0.0.1:8080"
[dataflow]
processes = ["h0:2101", "h1:2101", "h2:2101"]
threads = 3
[broadcaster]
main = "127.0.0.1:9000"
clusters = []
"#;

    fn communication(line: &str) -> String {
        let config = emostream_protocol::Config::from_toml(CONFIG).unwrap();
        let cli = Cli::try_parse_from(line.split_whitespace()).unwrap();
        format!(
            "{:?}",
            cli.timely.timely_config(&config).unwrap().communication
        )
    }

    #[test]
    fn timely_flags_build_timely_config() {
        Cli::command().debug_assert();
        let cases = [
            ("emostream-dataflow", "Config::Process(3)"),
            ("emostream-dataflow -w 1", "Config::Thread()"),
            ("emostream-dataflow -w 2 -z", "Config::ProcessBinary(2)"),
            (
                "emostream-dataflow -n 2 -p 1",
                r#"Config::Cluster { threads: 3, process: 1, addresses: ["h0:2101", "h1:2101"], report: false, zerocopy: false, .. }"#,
            ),
            (
                "emostream-dataflow --config c.toml -n 3 -p 2 -w 1 -r",
                r#"Config::Cluster { threads: 1, process: 2, addresses: ["h0:2101", "h1:2101", "h2:2101"], report: true, zerocopy: false, .. }"#,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(communication(line), want, "{line}");
        }
    }

    #[test]
    fn the_hostfile_names_the_processes() {
        let dir =
            std::env::temp_dir().join(format!("emostream-dataflow-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hostfile = dir.join("hostfile");
        std::fs::write(&hostfile, "a:1\nb:2\nc:3\n").unwrap();
        let line = format!("emostream-dataflow -n 2 -p 0 -h {}", hostfile.display());
        let got = communication(&line);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            r#"Config::Cluster { threads: 3, process: 0, addresses: ["a:1", "b:2"], report: false, zerocopy: false, .. }"#
        );
        let config = emostream_protocol::Config::from_toml(CONFIG).unwrap();
        let cli = Cli::try_parse_from(["emostream-dataflow", "-n", "4"]).unwrap();
        assert_eq!(
            cli.timely.timely_config(&config).unwrap_err(),
            "3 process addresses for -n 4"
        );
    }
}
