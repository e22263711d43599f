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

/// One runtime per core, each single-threaded with a listener of its own on the shared port
/// (`SO_REUSEPORT`); this thread's also runs the batcher and the signal handling.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = cli.config.load()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listeners = emostream_gateway::Listeners::bind(&config.gateway.listen, cores).await?;
        tracing::info!(addr = %listeners.local_addr()?, runtimes = cores, "gateway listening");
        emostream_gateway::run(config, listeners, shutdown_signal()).await?;
        tracing::info!("gateway stopped: every acknowledged emoji is in Kafka");
        Ok(())
    })
}
