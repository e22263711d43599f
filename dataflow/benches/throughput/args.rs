//! The benchmark's command line.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Args {
    pub events: u64,
    pub span_epochs: u64,
    pub streams: u64,
    pub partitions: u32,
    pub record_events: u64,
    pub processes: Vec<usize>,
    pub steady_rate: u64,
    pub steady_secs: u64,
    pub steady_processes: usize,
    pub timeout_secs: u64,
}

impl Args {
    pub fn parse() -> Args {
        let mut options = getopts::Options::new();
        options.optopt("", "events", "taps to preload (default 20000000)", "N");
        options.optopt(
            "",
            "span-epochs",
            "epochs the preload covers (default 50)",
            "E",
        );
        options.optopt("", "streams", "streams (default 8)", "S");
        options.optopt("", "partitions", "emoji-events partitions (default 4)", "P");
        options.optopt(
            "",
            "record-events",
            "taps per record at most (default 20000)",
            "N",
        );
        options.optopt(
            "",
            "processes",
            "dataflow process counts (default 1,2)",
            "LIST",
        );
        options.optopt(
            "",
            "steady-rate",
            "steady load, taps/s (default 50000)",
            "R",
        );
        options.optopt(
            "",
            "steady-secs",
            "steady load duration, 0 skips (default 30)",
            "T",
        );
        options.optopt(
            "",
            "steady-processes",
            "processes under steady load (default 2)",
            "N",
        );
        options.optopt(
            "",
            "timeout-secs",
            "deadline of each phase (default 900)",
            "T",
        );
        options.optflag("h", "help", "this text");
        // `cargo bench` passes `--bench`; a harness-less bench ignores it.
        options.optflag("", "bench", "ignored (cargo bench passes it)");
        let matches = options
            .parse(std::env::args().skip(1))
            .unwrap_or_else(|e| usage(&options, &e.to_string()));
        if matches.opt_present("help") {
            usage(&options, "");
        }
        let num = |name: &str, default: u64| -> u64 {
            matches.opt_str(name).map_or(default, |v| {
                v.replace(['_', ','], "")
                    .parse()
                    .unwrap_or_else(|_| usage(&options, &format!("--{name} wants a number")))
            })
        };
        let processes = matches
            .opt_str("processes")
            .unwrap_or_else(|| "1,2".into())
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.trim()
                    .parse()
                    .unwrap_or_else(|_| usage(&options, "--processes wants e.g. 1,2"))
            })
            .collect();
        let args = Args {
            events: num("events", 20_000_000),
            span_epochs: num("span-epochs", 50),
            streams: num("streams", 8),
            partitions: num("partitions", 4) as u32,
            record_events: num("record-events", 20_000),
            processes,
            steady_rate: num("steady-rate", 50_000),
            steady_secs: num("steady-secs", 30),
            steady_processes: num("steady-processes", 2) as usize,
            timeout_secs: num("timeout-secs", 900),
        };
        if args.events == 0
            || args.span_epochs == 0
            || args.streams == 0
            || args.partitions == 0
            || args.record_events == 0
        {
            usage(&options, "counts must be positive");
        }
        args
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

fn usage(options: &getopts::Options, error: &str) -> ! {
    if !error.is_empty() {
        eprintln!("{error}");
    }
    eprint!(
        "{}",
        options.usage("usage: cargo bench -p emostream-dataflow --bench throughput -- [options]")
    );
    std::process::exit(if error.is_empty() { 0 } else { 2 });
}
