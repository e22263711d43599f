//! `emostream-config`: the configuration as the tiers read it (`cluster.toml` plus the
//! `EMOSTREAM_*` overrides), for scripts, so that no script parses TOML or the environment itself.
//!
//! ```text
//! emostream-config [--config cluster.toml] get kafka.events_topic   # one value; arrays one per line
//! emostream-config [--config cluster.toml] topics                   # "name partitions" per topic
//! emostream-config [--config cluster.toml] dev-broker               # "listen advertised storage"
//! emostream-config [--config cluster.toml] clusters                 # "name listen sub1,sub2,…" per cluster
//! emostream-config [--config cluster.toml] print                    # everything, as TOML
//! ```

use emostream_protocol::Config;
use std::process::ExitCode;

const USAGE: &str = "usage: emostream-config [--config FILE] (get SECTION.FIELD[.FIELD…] | topics | dev-broker | clusters | print)";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = "cluster.toml".to_string();
    if args.first().map(String::as_str) == Some("--config") && args.len() >= 2 {
        path = args.remove(1);
        args.remove(0);
    }
    let config = match Config::load(std::path::Path::new(&path)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("emostream-config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["get", key] => get(&config, key),
        ["topics"] => Ok(topics(&config)),
        ["dev-broker"] => Ok(dev_broker(&config)),
        ["clusters"] => Ok(config
            .broadcaster
            .clusters
            .iter()
            .map(|c| format!("{} {} {}\n", c.name, c.listen, c.subscribers.join(",")))
            .collect()),
        ["print"] => toml::to_string(&config).map_err(|e| e.to_string()),
        _ => Err(USAGE.to_string()),
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

/// Every topic the system uses, with the partitions a development broker creates it with. The
/// progress topic has exactly one: its newest record is the recovery state.
fn topics(config: &Config) -> String {
    let k = &config.kafka;
    [
        (&k.events_topic, k.events_partitions),
        (&k.epochs_topic, k.epochs_partitions),
        (&k.progress_topic, 1),
        (&k.trends_topic, k.trends_partitions),
    ]
    .iter()
    .map(|(name, partitions)| format!("{name} {partitions}\n"))
    .collect()
}

/// Where the development broker binds, the address it tells clients (the first of `[kafka]
/// brokers`), and its storage engine, on one line.
fn dev_broker(config: &Config) -> String {
    let advertised = config
        .kafka
        .brokers
        .split(',')
        .next()
        .unwrap_or_default()
        .trim();
    let listen = config.dev_broker.listen.as_deref().unwrap_or(advertised);
    let storage = match config.dev_broker.storage {
        emostream_protocol::config::DevStorage::Sqlite => "sqlite",
        emostream_protocol::config::DevStorage::Postgres => "postgres",
        emostream_protocol::config::DevStorage::Memory => "memory",
    };
    format!("{listen} {advertised} {storage}\n")
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
    fn scripts_see_what_the_tiers_see_overrides_included() {
        let env = [(
            "EMOSTREAM_DEV_BROKER__STORAGE".to_string(),
            "memory".to_string(),
        )];
        let config = Config::from_toml(SAMPLE, env).unwrap();
        assert_eq!(dev_broker(&config), "0.0.0.0:9092 10.0.0.5:9092 memory\n");
        assert_eq!(
            topics(&config),
            "emoji-events 8\nemoji-epochs 2\nemoji-progress 1\nemoji-trends 2\n"
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
        let config =
            Config::from_toml(&SAMPLE.replace("listen = \"0.0.0.0:9092\"", ""), []).unwrap();
        assert_eq!(
            dev_broker(&config),
            "10.0.0.5:9092 10.0.0.5:9092 postgres\n"
        );
    }
}
