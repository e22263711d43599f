//! `emostream-config`: the configuration as the tiers read it (`cluster.toml` plus the
//! `EMOSTREAM_*` overrides), for scripts, so that no script parses TOML or the environment itself.
//!
//! ```text
//! emostream-config [--config cluster.toml] get kafka.events_topic   # one value; arrays one per line
//! emostream-config [--config cluster.toml] topics                   # "name partitions [key=value…]" per topic
//! emostream-config [--config cluster.toml] dev-broker               # "listen advertised storage"
//! emostream-config [--config cluster.toml] clusters                 # "name listen sub1,sub2,…" per cluster
//! emostream-config [--config cluster.toml] print                    # everything, as TOML
//! ```

use clap::{Parser, Subcommand};
use emostream_protocol::config::ConfigArg;
use emostream_protocol::Config;
use std::process::ExitCode;

/// The configuration as the tiers read it (cluster.toml plus the EMOSTREAM_* overrides), for
/// scripts.
#[derive(Debug, Parser)]
#[command(name = "emostream-config")]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    query: Query,
}

#[derive(Debug, Subcommand)]
enum Query {
    /// One value; an array prints one item per line, an unset optional field nothing.
    Get {
        /// SECTION.FIELD[.FIELD…], e.g. kafka.events_topic
        key: String,
    },
    /// "name partitions [key=value…]" per topic: the settings a topic is created with.
    Topics,
    /// "listen advertised storage" of the development broker.
    DevBroker,
    /// "name listen sub1,sub2,…" per cluster.
    Clusters,
    /// Everything, as TOML.
    Print,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("emostream-config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match &cli.query {
        Query::Get { key } => get(&config, key),
        Query::Topics => Ok(topics(&config)),
        Query::DevBroker => Ok(dev_broker(&config)),
        Query::Clusters => Ok(config
            .broadcaster
            .clusters
            .iter()
            .map(|c| format!("{} {} {}\n", c.name, c.listen, c.subscribers.join(",")))
            .collect()),
        Query::Print => toml::to_string(&config).map_err(|e| e.to_string()),
    };
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("emostream-config: {e}");
            ExitCode::from(2)
        }
    }
}

/// "name partitions [key=value…]" per topic: what a development broker creates.
fn topics(config: &Config) -> String {
    config
        .topic_specs()
        .iter()
        .map(|t| {
            let line = format!("{} {} {}", t.name, t.partitions, t.settings.join(" "));
            line.trim_end().to_string() + "\n"
        })
        .collect()
}

/// Where the development broker binds, the address it tells clients, and its storage engine,
/// on one line.
fn dev_broker(config: &Config) -> String {
    let (listen, advertised) = config.dev_broker_addresses();
    format!(
        "{listen} {advertised} {}\n",
        config.dev_broker.storage.name()
    )
}

/// The value at a dotted path, after defaults and overrides; an absent optional field prints
/// nothing and succeeds, an unknown path fails.
fn get(config: &Config, key: &str) -> Result<String, String> {
    let root = toml::Value::try_from(config).map_err(|e| e.to_string())?;
    let mut value = &root;
    for part in key.split('.') {
        value = match value.get(part) {
            Some(v) => v,
            None if known_optional(key) => return Ok(String::new()),
            None => return Err(format!("no setting {key}")),
        };
    }
    Ok(match value {
        toml::Value::String(s) => format!("{s}\n"),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => format!("{s}\n"),
                other => format!("{other}\n"),
            })
            .collect(),
        other => format!("{other}\n"),
    })
}

/// Optional fields are left out of the serialized form when unset.
fn known_optional(key: &str) -> bool {
    matches!(
        key,
        "dev_broker.listen" | "broadcaster.viewer_token_secret" | "broadcaster.link_secret"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[kafka]
brokers = "10.0.0.5:9092,10.0.0.6:9092"
events_partitions = 8
[dev_broker]
listen = "0.0.0.0:9092"
[gateway]
listen = "127.0.0.1:8080"
[dataflow]
processes = ["127.0.0.1:2101"]
[broadcaster]
main = "127.0.0.1:9000"
[[broadcaster.clusters]]
name = "c0"
listen = "127.0.0.1:9010"
subscribers = ["127.0.0.1:9011", "127.0.0.1:9012"]
"#;

    #[test]
    #[allow(clippy::result_large_err)] // the closure's error type is figment's, fixed by Jail
    fn scripts_see_what_the_tiers_see_overrides_included() {
        let mut config = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("EMOSTREAM_DEV_BROKER__STORAGE", "memory");
            jail.create_file("cluster.toml", SAMPLE)?;
            config = Some(Config::load("cluster.toml".as_ref()).unwrap());
            Ok(())
        });
        let config = config.unwrap();
        assert_eq!(dev_broker(&config), "0.0.0.0:9092 10.0.0.5:9092 memory\n");
        assert_eq!(
            topics(&config),
            "emoji-events 8\nemoji-epochs 2\nemoji-progress 1 retention.ms=-1 retention.bytes=-1\nemoji-trends 2\n"
        );
        assert_eq!(get(&config, "gateway.listen").unwrap(), "127.0.0.1:8080\n");
        assert_eq!(
            get(&config, "dataflow.processes").unwrap(),
            "127.0.0.1:2101\n"
        );
        assert_eq!(get(&config, "broadcaster.link_secret").unwrap(), "");
        assert_eq!(
            get(&config, "kafka.nope").unwrap_err(),
            "no setting kafka.nope"
        );
    }

    #[test]
    fn the_broker_listens_where_clients_connect_unless_told_otherwise() {
        let config = Config::from_toml(&SAMPLE.replace("listen = \"0.0.0.0:9092\"", "")).unwrap();
        assert_eq!(
            dev_broker(&config),
            "10.0.0.5:9092 10.0.0.5:9092 postgres\n"
        );
    }

    #[test]
    fn the_config_flag_goes_before_or_after_the_query() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for line in [
            "emostream-config --config c.toml get kafka.brokers",
            "emostream-config get kafka.brokers --config c.toml",
        ] {
            let cli = Cli::try_parse_from(line.split(' ')).unwrap();
            assert_eq!(cli.config.path, std::path::Path::new("c.toml"), "{line}");
            assert!(matches!(&cli.query, Query::Get { key } if key == "kafka.brokers"));
        }
        let cli = Cli::try_parse_from(["emostream-config", "dev-broker"]).unwrap();
        assert_eq!(cli.config.path, std::path::Path::new("cluster.toml"));
        assert!(matches!(cli.query, Query::DevBroker));
    }
}
