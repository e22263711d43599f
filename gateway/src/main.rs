use emostream_protocol::{shutdown::shutdown_signal, Config};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let path = config_path()?;
    let config = Config::load(&path)?;
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    emostream_gateway::run(config, listener, shutdown_signal()).await?;
    tracing::info!("gateway stopped: every acknowledged emoji is in Kafka");
    Ok(())
}

/// `--config PATH`, defaulting to `cluster.toml` in the working directory.
fn config_path() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    let mut path = PathBuf::from("cluster.toml");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => path = args.next().ok_or("--config needs a path")?.into(),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: emostream-gateway [--config cluster.toml]"
                ))
            }
        }
    }
    Ok(path)
}
