//! The benchmark's command line.

use std::time::Duration;

/// Dataflow throughput and epoch latency against a bare rdkafka consumer of the same topic.
#[derive(Debug, Clone, clap::Parser)]
#[command(bin_name = "cargo bench -p emostream-dataflow --bench throughput --")]
pub struct Args {
    /// Taps to preload.
    #[arg(long, value_name = "N", default_value = "20000000", value_parser = count)]
    pub events: u64,
    /// Epochs the preload covers.
    #[arg(long, value_name = "E", default_value = "50", value_parser = count)]
    pub span_epochs: u64,
    /// Streams.
    #[arg(long, value_name = "S", default_value = "8", value_parser = count)]
    pub streams: u64,
    /// emoji-events partitions.
    #[arg(long, value_name = "P", default_value = "4", value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Taps per record at most.
    #[arg(long, value_name = "N", default_value = "20000", value_parser = count)]
    pub record_events: u64,
    /// Dataflow process counts, one catch-up run each.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "1,2",
        value_delimiter = ','
    )]
    pub processes: Vec<usize>,
    /// Steady load, taps/s.
    #[arg(long, value_name = "R", default_value = "50000", value_parser = number)]
    pub steady_rate: u64,
    /// Steady load duration; 0 skips it.
    #[arg(long, value_name = "T", default_value = "30", value_parser = number)]
    pub steady_secs: u64,
    /// Processes under steady load.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub steady_processes: usize,
    /// Deadline of each phase.
    #[arg(long, value_name = "T", default_value = "900", value_parser = number)]
    pub timeout_secs: u64,
    /// Ignored: `cargo bench` passes it to every bench.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// A number, written with `_` or `,` between digit groups if wanted (`20_000_000`).
fn number(text: &str) -> Result<u64, String> {
    text.replace(['_', ','], "")
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// A [`number`] above 0.
fn count(text: &str) -> Result<u64, String> {
    match number(text)? {
        0 => Err("must be above 0".into()),
        n => Ok(n),
    }
}

impl Args {
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}
