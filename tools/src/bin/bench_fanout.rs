//! `emostream-bench-fanout` (run as `scripts/bench_fanout.sh`): the fan-out benchmark's driver —
//! how many concurrent viewers this machine holds, the memory each idle one costs (WebSocket and
//! SSE), and p99 from the main publisher's emit to a viewer having the whole epoch at that load,
//! each level measured RUNS times alternating with two floors (broadcaster, floor with one write
//! per viewer, floor with four, broadcaster, ...). It writes the tables and the figures
//! `scripts/capacity.py` reads.
//!
//! Topology: the main publisher with --synthetic-ms 2000 (every 2 s, stream "main"'s epoch frame of
//! 30 emojis, its trending and sentiment frames and the popular frame, 2.8 KB in four messages, each
//! with end_ms = the moment they are emitted, instead of reading Kafka), 2 cluster publishers,
//! SUBSCRIBERS subscribers, and viewer-swarm processes (emostream-swarm) splitting each level's
//! viewers evenly over the subscribers.
//!
//! Descriptors: every viewer is a socket in a subscriber and one in a swarm. This driver raises the
//! hard limit on open files to /proc/sys/fs/nr_open where it may (root with CAP_SYS_RESOURCE), and
//! the tools raise their soft limit to the hard one. Where it may not (a container without that
//! capability: the hard limit stays what the session was started with), a level is spread over
//! enough swarm processes that each stays under the limit, and the driver refuses to start if a
//! subscriber would have to hold more viewers than its limit allows. Local ports: each viewer's
//! connection is one (127.0.0.1:ephemeral, 127.0.0.1:server port) pair, and Linux shares an
//! ephemeral port among connections to different server ports, so a level needs at most one
//! ephemeral port range (net.ipv4.ip_local_port_range) of viewers per subscriber.
//!
//! What is timed, per viewer and epoch, from the epoch's end_ms (the moment main emitted it):
//! - whole epoch read (the headline): the read() that returned the last bytes of the epoch's last
//!   message (of the four) returned: when an ordinary client has everything about the epoch;
//! - epoch frame read: the same for the epoch frame alone;
//! - stamps: the kernel's receive stamp (SO_TIMESTAMPNS) of the same bytes, reported beside them as
//!   the server-side fan-out time: on loopback the receiving stack runs inside the server's send, so
//!   the stamp says when the server had handed the message over, not when a client had it.
//!
//! The swarms run at normal priority, as ordinary clients do, so they compete for the cores.
//!
//! The floors: SUBSCRIBERS emostream-fanout-floor processes per kind, writing the same frames at the
//! same moments with nothing but writes from one thread, watched by the same swarms: "1 write" joins
//! the epoch's four messages into one write per viewer (what a fan-out that groups an epoch can do
//! at best; the ratio against it is the headline), "4 writes" writes each message separately (what
//! one that sends each message as it comes can do at best). Each broadcaster run is followed by one
//! of each floor, so all see the same machine.
//!
//! A level holds when in every broadcaster run every viewer connected and stayed, no message went
//! missing, and the median over the runs of the whole-epoch read p99 is <= 400 ms; the spread
//! (min-max, median) is reported for the broadcaster and both floors. The run stops at the first
//! level that fails.
//!
//! Memory per connection, read while the viewers are connected and idle: the growth of the
//! subscribers' summed RSS since before the first viewer, per viewer; plus the kernel's: the growth
//! of its slab memory (sockets, their files, epoll entries) and of TCP buffer memory
//! (/proc/net/sockstat), per viewer, halved, as each viewer is two sockets here. The SSE phase
//! (SSE_VIEWERS viewers over GET /v1/streams/main/sse, against the broadcaster only: the floors speak
//! WebSocket) runs last, on subscribers restarted for it, so its growth is measured from an empty
//! start too.
//!
//! Settings are the script's environment variables (LEVELS, RUNS, MEASURE_S, SSE_VIEWERS,
//! SUBSCRIBERS, SWARMS, BASE_PORT, KEEP_GOING, KEEP_WORK, BENCH_LOG, RESULTS_DIR); the binaries
//! are the release ones beside this one.

