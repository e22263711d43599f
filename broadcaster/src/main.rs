//! `emostream-broadcaster --config cluster.toml --role main|cluster|subscriber [--name NAME]`

use emostream_broadcaster::{run, Role};
use emostream_protocol::shutdown::shutdown_signal;
use emostream_protocol::Config;
use std::path::Path;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "Usage: emostream-broadcaster --config FILE --role main\n       \
                     emostream-broadcaster --config FILE --role cluster --name CLUSTER\n       \
                     emostream-broadcaster --config FILE --role subscriber --name CLUSTER-sI";

fn main() -> ExitCode {
    let (config, role) = match parse(std::env::args().skip(1)) {
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
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts at process start");
    match runtime.block_on(run(config, role, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emostream-broadcaster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config path and the role, or what is wrong with the arguments.
fn parse(args: impl Iterator<Item = String>) -> Result<(String, Role), String> {
    let mut opts = getopts::Options::new();
    opts.reqopt("", "config", "cluster.toml to read", "FILE");
    opts.reqopt("", "role", "main, cluster or subscriber", "ROLE");
    opts.optopt("", "name", "the cluster or subscriber to be", "NAME");
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
    let config = m.opt_str("config").expect("getopts enforces --config");
    Ok((config, role))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = String> + '_ {
        line.split_whitespace().map(String::from)
    }

    #[test]
    fn roles_parse() {
        let cases = [
            (
                "--config c.toml --role main",
                Ok(("c.toml".into(), Role::Main)),
            ),
            (
                "--config c.toml --role cluster --name c0",
                Ok(("c.toml".into(), Role::Cluster { name: "c0".into() })),
            ),
            (
                "--role subscriber --name c0-s1 --config c.toml",
                Ok((
                    "c.toml".into(),
                    Role::Subscriber {
                        name: "c0-s1".into(),
                    },
                )),
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
