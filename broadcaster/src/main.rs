//! `emostream-broadcaster [--config cluster.toml] main|cluster|subscriber [OPTIONS]`: one tier of
//! the fan-out per process; `--help` after a role lists its options.

use clap::Parser;
use emostream_broadcaster::{run, Role};
use emostream_protocol::config::ConfigArg;
use emostream_protocol::shutdown::shutdown_signal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Tiered fan-out of closed epochs: one process per role. A cluster or subscriber not in the
/// configuration joins at run time with --listen (and --upstream).
#[derive(Debug, Parser)]
#[command(name = "emostream-broadcaster")]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    role: Role,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config.load() {
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
    if matches!(cli.role, Role::Main { .. }) {
        emostream_broadcaster::allocate_to_give_back();
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // A subscriber's threads are its fan-out lanes (`subscriber_threads`, default one per core).
    let threads = config.broadcaster.subscriber_threads;
    if matches!(cli.role, Role::Subscriber { .. }) && threads > 0 {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .expect("a tokio runtime starts at process start");
    match runtime.block_on(run(config, cli.role, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emostream-broadcaster: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;
    use emostream_broadcaster::Synthetic;
    use std::path::Path;

    fn parse(line: &str) -> Result<Cli, ErrorKind> {
        Cli::try_parse_from(
            ["emostream-broadcaster"]
                .into_iter()
                .chain(line.split_whitespace()),
        )
        .map_err(|e| e.kind())
    }

    fn role(line: &str) -> Result<Role, ErrorKind> {
        parse(line).map(|cli| cli.role)
    }

    #[test]
    fn roles_parse() {
        Cli::command().debug_assert();
        let main = Role::Main {
            listen: None,
            synthetic: None,
        };
        let subscriber = |name: &str| Role::Subscriber {
            name: name.into(),
            listen: None,
            upstream: None,
            advertise: None,
        };
        let cases = [
            ("--config c.toml main", Ok(main.clone())),
            ("main --config c.toml", Ok(main)),
            (
                "--config c.toml cluster --name c0",
                Ok(Role::Cluster {
                    name: "c0".into(),
                    listen: None,
                    upstream: None,
                }),
            ),
            ("subscriber --name c0-s1", Ok(subscriber("c0-s1"))),
            (
                "subscriber --name x --listen 127.0.0.1:7 --upstream 127.0.0.1:8 --advertise ws://h:7",
                Ok(Role::Subscriber {
                    name: "x".into(),
                    listen: Some("127.0.0.1:7".into()),
                    upstream: Some("127.0.0.1:8".into()),
                    advertise: Some("ws://h:7".into()),
                }),
            ),
            (
                "main --synthetic-ms 100 --synthetic-streams a,b --synthetic-epochs 3",
                Ok(Role::Main {
                    listen: None,
                    synthetic: Some(Synthetic {
                        every_ms: 100,
                        streams: vec!["a".into(), "b".into()],
                        epochs: Some(3),
                    }),
                }),
            ),
            (
                "main --synthetic-ms 2000",
                Ok(Role::Main {
                    listen: None,
                    synthetic: Some(Synthetic {
                        every_ms: 2000,
                        streams: vec!["main".into()],
                        epochs: None,
                    }),
                }),
            ),
            ("main --synthetic-ms 0", Err(ErrorKind::ValueValidation)),
            (
                "main --synthetic-streams a",
                Err(ErrorKind::MissingRequiredArgument),
            ),
            ("cluster", Err(ErrorKind::MissingRequiredArgument)),
            ("main --name c0", Err(ErrorKind::UnknownArgument)),
            ("main --upstream h:1", Err(ErrorKind::UnknownArgument)),
            ("cluster --name c0 --advertise ws://h:1", Err(ErrorKind::UnknownArgument)),
            (
                "cluster --name c0 --synthetic-ms 100",
                Err(ErrorKind::UnknownArgument),
            ),
            ("boss", Err(ErrorKind::InvalidSubcommand)),
            ("main extra", Err(ErrorKind::UnknownArgument)),
            ("--config c.toml", Err(ErrorKind::MissingSubcommand)),
        ];
        for (line, want) in cases {
            assert_eq!(role(line), want, "{line}");
        }
    }

    #[test]
    fn the_config_defaults_to_cluster_toml() {
        assert_eq!(
            parse("main").unwrap().config.path,
            Path::new("cluster.toml")
        );
        assert_eq!(
            parse("cluster --name c0 --config other.toml")
                .unwrap()
                .config
                .path,
            Path::new("other.toml")
        );
    }
}