use emostream_testkit::procfs;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A level holds when the median over its runs of the whole-epoch read p99 is at most this.
const P99_LIMIT_MS: f64 = 400.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| fail(&format!("{name}={v}: not a number"))),
        Err(_) => default,
    }
}

fn fail(message: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "{message}");
    std::process::exit(1);
}

fn step(message: &str) {
    let _ = writeln!(std::io::stderr(), "\n==> {message}");
}

struct Settings {
    levels: Vec<u64>,
    subscribers: usize,
    swarms: u64,
    measure_s: u64,
    runs: usize,
    sse_viewers: u64,
    base_port: u16,
    keep_going: bool,
    keep_work: bool,
    log: String,
}

impl Settings {
    fn from_env() -> Settings {
        let levels = std::env::var("LEVELS").unwrap_or_else(|_| "10000 25000 50000 60000".into());
        Settings {
            levels: levels
                .split_whitespace()
                .map(|l| l.parse().unwrap_or_else(|_| fail(&format!("LEVELS: {l}"))))
                .collect(),
            subscribers: env_or("SUBSCRIBERS", 6),
            swarms: env_or("SWARMS", 4),
            measure_s: env_or("MEASURE_S", 20),
            runs: env_or("RUNS", 5),
            sse_viewers: env_or("SSE_VIEWERS", 10_000),
            base_port: env_or("BASE_PORT", 19_100),
            keep_going: std::env::var_os("KEEP_GOING").is_some_and(|v| !v.is_empty()),
            keep_work: std::env::var_os("KEEP_WORK").is_some_and(|v| !v.is_empty()),
            log: std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(&format!("{path}: {e}")))
        .trim()
        .to_string()
}

/// Descriptors: as many as the kernel allows per process where this process may raise the hard
/// limit (root with CAP_SYS_RESOURCE); otherwise the limit stays and each level is spread over
/// more swarms. The children inherit both limits. Returns (soft, hard, fs.nr_open).
fn raise_limits() -> (u64, u64, u64) {
    let nr_open: u64 = read_trimmed("/proc/sys/fs/nr_open")
        .parse()
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit(2) to fill and setrlimit(2) to read.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_max < nr_open {
            let raised = libc::rlimit {
                rlim_cur: nr_open,
                rlim_max: nr_open,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            } else {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: cannot raise the hard limit on open files ({}) to fs.nr_open \
                     ({nr_open}): no CAP_SYS_RESOURCE; viewers are spread over processes under \
                     {} each",
                    limit.rlim_max,
                    limit.rlim_max
                );
            }
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    (limit.rlim_cur, limit.rlim_max, nr_open)
}

/// The processes of the run, stopped (SIGTERM) when the run ends however it ends; the work
/// folder goes too unless KEEP_WORK.
struct Run {
    bin: PathBuf,
    work: PathBuf,
    keep_work: bool,
    log: String,
    children: Vec<Child>,
}

impl Drop for Run {
    fn drop(&mut self) {
        for child in &self.children {
            // SAFETY: kill(2) on a child of this process, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        if self.keep_work {
            let _ = writeln!(std::io::stderr(), "kept {}", self.work.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

impl Run {
    fn file(&self, name: &str) -> std::fs::File {
        let path = self.work.join(name);
        std::fs::File::create(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())))
    }

    /// A broadcaster role, its output in `name.log`; returns its pid.
    fn broadcaster(&mut self, name: &str, args: &[&str]) -> u32 {
        let log = self.file(&format!("{name}.log"));
        let child = Command::new(self.bin.join("emostream-broadcaster"))
            .arg("--config")
            .arg(self.work.join("cluster.toml"))
            .args(args)
            .env("RUST_LOG", &self.log)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle on a log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("starting {name}: {e}")));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// `count` bare fan-out floors writing `writes` (one or four) per viewer-epoch, on ports
    /// `first`…; returns their URLs.
    fn floors(&mut self, writes: &str, first: u16, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                let port = first + i as u16;
                let log = self.file(&format!("floor-{writes}-{i}.log"));
                let child = Command::new(self.bin.join("emostream-fanout-floor"))
                    .args(["--writes", writes, "--listen", &format!("127.0.0.1:{port}")])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("a second handle on a log"))
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| fail(&format!("starting a floor: {e}")));
                self.children.push(child);
                format!("ws://127.0.0.1:{port}")
            })
            .collect()
    }

    /// SIGTERM to the children with these pids, and waits for them.
    fn stop(&mut self, pids: &[u32]) {
        for child in self.children.iter_mut().filter(|c| pids.contains(&c.id())) {
            // SAFETY: kill(2) on a child of this process, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
        self.children.retain(|c| !pids.contains(&c.id()));
    }
}

