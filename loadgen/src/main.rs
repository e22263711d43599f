//! `emostream-loadgen`: N simulated viewers tapping Zipf-skewed emojis at an open-loop rate over
//! S streams, with goal moments that multiply the rate for a few seconds; a live progress bar,
//! then a table of what was sent, accepted and refused, with ingest latency percentiles.
//!
//! # Layout
//! - `zipf`: the seeded generator and the Zipf sampler that picks emojis.
//! - `schedule`: goal moments and the open-loop timetable.
//! - `run`: the driver (keep-alive HTTP client, one task per request, the in-flight cap).
//! - `report`: the tally and the final table.

mod report;
mod run;
mod schedule;
mod zipf;

use clap::Parser;
use hyper::Uri;
use run::{Plan, Route};
use schedule::Goals;
use std::net::IpAddr;
use std::time::Duration;

/// Offers a fixed rate of emoji taps to the gateway (open loop: requests go out on schedule
/// whether or not earlier ones were answered), bounded in time and in count.
#[derive(Debug, Parser)]
#[command(name = "emostream-loadgen")]
struct Cli {
    /// Gateway URL, http://host:port.
    #[arg(
        short,
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: Uri,
    /// Simulated users (user ids).
    #[arg(short, long, value_name = "N", default_value_t = 100)]
    users: usize,
    /// Emojis per second offered outside goal moments.
    #[arg(short, long, value_name = "R", default_value_t = 200.0, value_parser = positive)]
    rate: f64,
    /// Streams PREFIX-0 … PREFIX-(S-1), on the batch route.
    #[arg(short, long, value_name = "S", default_value_t = 1)]
    streams: usize,
    /// Stream name prefix.
    #[arg(long, value_name = "PREFIX", default_value = "loadgen")]
    stream_prefix: String,
    /// The route the taps go to.
    #[arg(long, value_enum, default_value_t = Route::Batch)]
    route: Route,
    /// Taps per request on the batch route.
    #[arg(short, long, value_name = "K", default_value_t = 1)]
    batch: usize,
    /// Seconds to run.
    #[arg(short, long, value_name = "SECS", default_value_t = 30.0, value_parser = non_negative)]
    duration: f64,
    /// Stop after this many emojis.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1_000_000)]
    max_emojis: u64,
    /// Requests awaiting an answer before new ones are skipped.
    #[arg(long, value_name = "N", default_value_t = 512)]
    max_in_flight: usize,
    /// Zipf exponent of the emoji mix (0 = uniform).
    #[arg(long, value_name = "S", default_value_t = 1.1, value_parser = non_negative)]
    zipf: f64,
    /// Seconds between goal moments, 0 for none.
    #[arg(long, value_name = "SECS", default_value_t = 20.0, value_parser = non_negative)]
    goal_every: f64,
    /// Length of a goal moment in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 4.0, value_parser = non_negative)]
    goal_secs: f64,
    /// Rate multiplier during a goal moment.
    #[arg(long, value_name = "X", default_value_t = 5.0, value_parser = non_negative)]
    goal_x: f64,
    /// Seed for users, emojis, streams and goal times.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Allow a gateway that is not on this machine.
    #[arg(long)]
    allow_remote: bool,
}

fn non_negative(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| "must be a non-negative number".into())
}

fn positive(text: &str) -> Result<f64, String> {
    let x = non_negative(text)?;
    if x > 0.0 {
        Ok(x)
    } else {
        Err("must be above 0".into())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if cli.route == Route::Seed && cli.streams > 1 {
        return Err("--route seed always writes stream main: drop --streams".into());
    }
    let streams = match cli.route {
        Route::Seed => vec!["main".to_string()],
        Route::Batch => (0..cli.streams.max(1))
            .map(|i| format!("{}-{i}", cli.stream_prefix))
            .collect(),
    };
    let duration = Duration::from_secs_f64(cli.duration);
    let goals = if cli.goal_every == 0.0 {
        Goals::none()
    } else if cli.goal_secs >= cli.goal_every {
        return Err("--goal-secs must be shorter than --goal-every".into());
    } else {
        Goals::new(
            Duration::from_secs_f64(cli.goal_every),
            Duration::from_secs_f64(cli.goal_secs),
            cli.goal_x.max(1.0),
            duration,
            cli.seed,
        )
    };
    if cli.gateway.scheme_str() != Some("http") || cli.gateway.host().is_none() {
        return Err(format!("--gateway must be http://host:port, got {}", cli.gateway).into());
    }
    let plan = Plan {
        gateway: cli.gateway,
        route: cli.route,
        users: cli.users.max(1),
        rate: cli.rate,
        streams,
        batch: cli.batch.max(1),
        duration,
        max_emojis: cli.max_emojis,
        max_in_flight: cli.max_in_flight.max(1),
        zipf_exponent: cli.zipf,
        goals,
        seed: cli.seed,
    };

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        if !cli.allow_remote {
            ensure_loopback(&plan.gateway).await?;
        }
        eprintln!("{}", describe(&plan));
        let (mut tally, elapsed) = run::run(plan).await;
        println!("{}", tally.table(elapsed));
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// A load generator pointed at someone else's server by a typo is an attack; only this machine
/// is a target unless `--allow-remote` says otherwise.
async fn ensure_loopback(gateway: &Uri) -> Result<(), String> {
    let host = gateway
        .host()
        .expect("checked above")
        .trim_matches(['[', ']']);
    let port = gateway.port_u16().unwrap_or(80);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback) {
        Ok(())
    } else {
        Err(format!(
            "{host} is not a loopback address; pass --allow-remote to load another machine"
        ))
    }
}

fn describe(plan: &Plan) -> String {
    let route = match plan.route {
        Route::Batch => format!("/v1/streams/{{s}}/emojis ×{} per request", plan.batch),
        Route::Seed => "/send_emoji".to_string(),
    };
    let goals = plan
        .goals
        .windows()
        .iter()
        .map(|w| format!("{:.1}s", w.start.as_secs_f64()))
        .collect::<Vec<_>>();
    format!(
        "loadgen → {} {route}: {} users, {} emojis/s over {} stream(s) for {:.0} s (at most {} emojis); \
         goal moments at [{}] ×{}",
        plan.gateway,
        plan.users,
        plan.rate,
        plan.streams.len(),
        plan.duration.as_secs_f64(),
        plan.max_emojis,
        goals.join(", "),
        plan.goals.multiplier_at(plan.goals.windows().first().map_or(Duration::MAX, |w| w.start)),
    )
}
