//! `emostream-broadcaster --config cluster.toml --role main|cluster|subscriber [--name NAME]
//! [--listen HOST:PORT] [--upstream HOST:PORT] [--advertise ws://HOST:PORT]
//! [--synthetic-ms MS [--synthetic-streams A,B]]`

use emostream_broadcaster::{run, Launch, Role, Synthetic};
use emostream_protocol::shutdown::shutdown_signal;
use emostream_protocol::Config;
use std::path::Path;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "\
Usage: emostream-broadcaster --config FILE --role main [--listen HOST:PORT]
                             [--synthetic-ms MS [--synthetic-streams A,B]]
       emostream-broadcaster --config FILE --role cluster --name CLUSTER
                             [--listen HOST:PORT] [--upstream MAIN_HOST:PORT]
       emostream-broadcaster --config FILE --role subscriber --name NAME
                             [--listen HOST:PORT --upstream CLUSTER_HOST:PORT]
                             [--advertise ws://HOST:PORT]
A cluster or subscriber not in the config joins at run time with --listen (and --upstream).
--synthetic-ms makes the main publisher emit one epoch per stream every MS instead of reading
Kafka, each with end_ms = the moment it is emitted (for benchmarks).";

fn main() -> ExitCode {
    let (config, launch) = match parse(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("emostream-broadcaster: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(Path::new(&config)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("emostream-broadcaster: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // A subscriber's threads are its fan-out lanes (`subscriber_threads`, default one per core).
    let threads = config.broadcaster.subscriber_threads;
    if matches!(launch.role, Role::Subscriber { .. }) && threads > 0 {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .expect("a tokio runtime starts at process start");
    match runtime.block_on(run(config, launch, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emostream-broadcaster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config path and what to launch, or what is wrong with the arguments.
fn parse(args: impl Iterator<Item = String>) -> Result<(String, Launch), String> {
    let mut opts = getopts::Options::new();
    opts.reqopt("", "config", "cluster.toml to read", "FILE");
    opts.reqopt("", "role", "main, cluster or subscriber", "ROLE");
    opts.optopt("", "name", "the cluster or subscriber to be", "NAME");
    opts.optopt(
        "",
        "listen",
        "serve here instead of the configured address",
        "HOST:PORT",
    );
    opts.optopt(
        "",
        "upstream",
        "the tier above, instead of the configured one",
        "HOST:PORT",
    );
    opts.optopt(
        "",
        "advertise",
        "where viewers reach this subscriber",
        "URL",
    );
    opts.optopt("", "synthetic-ms", "emit synthetic epochs this often", "MS");
    opts.optopt(
        "",
        "synthetic-streams",
        "streams of the synthetic epochs",
        "A,B",
    );
    let m = opts.parse(args).map_err(|e| e.to_string())?;
    if let Some(extra) = m.free.first() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let name = m.opt_str("name");
    let role = match (m.opt_str("role").as_deref(), name) {
        (Some("main"), None) => Role::Main,
        (Some("main"), Some(_)) => return Err("--role main takes no --name".into()),
        (Some("cluster"), Some(name)) => Role::Cluster { name },
        (Some("subscriber"), Some(name)) => Role::Subscriber { name },
        (Some(role @ ("cluster" | "subscriber")), None) => {
            return Err(format!("--role {role} needs --name"))
        }
        (other, _) => return Err(format!("unknown role {:?}", other.unwrap_or_default())),
    };
    let synthetic =
        match m.opt_str("synthetic-ms") {
            Some(ms) => Some(Synthetic {
                every_ms: ms.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                    format!("--synthetic-ms takes milliseconds above 0, not {ms:?}")
                })?,
                streams: m
                    .opt_str("synthetic-streams")
                    .unwrap_or_else(|| "main".into())
                    .split(',')
                    .map(String::from)
                    .collect(),
            }),
            None if m.opt_present("synthetic-streams") => {
                return Err("--synthetic-streams needs --synthetic-ms".into())
            }
            None => None,
        };
    let config = m.opt_str("config").expect("getopts enforces --config");
    let launch = Launch {
        role,
        listen: m.opt_str("listen"),
        upstream: m.opt_str("upstream"),
        advertise: m.opt_str("advertise"),
        synthetic,
    };
    Ok((config, launch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = String> + '_ {
        line.split_whitespace().map(String::from)
    }

    #[test]
    fn roles_parse() {
        let configured = |role| Ok(("c.toml".to_string(), Launch::configured(role)));
        let cases = [
            ("--config c.toml --role main", configured(Role::Main)),
            (
                "--config c.toml --role cluster --name c0",
                configured(Role::Cluster { name: "c0".into() }),
            ),
            (
                "--role subscriber --name c0-s1 --config c.toml",
                configured(Role::Subscriber {
                    name: "c0-s1".into(),
                }),
            ),
            (
                "--config c.toml --role subscriber --name x --listen 127.0.0.1:7 --upstream 127.0.0.1:8",
                Ok((
                    "c.toml".into(),
                    Launch {
                        listen: Some("127.0.0.1:7".into()),
                        upstream: Some("127.0.0.1:8".into()),
                        ..Launch::configured(Role::Subscriber { name: "x".into() })
                    },
                )),
            ),
            (
                "--config c.toml --role main --synthetic-ms 100 --synthetic-streams a,b",
                Ok((
                    "c.toml".into(),
                    Launch {
                        synthetic: Some(Synthetic {
                            every_ms: 100,
                            streams: vec!["a".into(), "b".into()],
                        }),
                        ..Launch::configured(Role::Main)
                    },
                )),
            ),
            (
                "--config c.toml --role main --synthetic-ms 0",
                Err("--synthetic-ms takes milliseconds above 0, not \"0\"".to_string()),
            ),
            (
                "--config c.toml --role main --synthetic-streams a",
                Err("--synthetic-streams needs --synthetic-ms".to_string()),
            ),
            (
                "--config c.toml --role cluster",
                Err("--role cluster needs --name".to_string()),
            ),
            (
                "--config c.toml --role main --name c0",
                Err("--role main takes no --name".to_string()),
            ),
            (
                "--config c.toml --role boss",
                Err("unknown role \"boss\"".to_string()),
            ),
            (
                "--config c.toml --role main extra",
                Err("unexpected argument \"extra\"".to_string()),
            ),
            (
                "--role main",
                Err("Required option 'config' missing".to_string()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(args(line)), want, "{line}");
        }
    }
}