/// Subscribers the main publisher lists as live (linked to their cluster, so frames reach them).
fn live_subscribers(main: &str) -> usize {
    let body = (|| {
        let mut conn = TcpStream::connect(main).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            conn,
            "GET /v1/topology HTTP/1.0\r\nHost: {main}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut body = String::new();
        conn.read_to_string(&mut body).ok()?;
        Some(body)
    })();
    body.map_or(0, |b| b.matches("\"url\"").count())
}

fn wait_for_subscribers(main: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = live_subscribers(main);
        if live >= want {
            return;
        }
        if Instant::now() >= deadline {
            fail(&format!("only {live} of {want} subscribers came up"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| procfs::rss_kib(*p)).sum()
}

/// The kernel's memory for sockets: slab (sockets, their files, epoll entries) plus TCP buffers
/// (sockstat's pages), in KiB.
fn kernel_kib() -> u64 {
    let meminfo = read_trimmed("/proc/meminfo");
    let slab: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let sockstat = read_trimmed("/proc/net/sockstat");
    let pages: u64 = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "mem")?;
            words.get(i + 1)?.parse().ok()
        })
        .unwrap_or(0);
    // SAFETY: sysconf(3) only reads.
    let page_kib = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 1024;
    slab + pages * page_kib
}

/// Sockets still open on the local ports given (the servers' side of viewer connections),
/// listeners, closed and TIME-WAIT ones aside, as `ss state connected exclude time-wait` counts.
fn open_sockets(ports: &[u16]) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let port = fields
                        .get(1)
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    // 06 TIME_WAIT, 07 CLOSE, 0A LISTEN.
                    let state = fields.get(3).copied().unwrap_or("0A");
                    port.is_some_and(|p| ports.contains(&p)) && !matches!(state, "06" | "07" | "0A")
                })
                .count()
        })
        .sum()
}

fn ports_of(urls: &[String]) -> Vec<u16> {
    urls.iter()
        .filter_map(|u| u.rsplit(':').next()?.parse().ok())
        .collect()
}

/// What one swarm run measured: the merged swarms' SWARM line, and memory per viewer.
#[derive(Default)]
struct Measure {
    connected: i64,
    dropped: i64,
    missing: i64,
    lagged: i64,
    epochs: i64,
    p50_read: i64,
    p99_read: i64,
    p99_stamp: i64,
    p99_epoch_read: i64,
    p99_epoch_stamp: i64,
    per_rss: f64,
    per_kernel: f64,
}

impl Measure {
    fn per_conn(&self) -> f64 {
        self.per_rss + self.per_kernel
    }

    fn from_swarm_line(line: &str) -> Measure {
        let field = |name: &str| -> i64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| fail(&format!("no {name} in {line}")))
        };
        Measure {
            connected: field("connected"),
            dropped: field("dropped"),
            missing: field("missing"),
            lagged: field("lagged"),
            epochs: field("epochs"),
            p50_read: field("p50_read_ms"),
            p99_read: field("p99_read_ms"),
            p99_stamp: field("p99_stamp_ms"),
            p99_epoch_read: field("p99_epoch_read_ms"),
            p99_epoch_stamp: field("p99_epoch_stamp_ms"),
            ..Measure::default()
        }
    }
}

/// Memory baselines from before any viewer: memory a level frees stays in the subscribers' RSS
/// (the allocator keeps it for reuse), so a per-level baseline would hide the next level's cost.
struct Baseline {
    rss: u64,
    kernel: u64,
}

struct Bench {
    settings: Settings,
    run: Run,
    per_process: u64,
    sub_pids: Vec<u32>,
}

