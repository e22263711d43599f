//! The catch-up table and the number formats of the report.

/// One measured case of the catch-up table.
pub struct Row {
    pub name: String,
    pub secs: f64,
    pub events: u64,
    pub bytes: Option<u64>,
    /// Where the cores went during the case.
    pub cpu: Cpu,
}

/// CPU seconds (user + system) spent during one case, by part, and the cores' idle seconds.
pub struct Cpu {
    /// Whatever reads the topic: the dataflow processes, or this bench for the bare consume.
    pub reader: f64,
    /// The broker and its storage (Nisshi, and its PostgreSQL server and backends).
    pub broker: f64,
    /// This bench beside a dataflow (reading the frames); 0 when it is the reader.
    pub bench: f64,
    /// Seconds the machine's cores spent idle, summed over the cores.
    pub idle: f64,
}

impl Cpu {
    /// Starts measuring the cores' idle time: a mark for [`Cpu::idle_since`].
    pub fn idle_mark() -> f64 {
        emostream_testkit::procfs::machine_idle_secs()
    }

    /// The cores' idle seconds since `mark`.
    pub fn idle_since(mark: f64) -> f64 {
        emostream_testkit::procfs::machine_idle_secs() - mark
    }
}

/// The shares of the machine's cores during `secs` that sat idle, and that went to processes
/// other than the reader, the broker and this bench (another build or test on the machine).
fn shares(cpu: &Cpu, secs: f64) -> (f64, f64) {
    let cores = cores() as f64 * secs;
    let idle = (cpu.idle / cores).clamp(0.0, 1.0);
    let ours = (cpu.reader + cpu.broker + cpu.bench) / cores;
    (idle, (1.0 - idle - ours).max(0.0))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The dataflow's catch-up target, as a fraction of the bare consume's rate (issue 22).
pub const TARGET: f64 = 0.9;

pub fn print_table(rows: &[Row]) {
    let bare = rows[0].events as f64 / rows[0].secs;
    println!(
        "\n{:<24} {:>9} {:>11} {:>8} {:>9}   {:>30} {:>6} {:>7}",
        "case",
        "seconds",
        "taps/s",
        "MB/s",
        "vs bare",
        "cpu s reader/broker+storage",
        "idle",
        "others"
    );
    for row in rows {
        let rate = row.events as f64 / row.secs;
        let mbps = row.bytes.map_or("".to_string(), |b| {
            format!("{:.0}", b as f64 / 1e6 / row.secs)
        });
        let cpu = format!("{:.1} / {:.1}", row.cpu.reader, row.cpu.broker);
        let (idle, others) = shares(&row.cpu, row.secs);
        println!(
            "{:<24} {:>9.2} {:>11} {:>8} {:>9.2}   {:>30} {:>5.0}% {:>6.0}%",
            row.name,
            row.secs,
            si(rate),
            mbps,
            rate / bare,
            cpu,
            100.0 * idle,
            100.0 * others
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
                if ratio >= TARGET { "met" } else { "NOT met" }
            )
        })
        .collect();
    println!(
        "target dataflow >= {TARGET:.2} x bare: {}",
        verdicts.join("; ")
    );
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
        cores(),
        rows[0].events as f64 / rows[0].secs
    );
    for (row, n) in rows[1..].iter().zip(processes) {
        text += &format!(
            "catch_up_{n}_processes_taps={}\ncatch_up_{n}_processes_secs={:.2}\n",
            row.events, row.secs
        );
        if row.cpu.reader > 0.0 {
            text += &format!("catch_up_{n}_processes_cpu_s={:.2}\n", row.cpu.reader);
        }
    }
    let path = dir.join("dataflow.txt");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => println!("results for scripts/capacity.py: {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
