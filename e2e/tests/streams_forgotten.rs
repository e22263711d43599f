//! Every tier forgets the streams that went quiet (issue 21): a few hundred streams tapped for a
//! few epochs through the whole system, then none. Each dataflow process's trends stage ends up
//! holding nothing once every window has emptied (`emostream_dataflow_trend_updates_held` back to
//! 0 from what the streams made it hold), and every broadcaster tier holds no stream once its
//! idle time has passed (`emostream_broadcaster_streams_held` 0).
//!
//! Each process's resident memory is printed at the start, at the end of the taps and once
//! everything is forgotten, with its anonymous part (`RssAnon`, without the binary's pages mapped
//! from disk, which grow as code first runs: most of a debug build's growth here); it is not
//! asserted (what the allocator gives back varies), the counts of what each tier holds are.

use emostream_e2e::taps::{drive, Plan, Pool};
use emostream_e2e::{System, Topology};
use emostream_testkit::{http, wait_until};
use std::collections::BTreeMap;
use std::time::Duration;

const WINDOW_MS: u64 = 500;
const STREAMS: usize = 300;
const TAPS_FOR: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_forgets_the_streams_that_went_quiet() {
    let system = System::start(Topology {
        window_ms: WINDOW_MS,
        allowed_lateness_ms: 300,
        settings: vec![
            ("gateway", "trusted_proxies = [\"127.0.0.1\"]".to_string()),
            ("broadcaster", "stream_idle_s = 2".to_string()),
        ],
        ..Topology::default()
    })
    .await;
    let dataflow: Vec<String> = system.config.dataflow.metrics.clone();
    let tiers: Vec<String> = {
        let b = &system.config.broadcaster;
        let mut t = vec![b.main.clone()];
        for c in &b.clusters {
            t.push(c.listen.clone());
            t.extend(c.subscribers.iter().cloned());
        }
        t
    };
    let at_start = system.resident_kib();
    let anonymous_at_start = system.anonymous_kib();

    // One request of 4 taps per stream per epoch, each stream from an address of its own.
    let plan = Plan {
        gateway: system.gateway().to_string(),
        streams: (0..STREAMS).map(|i| format!("quiet-{i}")).collect(),
        rate: (STREAMS * 4) as f64 * 1000.0 / WINDOW_MS as f64,
        batch: 4,
        duration: TAPS_FOR,
        connections: 200,
        forwarded: true,
    };
    let pool = Pool::default();
    let taps = tokio::spawn(async move { drive(plan, &pool).await });
    // What the trends stage holds, per process, at its largest while the taps come.
    let mut most: BTreeMap<String, u64> = BTreeMap::new();
    while !taps.is_finished() {
        for addr in &dataflow {
            if let Some(held) = gauge(addr, "emostream_dataflow_trend_updates_held").await {
                let most = most.entry(addr.clone()).or_default();
                *most = (*most).max(held);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = taps.await.expect("the tap driver");
    let at_end_of_taps = system.resident_kib();
    let acked = outcome.acked.len();
    assert!(
        acked >= STREAMS,
        "at least one request per stream acknowledged: {acked} of {} ({:?} refused)",
        outcome.requests,
        outcome.refused
    );

    // Every window empties W epochs (7.5 s here) after its stream's last tap; the broadcaster
    // forgets a stream its idle time after its last frame.
    wait_until(
        "every dataflow process's trends stage holding nothing",
        Duration::from_secs(40),
        || {
            let dataflow = dataflow.clone();
            async move {
                for addr in &dataflow {
                    if gauge(addr, "emostream_dataflow_trend_updates_held").await != Some(0) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    wait_until(
        "every broadcaster tier holding no stream",
        Duration::from_secs(20),
        || {
            let tiers = tiers.clone();
            async move {
                for addr in &tiers {
                    if gauge(addr, "emostream_broadcaster_streams_held").await != Some(0) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    let forgotten = system.resident_kib();
    let anonymous_forgotten = system.anonymous_kib();
    eprintln!("most trend updates held per dataflow process: {most:?}");
    eprintln!("resident KiB (start, end of taps, all forgotten):");
    for (name, start) in &at_start {
        let find = |at: &[(String, u64)]| at.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
        eprintln!(
            "  {name}: {start} {:?} {:?}",
            find(&at_end_of_taps),
            find(&forgotten)
        );
    }
    eprintln!("of which anonymous KiB (start, all forgotten):");
    for (name, start) in &anonymous_at_start {
        let forgotten = anonymous_forgotten.iter().find(|(n, _)| n == name);
        eprintln!("  {name}: {start} {:?}", forgotten.map(|(_, k)| *k));
    }
    // Both processes' stages held the streams before they forgot them.
    assert_eq!(
        most.len(),
        dataflow.len(),
        "every process reported: {most:?}"
    );
    for (addr, held) in &most {
        assert!(*held > 0, "{addr}'s trends stage never held anything");
    }
}

/// A gauge's value on `addr`'s `/metrics`, whatever its labels.
async fn gauge(addr: &str, name: &str) -> Option<u64> {
    let body = http::get(addr, "/metrics").await.ok()?.body;
    body.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series.split('{').next()? == name).then(|| value.parse::<f64>().ok().map(|v| v as u64))?
    })
}