impl Bench {
    /// Swarm processes of `n` viewers in all against `targets`, tagged `tag`, whose servers
    /// listen on `ports`: SWARMS processes, or more where one would hold more than a process may.
    fn swarm(&self, tag: &str, n: u64, targets: &[String], sse: bool, base: &Baseline) -> Measure {
        let work = &self.run.work;
        let count = n.div_ceil(self.per_process).max(self.settings.swarms);
        let mut swarms = Vec::new();
        for s in 0..count {
            let share = n / count + u64::from(s < n % count);
            let mut command = Command::new(self.run.bin.join("emostream-swarm"));
            command
                .args(["--subscribers", &targets.join(",")])
                .args(["--viewers", &share.to_string()])
                .args(["--offset", &s.to_string()])
                .args(["--seconds", &self.settings.measure_s.to_string()])
                .args(["--connect-per-s", "2500", "--out"])
                .arg(work.join(format!("{tag}.json.{s}")))
                .stdin(Stdio::null())
                .stdout(self.run.file(&format!("{tag}.out.{s}")))
                .stderr(self.run.file(&format!("{tag}.err.{s}")));
            if sse {
                command.arg("--sse");
            }
            swarms.push(
                command
                    .spawn()
                    .unwrap_or_else(|e| fail(&format!("starting a swarm: {e}"))),
            );
        }
        let err = |s: u64| std::fs::read_to_string(work.join(format!("{tag}.err.{s}")));
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let ready = (0..count)
                .filter(|s| {
                    err(*s).is_ok_and(|t| t.lines().any(|l| l.starts_with("ALL CONNECTED")))
                })
                .count() as u64;
            if ready >= count {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // A second for the last connections' buffers to settle before memory is read.
        std::thread::sleep(Duration::from_secs(1));
        let (rss1, kernel1) = (rss_kib(&self.sub_pids), kernel_kib());
        if let Some(last) = err(0)
            .ok()
            .and_then(|t| t.lines().last().map(str::to_string))
        {
            let _ = writeln!(std::io::stderr(), "{last}");
        }
        for mut swarm in swarms {
            let _ = swarm.wait();
        }
        let merged = Command::new(self.run.bin.join("emostream-swarm"))
            .arg("merge")
            .args((0..count).map(|s| work.join(format!("{tag}.json.{s}"))))
            .output()
            .unwrap_or_else(|e| fail(&format!("emostream-swarm merge: {e}")));
        let table = String::from_utf8_lossy(&merged.stdout).into_owned();
        let _ = std::fs::write(work.join(format!("{tag}.md")), &table);
        let _ = write!(std::io::stderr(), "{table}");
        let line = table
            .lines()
            .find(|l| l.starts_with("SWARM"))
            .unwrap_or_else(|| fail(&format!("no SWARM line from the {tag} swarms")));
        let mut m = Measure::from_swarm_line(line);
        let per = |before: u64, after: u64, div: f64| {
            let n = m.connected as f64;
            let v = if n > 0.0 {
                (after as f64 - before as f64) / n / div
            } else {
                0.0
            };
            (v * 10.0).round() / 10.0
        };
        m.per_rss = per(base.rss, rss1, 1.0);
        m.per_kernel = per(base.kernel, kernel1, 2.0);
        // The next run starts once the servers have let go of this one's sockets (a floor
        // notices at its next write), so neither its cores nor the memory reading carry them.
        let ports = ports_of(targets);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut left = open_sockets(&ports);
        while left > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            left = open_sockets(&ports);
        }
        if left > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "{left} sockets of the last run still open on ports {ports:?}"
            );
        }
        m
    }
}

/// A number as awk's `%g` prints these: integers bare, halves with their decimals.
fn g(v: f64) -> String {
    format!("{}", (v * 1e6).round() / 1e6)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// "min–max UNIT (median m)".
fn spread(unit: &str, values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{}–{} {unit} (median {})",
        g(min),
        g(max),
        g(median(values))
    )
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}", if b > 0.0 { a / b } else { 0.0 })
}

fn row(n: u64, run: usize, server: &str, m: &Measure, memory: bool) -> String {
    let kib = |v: f64| {
        if memory {
            format!("{v:.1} KiB")
        } else {
            String::new()
        }
    };
    format!(
        "| {n} | {run} | {server} | {} | {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms | {} | {} | {} |\n",
        m.connected, m.dropped, m.missing, m.lagged, m.epochs, m.p50_read, m.p99_read,
        m.p99_stamp, m.p99_epoch_read, m.p99_epoch_stamp, kib(m.per_rss), kib(m.per_kernel),
        kib(m.per_conn())
    )
}

