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

/// The figures the capacity model (`scripts/capacity.py`) reads, as `key=value` lines in
/// `$RESULTS_DIR/dataflow.txt` (default `.run/bench/` in the repository): the bare consume's
/// rate and, per catch-up case, the taps, the seconds and the dataflow processes' CPU seconds,
/// so the model can work per core whatever else shared the machine.
pub fn write_results(rows: &[Row], processes: &[usize], storage: &str) {
    let dir = std::env::var_os("RESULTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| emostream_testkit::repo_root().join(".run/bench"));
    let mut text = format!(
        "# cargo bench -p emostream-dataflow --bench throughput, {} cores, storage {storage}\n\
         bare_taps_per_s={:.0}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rows[0].events as f64 / rows[0].secs
    );
    for (row, n) in rows[1..].iter().zip(processes) {
        text += &format!(
            "catch_up_{n}_processes_taps={}\ncatch_up_{n}_processes_secs={:.2}\n",
            row.events, row.secs
        );
        if let Some((cpu, _)) = row.cpu.filter(|(cpu, _)| *cpu > 0.0) {
            text += &format!("catch_up_{n}_processes_cpu_s={cpu:.2}\n");
        }
    }
    let path = dir.join("dataflow.txt");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => println!("results for scripts/capacity.py: {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
