use clap::Parser;
use emostream_protocol::config::ConfigArg;
use emostream_protocol::shutdown::shutdown_signal;

/// A request allocates and frees a few dozen small blocks across threads (parsed taps, the
/// encoded record, the answer); glibc's allocator took about a sixth of the gateway's CPU under
/// the single-tap benchmark (`PROFILE=1 scripts/bench_ingest.sh`), mimalloc much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