fn main() {
    let settings = Settings::from_env();
    let (soft, hard, nr_open) = raise_limits();
    // The broadcaster keeps 1024 descriptors for itself (RESERVED_DESCRIPTORS), a swarm a few.
    let per_process = soft.saturating_sub(1100).max(1);
    let range = read_trimmed("/proc/sys/net/ipv4/ip_local_port_range");
    let (port_lo, port_hi): (u64, u64) = {
        let mut it = range.split_whitespace().map(|p| p.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let largest = settings
        .levels
        .iter()
        .copied()
        .chain([settings.sse_viewers])
        .max()
        .unwrap_or(0);
    let per_sub = largest.div_ceil(settings.subscribers as u64);
    if per_sub > per_process || per_sub > port_hi - port_lo + 1 {
        fail(&format!(
            "{largest} viewers over {} subscribers is {per_sub} each: more than a process may \
             hold ({per_process}) or than one ephemeral port range serves ({}); raise SUBSCRIBERS",
            settings.subscribers,
            port_hi - port_lo + 1
        ));
    }

    let exe = std::env::current_exe().expect("the executable knows its path");
    let work = std::env::temp_dir().join(format!(
        "emostream-bench.{}.{}",
        std::process::id(),
        emostream_testkit::now_ms()
    ));
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&format!("{}: {e}", work.display())));
    let run = Run {
        bin: exe
            .parent()
            .expect("a binary lives in a folder")
            .to_path_buf(),
        work,
        keep_work: settings.keep_work,
        log: settings.log.clone(),
        children: Vec::new(),
    };

    let base_port = settings.base_port;
    let main_addr = format!("127.0.0.1:{base_port}");
    let per_cluster = settings.subscribers.div_ceil(2);
    // The subscribers share the machine's cores, and their fan-outs run at once: one lane each.
    let mut config = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n\
         [dataflow]\nprocesses = [\"127.0.0.1:0\"]\n[broadcaster]\nmain = \"{main_addr}\"\n\
         subscriber_threads = 1\n"
    );
    let mut subscribers = Vec::new(); // (name, url)
    for c in 0..2usize {
        let listen = base_port + 10 * (c as u16 + 1);
        let mine: Vec<usize> = (0..per_cluster)
            .filter(|i| c * per_cluster + i < settings.subscribers)
            .collect();
        let addresses: Vec<String> = mine
            .iter()
            .map(|i| format!("\"127.0.0.1:{}\"", listen + *i as u16 + 1))
            .collect();
        let _ = write!(
            config,
            "[[broadcaster.clusters]]\nname = \"c{c}\"\nlisten = \"127.0.0.1:{listen}\"\n\
             subscribers = [{}]\n",
            addresses.join(", ")
        );
        for i in mine {
            subscribers.push((
                format!("c{c}-s{i}"),
                format!("ws://127.0.0.1:{}", listen + i as u16 + 1),
            ));
        }
    }
    std::fs::write(run.work.join("cluster.toml"), config).expect("writing the configuration");
    let mut bench = Bench {
        settings,
        run,
        per_process,
        sub_pids: Vec::new(),
    };
    let s = &bench.settings;
    let (runs, sse_viewers, measure_s, subs) = (s.runs, s.sse_viewers, s.measure_s, s.subscribers);
    let levels = s.levels.clone();

    step(&format!(
        "starting main (synthetic, every 2000 ms), 2 clusters, {subs} subscribers"
    ));
    bench
        .run
        .broadcaster("main", &["main", "--synthetic-ms", "2000"]);
    for c in 0..2 {
        let name = format!("c{c}");
        bench.run.broadcaster(&name, &["cluster", "--name", &name]);
    }
    let start_subscribers = |bench: &mut Bench| {
        bench.sub_pids = subscribers
            .iter()
            .map(|(name, _)| bench.run.broadcaster(name, &["subscriber", "--name", name]))
            .collect();
    };
    start_subscribers(&mut bench);
    let urls: Vec<String> = subscribers.iter().map(|(_, u)| u.clone()).collect();
    // The yardsticks (tools/src/bin/fanout_floor.rs): as many bare fan-out processes per kind
    // as subscribers, writing the same frames at the same moments from one thread.
    let floor1 = bench.run.floors("one", base_port + 200, subs);
    let floor4 = bench.run.floors("four", base_port + 300, subs);
    wait_for_subscribers(&main_addr, subs);

    let mut runs_md = String::from(
        "| viewers | run | server | connected | dropped | missing messages | lag notices | whole epochs | whole epoch read p50 | **whole epoch read p99** | whole epoch stamp p99 | epoch frame read p99 | epoch frame stamp p99 | subscriber RSS / viewer | kernel / connection | memory / connection |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut results = String::from(
        "| viewers | runs | connected (fewest) | dropped + missing | **whole epoch read p99, broadcaster** | floor, 1 write | floor, 4 writes | **÷ 1-write floor** | ÷ 4-write floor | epoch frame read p99, broadcaster | whole epoch stamp p99, broadcaster | subscriber RSS / viewer | kernel / connection | memory / connection | held |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut sends = String::from(
        "| viewers | floor | sends per viewer-epoch | whole epoch read p99 (median) | ÷ sends (µs per send) |\n|---|---|---|---|---|\n",
    );
    let mut sse = String::from(
        "| SSE viewers | connected | dropped | missing messages | whole epochs | whole epoch read p50 | **whole epoch read p99** | whole epoch stamp p99 | epoch frame read p99 | subscriber RSS / viewer | kernel / connection | **memory / connection** |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let (mut best, mut best_p99, mut best_stamp) = (0, 0.0, 0.0);
    let (mut last_n, mut last_rss, mut last_kernel) = (0, 0.0, 0.0);
    let (mut last_p99, mut last_floor1, mut last_floor4) = (0.0, 0.0, 0.0);
    let (mut sse_conn, mut sse_p99) = (0.0, 0);
    let mut base = Baseline {
        rss: rss_kib(&bench.sub_pids),
        kernel: kernel_kib(),
    };

    for &n in &levels {
        let (mut b_read, mut f1_read, mut f4_read) = (vec![], vec![], vec![]);
        let (mut b_stamp, mut b_epoch) = (vec![], vec![]);
        let (mut mem_rss, mut mem_kernel, mut mem_conn) = (vec![], vec![], vec![]);
        let (mut fewest, mut lost, mut clean) = (n as i64, 0, true);
        for r in 1..=runs {
            step(&format!("level {n} viewers, run {r} of {runs}: the broadcaster ({subs} subscribers, measuring {measure_s} s)"));
            let b = bench.swarm(&format!("b-{n}-{r}"), n, &urls, false, &base);
            b_read.push(b.p99_read as f64);
            b_stamp.push(b.p99_stamp as f64);
            b_epoch.push(b.p99_epoch_read as f64);
            mem_rss.push(b.per_rss);
            mem_kernel.push(b.per_kernel);
            mem_conn.push(b.per_conn());
            fewest = fewest.min(b.connected);
            lost += b.dropped + b.missing;
            clean &= b.connected >= n as i64 && b.dropped == 0 && b.missing == 0 && b.p99_read >= 0;
            runs_md += &row(n, r, "broadcaster", &b, true);
            step(&format!(
                "level {n} viewers, run {r} of {runs}: the floor, 1 write per viewer-epoch"
            ));
            let f1 = bench.swarm(&format!("f1-{n}-{r}"), n, &floor1, false, &base);
            f1_read.push(f1.p99_read as f64);
            runs_md += &row(n, r, "floor, 1 write", &f1, false);
            step(&format!(
                "level {n} viewers, run {r} of {runs}: the floor, 4 writes per viewer-epoch"
            ));
            let f4 = bench.swarm(&format!("f4-{n}-{r}"), n, &floor4, false, &base);
            f4_read.push(f4.p99_read as f64);
            runs_md += &row(n, r, "floor, 4 writes", &f4, false);
            let _ = writeln!(
                std::io::stderr(),
                "run {r}: whole epoch read p99 {} ms, ÷ 1-write floor ({} ms) {}, ÷ 4-write floor ({} ms) {}",
                b.p99_read,
                f1.p99_read,
                ratio(b.p99_read as f64, f1.p99_read as f64),
                f4.p99_read,
                ratio(b.p99_read as f64, f4.p99_read as f64)
            );
        }
        let (b_med, f1_med, f4_med) = (median(&b_read), median(&f1_read), median(&f4_read));
        let held = clean && b_med <= P99_LIMIT_MS;
        (last_n, last_rss, last_kernel) = (n, median(&mem_rss), median(&mem_kernel));
        (last_p99, last_floor1, last_floor4) = (b_med, f1_med, f4_med);
        let _ = writeln!(
            results,
            "| {n} | {runs} | {fewest} | {lost} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            spread("ms", &b_read),
            spread("ms", &f1_read),
            spread("ms", &f4_read),
            ratio(b_med, f1_med),
            ratio(b_med, f4_med),
            spread("ms", &b_epoch),
            spread("ms", &b_stamp),
            spread("KiB", &mem_rss),
            spread("KiB", &mem_kernel),
            spread("KiB", &mem_conn),
            if held { "yes" } else { "no" }
        );
        // The floors' p99 per send: what one more send per viewer and epoch costs here.
        let per_send = |p99: f64, sends: u64| format!("{:.2}", p99 * 1000.0 / sends as f64);
        let _ = write!(
            sends,
            "| {n} | 1 write | 1 | {} ms | {} µs |\n| {n} | 4 writes | 4 | {} ms | {} µs |\n",
            g(f1_med),
            per_send(f1_med, n),
            g(f4_med),
            per_send(f4_med, 4 * n)
        );
        if !held {
            let _ = writeln!(
                std::io::stderr(),
                "level {n} did not hold (fewest connected {fewest}, dropped + missing {lost}, median whole-epoch read p99 {} ms)",
                g(b_med)
            );
            if bench.settings.keep_going {
                continue;
            }
            break;
        }
        (best, best_p99, best_stamp) = (n, b_med, median(&b_stamp));
    }

    // SSE last, on subscribers started afresh: memory the WebSocket levels freed stays in the
    // subscribers' allocators, and would be reused by (and hide) the SSE viewers' cost.
    if sse_viewers > 0 {
        step(&format!("SSE: restarting the subscribers, then {sse_viewers} viewers over GET /v1/streams/main/sse (measuring {measure_s} s)"));
        let pids = bench.sub_pids.clone();
        bench.run.stop(&pids);
        let deadline = Instant::now() + Duration::from_secs(10);
        while live_subscribers(&main_addr) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        start_subscribers(&mut bench);
        wait_for_subscribers(&main_addr, subs);
        // An epoch (every 2 s) first, so that the baseline holds what every subscriber
        // allocates for its first frames (the hub's ring), as the first baseline did.
        std::thread::sleep(Duration::from_secs(2));
        base = Baseline {
            rss: rss_kib(&bench.sub_pids),
            kernel: kernel_kib(),
        };
        let m = bench.swarm(
            &format!("sse-{sse_viewers}"),
            sse_viewers,
            &urls,
            true,
            &base,
        );
        (sse_conn, sse_p99) = (m.per_conn(), m.p99_read);
        let _ = writeln!(
            sse,
            "| {sse_viewers} | {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {:.1} KiB | {:.1} KiB | {:.1} KiB |",
            m.connected, m.dropped, m.missing, m.epochs, m.p50_read, m.p99_read, m.p99_stamp,
            m.p99_epoch_read, m.per_rss, m.per_kernel, m.per_conn()
        );
        runs_md += &row(sse_viewers, 1, "broadcaster, SSE", &m, true);
    }

    step("every run, then per level");
    let legend = format!(
        "whole epoch read (the headline): epoch end_ms → the viewer's read() of the last bytes of the epoch's
last message (of four) returned; epoch frame read: the same for the epoch frame alone. stamp: → the
kernel's receive stamp of the same bytes, the server-side fan-out time (on loopback the receive runs
inside the server's send), not receipt. Normal-priority swarms, every viewer, every epoch.
Spreads are min–max (median) over {runs} runs, broadcaster and the two floors alternating.
floor, 1 write / 4 writes: the same swarms against bare single-threaded write loops of the same
frames (no tiers, no pings), the epoch's four messages joined in one write per viewer, or one write each.
memory / connection = subscriber RSS / viewer (growth since before any viewer) + kernel / connection
(growth of slab and TCP buffer memory, halved, as each viewer is two sockets on this machine).
open files per process: {soft} (hard {hard}, fs.nr_open {nr_open}); ephemeral ports {port_lo}–{port_hi}.
"
    );
    let mut tables = format!("{runs_md}\n{results}\n{sends}\n");
    if sse_viewers > 0 {
        tables += &format!("{sse}\n");
    }
    tables += &legend;
    let _ = write!(std::io::stderr(), "{tables}");
    let _ = writeln!(
        std::io::stderr(),
        "largest level held: {best} viewers (target: >= 50000; <= 12 KiB per WebSocket connection, <= 16 KiB per SSE one; whole epoch read p99 <= {P99_LIMIT_MS} ms and <= 1.15 x the 1-write floor)"
    );

    // The figures the capacity model (scripts/capacity.py) reads: the largest level held, and
    // the memory per viewer of the last level measured (memory does not depend on how loaded
    // the cores were). p99 figures are medians over the level's runs of the whole-epoch read p99.
    let results_dir = std::env::var_os("RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_dir()
                .expect("a working directory")
                .join(".run/bench")
        });
    std::fs::create_dir_all(&results_dir)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", results_dir.display())));
    std::fs::write(results_dir.join("fanout.md"), &tables).expect("writing fanout.md");
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%MZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let level_list: Vec<String> = levels.iter().map(u64::to_string).collect();
    let txt = format!(
        "# scripts/bench_fanout.sh, {date}, {cores} cores, {subs} subscribers, {runs} runs per level, levels {}
machine_cores={cores}
runs_per_level={runs}
held_viewers={best}
held_p99_ms={}
held_stamp_p99_ms={}
p99_limit_ms={}
last_level_viewers={last_n}
last_level_p99_ms={}
last_level_floor_p99_ms={}
last_level_floor4_p99_ms={}
subscriber_rss_per_viewer_kib={}
kernel_per_viewer_kib={}
sse_viewers={sse_viewers}
sse_per_viewer_kib={}
sse_p99_ms={sse_p99}
",
        level_list.join(" "),
        g(best_p99),
        g(best_stamp),
        g(P99_LIMIT_MS),
        g(last_p99),
        g(last_floor1),
        g(last_floor4),
        g(last_rss),
        g(last_kernel),
        g(sse_conn),
    );
    std::fs::write(results_dir.join("fanout.txt"), txt).expect("writing fanout.txt");
    let _ = writeln!(
        std::io::stderr(),
        "tables: {}; results for scripts/capacity.py: {}",
        results_dir.join("fanout.md").display(),
        results_dir.join("fanout.txt").display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads_print_as_the_tables_had_them() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(
            spread("ms", &[505.0, 564.0, 526.0]),
            "505–564 ms (median 526)"
        );
        assert_eq!(spread("KiB", &[5.3, 6.1]), "5.3–6.1 KiB (median 5.7)");
        assert_eq!(ratio(526.0, 411.0), "1.28");
        assert_eq!(ratio(1.0, 0.0), "0.00");
        assert_eq!(g(162.0), "162");
    }

    #[test]
    fn a_swarm_line_gives_every_field() {
        let m = Measure::from_swarm_line(
            "SWARM connected=100 failed=0 dropped=1 frames=9 epochs=3 missing=2 lagged=0 \
             p50_read_ms=5 p99_read_ms=-1 p99_stamp_ms=7 p50_epoch_read_ms=4 \
             p99_epoch_read_ms=8 p99_epoch_stamp_ms=6",
        );
        assert_eq!(
            (
                m.connected,
                m.dropped,
                m.missing,
                m.epochs,
                m.p50_read,
                m.p99_read
            ),
            (100, 1, 2, 3, 5, -1)
        );
        assert_eq!(
            (m.p99_stamp, m.p99_epoch_read, m.p99_epoch_stamp),
            (7, 8, 6)
        );
    }
}
