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

use hyper::Uri;
use run::{Plan, Route};
use schedule::Goals;
use std::net::IpAddr;
use std::time::Duration;

const USAGE: &str = "Usage: emostream-loadgen [options]

Offers a fixed rate of emoji taps to the gateway (open loop: requests go out on schedule whether
or not earlier ones were answered), bounded in time and in count.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = getopts::Options::new();
    o.optopt("g", "gateway", "gateway URL [http://127.0.0.1:8080]", "URL");
    o.optopt("u", "users", "simulated users (user ids) [100]", "N");
    o.optopt(
        "r",
        "rate",
        "emojis per second offered outside goal moments [200]",
        "R",
    );
    o.optopt("s", "streams", "streams loadgen-0 … loadgen-(S-1) [1]", "S");
    o.optopt("", "stream-prefix", "stream name prefix [loadgen]", "NAME");
    o.optopt(
        "",
        "route",
        "batch (/v1/streams/{s}/emojis) or seed (/send_emoji, stream main) [batch]",
        "ROUTE",
    );
    o.optopt("b", "batch", "taps per request on the batch route [1]", "K");
    o.optopt("d", "duration", "seconds to run [30]", "SECS");
    o.optopt(
        "n",
        "max-emojis",
        "stop after this many emojis [1000000]",
        "N",
    );
    o.optopt(
        "",
        "max-in-flight",
        "requests awaiting an answer before new ones are skipped [512]",
        "N",
    );
    o.optopt(
        "",
        "zipf",
        "Zipf exponent of the emoji mix (0 = uniform) [1.1]",
        "S",
    );
    o.optopt(
        "",
        "goal-every",
        "seconds between goal moments, 0 for none [20]",
        "SECS",
    );
    o.optopt(
        "",
        "goal-secs",
        "length of a goal moment in seconds [4]",
        "SECS",
    );
    o.optopt(
        "",
        "goal-x",
        "rate multiplier during a goal moment [5]",
        "X",
    );
    o.optopt(
        "",
        "seed",
        "seed for users, emojis, streams and goal times [1]",
        "N",
    );
    o.optflag(
        "",
        "allow-remote",
        "allow a gateway that is not on this machine",
    );
    o.optflag("h", "help", "this help");
    let m = o.parse(&args)?;
    if m.opt_present("h") {
        print!("{}", o.usage(USAGE));
        return Ok(());
    }
    let num = |name: &str, default: f64| -> Result<f64, String> {
        m.opt_str(name).map_or(Ok(default), |v| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("--{name} must be a non-negative number, got {v}"))
        })
    };
    let route = match m.opt_str("route").as_deref().unwrap_or("batch") {
        "batch" => Route::Batch,
        "seed" => Route::Seed,
        other => return Err(format!("--route is batch or seed, got {other}").into()),
    };
    let stream_count = num("streams", 1.0)? as usize;
    if route == Route::Seed && stream_count > 1 {
        return Err("--route seed always writes stream main: drop --streams".into());
    }
    let prefix = m
        .opt_str("stream-prefix")
        .unwrap_or_else(|| "loadgen".into());
    let streams = match route {
        Route::Seed => vec!["main".to_string()],
        Route::Batch => (0..stream_count.max(1))
            .map(|i| format!("{prefix}-{i}"))
            .collect(),
    };
    let duration = Duration::from_secs_f64(num("duration", 30.0)?);
    let (every, length) = (num("goal-every", 20.0)?, num("goal-secs", 4.0)?);
    let seed = num("seed", 1.0)? as u64;
    let goals = if every == 0.0 {
        Goals::none()
    } else if length >= every {
        return Err("--goal-secs must be shorter than --goal-every".into());
    } else {
        Goals::new(
            Duration::from_secs_f64(every),
            Duration::from_secs_f64(length),
            num("goal-x", 5.0)?.max(1.0),
            duration,
            seed,
        )
    };
    let gateway: Uri = m
        .opt_str("gateway")
        .unwrap_or_else(|| "http://127.0.0.1:8080".into())
        .parse()?;
    if gateway.scheme_str() != Some("http") || gateway.host().is_none() {
        return Err(format!("--gateway must be http://host:port, got {gateway}").into());
    }
    let plan = Plan {
        gateway,
        route,
        users: (num("users", 100.0)? as usize).max(1),
        rate: num("rate", 200.0)?,
        streams,
        batch: (num("batch", 1.0)? as usize).max(1),
        duration,
        max_emojis: num("max-emojis", 1_000_000.0)? as u64,
        max_in_flight: (num("max-in-flight", 512.0)? as usize).max(1),
        zipf_exponent: num("zipf", 1.1)?,
        goals,
        seed,
    };
    if plan.rate <= 0.0 {
        return Err("--rate must be above 0".into());
    }

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        if !m.opt_present("allow-remote") {
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
