use clap::Parser;
use emostream_protocol::config::ConfigArg;
use emostream_protocol::shutdown::shutdown_signal;

/// HTTP ingest: emoji taps in, acknowledged batch records on Kafka out.
#[derive(Debug, Parser)]
#[command(name = "emostream-gateway")]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = cli.config.load()?;
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    emostream_gateway::run(config, listener, shutdown_signal()).await?;
    tracing::info!("gateway stopped: every acknowledged emoji is in Kafka");
    Ok(())
}
