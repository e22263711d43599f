//! What the supervisor starts: its command line (the one `run_workers.sh` always had), checked
//! against the configuration, and which processes live on this host.

use emostream_protocol::config::ConfigArg;
use emostream_protocol::Config;
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;

/// Starts this host's timely processes of cluster.toml and supervises them.
#[derive(Debug, clap::Parser)]
#[command(name = "run_workers.sh", bin_name = "run_workers.sh")]
pub struct Args {
    /// How many processes the cluster has: the first PROCESSES lines of dataflow.processes.
    #[arg(short = 'n', value_name = "PROCESSES", value_parser = clap::value_parser!(u32).range(1..))]
    pub processes: u32,
    /// Worker threads per process [default: dataflow.threads].
    #[arg(short = 'w', value_name = "THREADS")]
    pub threads: Option<usize>,
    /// Only these processes (one supervisor per host across machines) [default: those whose
    /// address is this host's].
    #[arg(short = 'p', value_name = "INDEX", value_delimiter = ',')]
    pub only: Vec<usize>,
    #[command(flatten)]
    pub config: ConfigArg,
    /// The dataflow binary [default: emostream-dataflow in $EMOSTREAM_BIN_DIR, as
    /// run_workers.sh and the tests set it, else beside this binary].
    #[arg(long, value_name = "PATH")]
    pub dataflow: Option<PathBuf>,
}

/// The processes this supervisor runs, and how each is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub dataflow: PathBuf,
    pub config: PathBuf,
    pub processes: usize,
    pub threads: Option<usize>,
    /// Indexes into dataflow.processes, ascending.
    pub mine: Vec<usize>,
}

impl Plan {
    /// The plan for `args` under `config`; `is_local` tells whether an address (`host:port`)
    /// is this host's. Errors are the command line's, worded for the person who typed it.
    pub fn new(
        args: Args,
        config: &Config,
        is_local: impl Fn(&str) -> bool,
    ) -> Result<Self, String> {
        let Args {
            processes,
            threads,
            only,
            config: ConfigArg { path },
            dataflow,
        } = args;
        let processes = processes as usize;
        let listed = &config.dataflow.processes;
        if listed.len() < processes {
            return Err(format!(
                "{} lists {} dataflow processes, fewer than -n {processes}",
                path.display(),
                listed.len()
            ));
        }
        if let Some(i) = only.iter().find(|&&i| i >= processes) {
            return Err(format!("-p {i} must be below -n {processes}"));
        }
        let mut mine: Vec<usize> = if only.is_empty() {
            (0..processes).filter(|&i| is_local(&listed[i])).collect()
        } else {
            only
        };
        mine.sort_unstable();
        mine.dedup();
        if mine.is_empty() {
            return Err(format!(
                "no process of the first {processes} runs on this host; use -p"
            ));
        }
        // Through the environment rather than a flag from run_workers.sh: the supervisor's
        // command line must not name emostream-dataflow, which is how the tests and up.sh
        // find the dataflow processes among all processes.
        let dataflow = match (dataflow, std::env::var_os("EMOSTREAM_BIN_DIR")) {
            (Some(path), _) => path,
            (None, Some(dir)) => PathBuf::from(dir).join("emostream-dataflow"),
            (None, None) => std::env::current_exe()
                .map_err(|e| format!("where this binary is: {e}"))?
                .with_file_name("emostream-dataflow"),
        };
        if !dataflow.is_file() {
            return Err(format!(
                "no {}: build it first (cargo build --release -p emostream-dataflow)",
                dataflow.display()
            ));
        }
        Ok(Self {
            dataflow,
            config: path,
            processes,
            threads,
            mine,
        })
    }

    /// The command line of process `i`. Without `-h` the process takes the cluster's addresses
    /// from the first `-n` lines of dataflow.processes, the same configuration (file and
    /// environment) this supervisor read.
    pub fn args(&self, i: usize) -> Vec<String> {
        let mut args = vec![
            "-n".to_string(),
            self.processes.to_string(),
            "-p".to_string(),
            i.to_string(),
            "--config".to_string(),
            self.config.display().to_string(),
        ];
        if let Some(threads) = self.threads {
            args.extend(["-w".to_string(), threads.to_string()]);
        }
        args
    }
}

/// Whether `address` (`host:port`, `[v6]:port`) names this host: its host is, or resolves to,
/// an address this host can bind (every 127.x, and each interface's own).
pub fn is_local(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ips: Vec<IpAddr> = match host.parse() {
        Ok(ip) => vec![ip],
        Err(_) => (host, 0)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default(),
    };
    // Binding port 0 claims nothing and fails with EADDRNOTAVAIL for another host's address.
    ips.into_iter().any(|ip| UdpSocket::bind((ip, 0)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const CONFIG: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
[gateway]
listen = "127.0.0.1:8080"
[dataflow]
processes = ["127.0.0.1:2101", "192.0.2.7:2101", "127.0.0.1:2102", "192.0.2.7:2102"]
[broadcaster]
main = "127.0.0.1:9000"
clusters = []
"#;

    /// The plan for `line`, with a dataflow binary that exists (this test's own executable)
    /// and addresses local when they are 127.0.0.1's.
    fn plan(line: &str) -> Result<Plan, String> {
        let config = Config::from_toml(CONFIG).unwrap();
        let exe = std::env::current_exe().unwrap();
        let line = format!("run_workers.sh --dataflow {} {line}", exe.display());
        let args = Args::try_parse_from(line.split_whitespace()).map_err(|e| e.to_string())?;
        Plan::new(args, &config, |a| a.starts_with("127.0.0.1:"))
    }

    #[test]
    fn the_processes_of_this_host_or_those_named() {
        let cases = [
            ("-n 4", Ok(vec![0, 2])),
            ("-n 2", Ok(vec![0])),
            ("-n 4 -p 3,1", Ok(vec![1, 3])),
            ("-n 4 -p 1", Ok(vec![1])),
            ("-n 4 -p 4", Err("-p 4 must be below -n 4".to_string())),
            (
                "-n 5",
                Err("cluster.toml lists 4 dataflow processes, fewer than -n 5".to_string()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(plan(line).map(|p| p.mine), want, "{line}");
        }
        let config = Config::from_toml(CONFIG).unwrap();
        let args = Args::try_parse_from(["run_workers.sh", "-n", "4"]).unwrap();
        assert_eq!(
            Plan::new(args, &config, |_| false).unwrap_err(),
            "no process of the first 4 runs on this host; use -p"
        );
        assert!(Args::try_parse_from(["run_workers.sh", "-n", "0"]).is_err());
        assert!(Args::try_parse_from(["run_workers.sh"]).is_err());
    }

    #[test]
    fn a_process_gets_timely_flags_and_the_same_configuration() {
        let named = plan("-n 4 -p 2 -w 3 -c other.toml").unwrap();
        assert_eq!(
            named.args(2).join(" "),
            "-n 4 -p 2 --config other.toml -w 3"
        );
        let default = plan("-n 2").unwrap();
        assert_eq!(default.args(0).join(" "), "-n 2 -p 0 --config cluster.toml");
    }

    #[test]
    fn addresses_of_this_host() {
        let cases = [
            ("127.0.0.1:2101", true),
            ("127.0.0.2:2101", true),
            ("localhost:2101", true),
            // TEST-NET-1 (RFC 5737): never a host's own address.
            ("192.0.2.7:2101", false),
        ];
        for (address, local) in cases {
            assert_eq!(is_local(address), local, "{address}");
        }
    }
}
