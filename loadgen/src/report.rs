//! What a run saw: counts by outcome and ingest latencies, and the final table.

use emostream_testkit::percentile;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub emojis: u64,
    /// Emojis in requests answered 2xx.
    pub accepted: u64,
    /// Requests by status code, 2xx included.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer (connection refused or reset, timeout).
    pub transport_errors: u64,
    /// Requests never sent because `max_in_flight` were already waiting: an open-loop driver
    /// reports what it could not offer rather than slowing down.
    pub skipped: u64,
    /// From when each answered request was due to when its answer was read, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl Tally {
    pub fn refused(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// One line for the progress bar.
    pub fn line(&self) -> String {
        let mut line = format!(
            "sent {} · accepted {} · refused {}",
            self.emojis,
            self.accepted,
            self.refused()
        );
        if self.transport_errors > 0 {
            let _ = write!(line, " · errors {}", self.transport_errors);
        }
        if self.skipped > 0 {
            let _ = write!(line, " · skipped {}", self.skipped);
        }
        line
    }

    /// The final table; `elapsed` is the whole run, drain included.
    pub fn table(&mut self, elapsed: Duration) -> String {
        self.latencies_us.sort_unstable();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut rows: Vec<(String, String)> = vec![
            ("requests sent".into(), self.requests.to_string()),
            ("emojis sent".into(), self.emojis.to_string()),
            ("emojis accepted (2xx)".into(), self.accepted.to_string()),
        ];
        for (status, n) in self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
        {
            rows.push((format!("requests refused {status}"), n.to_string()));
        }
        if self.refused() == 0 {
            rows.push(("requests refused".into(), "0".into()));
        }
        rows.push(("transport errors".into(), self.transport_errors.to_string()));
        rows.push(("skipped (in-flight cap)".into(), self.skipped.to_string()));
        rows.push((
            "accepted rate".into(),
            format!("{:.1} emojis/s", self.accepted as f64 / secs),
        ));
        for (name, q) in [("p50", 0.50), ("p99", 0.99), ("max", 1.0)] {
            rows.push((
                format!("ingest latency {name}"),
                percentile(&self.latencies_us, q)
                    .map_or("-".into(), |us| format!("{:.1} ms", f64::from(us) / 1000.0)),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v:>14}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_refusals_by_status() {
        let mut t = Tally {
            requests: 4,
            emojis: 4,
            accepted: 2,
            statuses: BTreeMap::from([(202, 2), (429, 1), (503, 1)]),
            latencies_us: vec![3000, 1000, 2000, 4000],
            ..Tally::default()
        };
        let table = t.table(Duration::from_secs(1));
        for row in [
            "requests refused 429",
            "requests refused 503",
            "2.0 emojis/s",
            "2.0 ms",
            "4.0 ms",
        ] {
            assert!(table.contains(row), "{row} in\n{table}");
        }
        assert_eq!(t.refused(), 2);
    }
}
