//! The gateway's counters, rendered as Prometheus text on `/metrics`. Labels are bounded: the
//! matched route and the status code, never user input.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (route, status) → requests. A std Mutex: held for one map update, never across an await.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    emojis_accepted: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock poisoned")
            .entry((route, status))
            .or_default() += 1;
    }

    pub fn accepted(&self, emojis: u64) {
        self.emojis_accepted.fetch_add(emojis, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP emostream_gateway_requests_total HTTP requests by route and status.\n",
        );
        out.push_str("# TYPE emostream_gateway_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().expect("metrics lock poisoned").iter() {
            let _ = writeln!(
                out,
                "emostream_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP emostream_gateway_emojis_accepted_total Emojis acknowledged by the broker.\n",
        );
        out.push_str("# TYPE emostream_gateway_emojis_accepted_total counter\n");
        let _ = writeln!(
            out,
            "emostream_gateway_emojis_accepted_total {}",
            self.emojis_accepted.load(Ordering::Relaxed)
        );
        out
    }
}
