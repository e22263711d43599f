//! The catch-up table and the number formats of the report.

/// One measured case of the catch-up table.
pub struct Row {
    pub name: String,
    pub secs: f64,
    pub events: u64,
    pub bytes: Option<u64>,
    /// CPU seconds of the dataflow processes and of the broker during the case.
    pub cpu: Option<(f64, f64)>,
}

pub fn print_table(rows: &[Row]) {
    let bare = rows[0].events as f64 / rows[0].secs;
    println!(
        "\n{:<24} {:>9} {:>11} {:>8} {:>9}   {:>20}",
        "case", "seconds", "taps/s", "MB/s", "vs bare", "cpu s dataflow/broker"
    );
    for row in rows {
        let rate = row.events as f64 / row.secs;
        let mbps = row.bytes.map_or("".to_string(), |b| {
            format!("{:.0}", b as f64 / 1e6 / row.secs)
        });
        let cpu = row.cpu.map_or(String::new(), |(d, b)| {
            if d > 0.0 {
                format!("{d:.1} / {b:.1}")
            } else {
                format!("- / {b:.1}")
            }
        });
        println!(
            "{:<24} {:>9.2} {:>11} {:>8} {:>9.2}   {:>20}",
            row.name,
            row.secs,
            si(rate),
            mbps,
            rate / bare,
            cpu
        );
    }
    let verdicts: Vec<String> = rows[1..]
        .iter()
        .map(|r| {
            let ratio = r.events as f64 / r.secs / bare;
            format!(
                "{}: {:.2} {}",
                r.name,
                ratio,
                if ratio >= 0.8 { "met" } else { "NOT met" }
            )
        })
        .collect();
    println!("target dataflow >= 0.80 x bare: {}", verdicts.join("; "));
}

/// 1234567 → "1,234,567".
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1234567.0 → "1.23 M".
pub fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
