//! `emostream-bench-ingest` (run as `scripts/bench_ingest.sh`): the ingest benchmark's driver. In
//! one run on this machine:
//!
//! 1. `POST /send_emoji` from CONNECTIONS concurrent wrk connections (the same wrk script, the same
//!    bodies) against four targets, each row a ratio to the first, with p50/p99 — the
//!    decomposition of where a single tap's cost goes:
//!    a. nginx `return 200`: the machine's ceiling for an HTTP answer;
//!    b. bare axum (gateway/examples/bare_http.rs): the gateway's HTTP stack answering 200 after
//!    reading the body, and nothing else;
//!    c. the gateway in fire-and-forget mode: 200 once the taps are queued for the producer;
//!    d. the gateway in durable mode (the default): 200 only after acks=all from the broker.
//!
//!    Each row is decomposed too: per answered request, the CPU-µs of the server, of wrk (the
//!    load generator, on the same cores: its own rusage), of the broker with its PostgreSQL, of
//!    anything else that ran (`/proc/stat` busy time less those three), and the cores' idle
//!    time, adding up to cores × duration / requests; for the gateway rows its records per second
//!    and taps per record (its `/metrics`), and with SYSCALLS the server's system calls per
//!    request.
//! 2. `POST /v1/streams/{stream}/emojis` with 10,000-emoji batches from BATCH_CONNECTIONS
//!    connections: emojis per second *landed in Kafka*, counted by reading the topic back
//!    (gateway/examples/count_events.rs), against the broker's own ceiling measured right after:
//!    the same records produced straight to the broker with the gateway's producer settings, all
//!    in flight (gateway/examples/produce_batches.rs).
//!
//! The broker is Nisshi 0.8.1 (scripts/broker.sh, through the testkit's [`Broker`]) with the
//! storage engine of STORAGE (sqlite, postgres or memory; default: the configuration's,
//! postgres), named in the report. Every tap carries a random user id out of ten million (the
//! real load is many phones each sending little), so the per-user token bucket stays in the path
//! without tripping; the per-IP bucket is raised, since all of wrk's connections come from one
//! address. Everything runs on 127.0.0.1 and is stopped at exit, Ctrl-C and SIGTERM included.
//!
//! Settings are the script's environment variables: DURATION (10s), CONNECTIONS (1000),
//! BATCH_CONNECTIONS (16), THREADS (wrk's, 2), STORAGE, PROFILE (a perf profile of the server in
//! each phase), SYSCALLS, RESULTS_DIR (.run/bench). The report goes to stdout, progress to stderr,
//! and RESULTS_DIR/ingest.txt gets the figures scripts/capacity.py reads. The binaries are the
//! release ones beside this one; wrk, nginx (or /usr/sbin/nginx) and, for PROFILE and SYSCALLS,
//! perf come from the PATH.

#[path = "../limits.rs"]
mod limits;

use emostream_protocol::Config;
use emostream_testkit::{bin_dir, free_port, http, procfs, Broker, Process, Scratch};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Parser)]
#[command(
    name = "emostream-bench-ingest",
    about = "The ingest benchmark (scripts/bench_ingest.sh): single taps against nginx, bare \
             axum and the gateway in both ack modes, then batches landed in Kafka against a bare \
             produce.",
    after_help = "Settings are environment variables: DURATION=10s CONNECTIONS=1000 \
                  BATCH_CONNECTIONS=16 THREADS=2 STORAGE=postgres|sqlite|memory PROFILE=1 \
                  SYSCALLS=1 RESULTS_DIR=.run/bench"
)]
struct Args {}

/// The user ids of the single-tap bodies and the per-request Lua cost are the same for every
/// target. wrk's `done` prints: requests duration_us non2xx socket_errors p50_us p99_us.
const SINGLE_LUA: &str = r#"local emojis = {"🔥", "👍🏽", "❤️", "😂", "👨‍👩‍👧", "🇮🇳"}
init = function(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
request = function()
  local body = string.format(
    '{"user_id":"user-%d","emoji_type":"%s","timestamp":"2024-11-05T10:00:00.000Z"}',
    math.random(1, 10000000), emojis[math.random(1, #emojis)])
  return wrk.format("POST", "/send_emoji", {["Content-Type"] = "application/json"}, body)
end
"#;

/// Batches of 10,000 emojis; 100 distinct bodies cover a million distinct users, so no user's
/// bucket (50 taps/s) runs dry at a million taps per second.
const BATCH_LUA: &str = r#"local emojis = {"🔥", "👍🏽", "❤️", "😂", "👨‍👩‍👧", "🇮🇳"}
local bodies = {}
local n = 0
init = function(args)
  for b = 1, 100 do
    local items = {}
    for i = 1, 10000 do
      items[i] = string.format('{"user_id":"user-%d","emoji":"%s"}', b * 10000 + i, emojis[(i % #emojis) + 1])
    end
    bodies[b] = "[" .. table.concat(items, ",") .. "]"
  end
  n = math.random(1, 100)
end
request = function()
  n = n % 100 + 1
  return wrk.format("POST", "/v1/streams/bench-batch/emojis", {["Content-Type"] = "application/json"}, bodies[n])
end
"#;

const DONE_LUA: &str = r#"done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"#;

/// The gateway's records acknowledged so far: its broker-ack histogram's count.
const ACKED_SERIES: &str = "emostream_gateway_broker_ack_seconds_count";

fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "[bench] {message}");
}

struct Settings {
    /// As given (`10s`), for wrk and the report.
    duration: String,
    secs: u64,
    connections: u64,
    batch_connections: u64,
    threads: u64,
    profile: bool,
    syscalls: bool,
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v}: not a number")),
        Err(_) => Ok(default),
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let duration = std::env::var("DURATION").unwrap_or_else(|_| "10s".into());
        // wrk takes 10s or 2m; perf's `sleep` beside it needs the seconds.
        let secs = match duration.strip_suffix('m') {
            Some(minutes) => minutes.parse::<u64>().map(|m| m * 60),
            None => duration.trim_end_matches('s').parse::<u64>(),
        }
        .map_err(|_| format!("DURATION={duration}: seconds (10s) or minutes (2m)"))?;
        Ok(Settings {
            duration,
            secs,
            connections: env_number("CONNECTIONS", 1000)?,
            batch_connections: env_number("BATCH_CONNECTIONS", 16)?,
            threads: env_number("THREADS", 2)?,
            profile: env_set("PROFILE"),
            syscalls: env_set("SYSCALLS"),
        })
    }
}

/// Everything the run started, stopped when the run ends however it ends: the servers
/// (SIGTERM, so nginx takes its workers along), then the broker with its PostgreSQL, then the
/// work folder. Fields drop in this order after `drop`.
struct Rig {
    servers: Vec<Process>,
    broker: Option<Broker>,
    /// Held for its drop, which removes the work folder.
    _scratch: Scratch,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for server in &self.servers {
            server.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for server in &mut self.servers {
            server.wait_until(deadline);
        }
    }
}

/// The rig, where the signal thread can stop it too; wrk's pid while it runs.
static RIG: Mutex<Option<Rig>> = Mutex::new(None);
static WRK: AtomicU32 = AtomicU32::new(0);

fn with_rig<T>(f: impl FnOnce(&mut Rig) -> T) -> T {
    let mut rig = RIG.lock().unwrap_or_else(|e| e.into_inner());
    f(rig.as_mut().expect("the rig is set up before it is used"))
}

fn stop_rig() {
    let rig = RIG.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(rig);
}

/// SIGINT, SIGTERM and SIGHUP go to a thread that stops the rig and exits: the processes the
/// run started (the broker's PostgreSQL too) must not outlive an interrupted run. Handlers, not
/// a blocked mask: a child inherits the mask (and would ignore SIGTERM), while exec resets
/// handlers.
fn handle_signals() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime for signals: {e}"))?;
    // Registered here, before any child exists; waited on in the thread.
    let mut streams = {
        let _context = runtime.enter();
        [
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGHUP, SignalKind::hangup()),
        ]
        .map(|(number, kind)| (number, signal(kind)))
    };
    if let Some((_, Err(e))) = streams.iter().find(|(_, s)| s.is_err()) {
        return Err(format!("signal handlers: {e}"));
    }
    std::thread::spawn(move || {
        let number = runtime.block_on(async {
            let [(int, a), (term, b), (hup, c)] = &mut streams;
            let (a, b, c) = (a.as_mut().ok()?, b.as_mut().ok()?, c.as_mut().ok()?);
            tokio::select! {
                _ = a.recv() => Some(*int),
                _ = b.recv() => Some(*term),
                _ = c.recv() => Some(*hup),
            }
        });
        let number = number.unwrap_or(libc::SIGTERM);
        say(&format!("signal {number}: stopping everything"));
        let wrk = WRK.load(Ordering::Relaxed);
        if wrk != 0 {
            // SAFETY: kill(2) on wrk, our child, which `run_wrk` has not reaped yet (it clears
            // the pid before it reaps).
            unsafe { libc::kill(wrk as libc::pid_t, libc::SIGTERM) };
        }
        // The lock stays held until the exit, so the main thread, whose wrk just ended, waits
        // at its next use of the rig instead of running on (or returning) meanwhile.
        let mut rig = RIG.lock().unwrap_or_else(|e| e.into_inner());
        drop(rig.take());
        std::process::exit(128 + number);
    });
    Ok(())
}

fn main() -> ExitCode {
    let _: Args = clap::Parser::parse();
    let outcome = handle_signals().map(|()| std::panic::catch_unwind(run));
    let outcome = match outcome {
        Ok(caught) => caught,
        Err(e) => Ok(Err(e)),
    };
    stop_rig();
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let _ = writeln!(std::io::stderr(), "emostream-bench-ingest: {e}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// What one wrk phase measured.
#[derive(Default)]
struct Phase {
    requests: u64,
    duration_us: u64,
    non2xx: u64,
    socket_errors: u64,
    p50_us: u64,
    p99_us: u64,
    server_s: f64,
    broker_s: f64,
    wrk_s: f64,
    busy_s: f64,
    idle_s: f64,
    /// Records the gateway had acknowledged meanwhile (0 for nginx and bare axum).
    records: u64,
    syscalls: Option<u64>,
}

impl Phase {
    fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.non2xx)
    }

    /// Answered requests per second, whole, as the report prints it.
    fn rate(&self) -> f64 {
        (self.ok() as f64 / (self.duration_us as f64 / 1e6)).round()
    }
}

/// A phase's target: the server's processes under load, and its `/metrics` for a gateway.
struct Target<'a> {
    name: &'a str,
    url: String,
    pids: Vec<u32>,
    metrics: Option<String>,
}

struct Bench {
    settings: Settings,
    runtime: tokio::runtime::Runtime,
    work: PathBuf,
}

impl Bench {
    fn records_acked(&self, metrics: Option<&str>) -> u64 {
        let Some(addr) = metrics else { return 0 };
        let Ok(answer) = self.runtime.block_on(http::get(addr, "/metrics")) else {
            return 0;
        };
        (answer.body.lines())
            .find_map(|line| line.strip_prefix(ACKED_SERIES)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// `perf ARGS -p PIDS -- sleep DURATION` beside wrk, on the server's processes.
    fn perf(&self, args: &[&str], pids: &[u32]) -> Result<std::process::Child, String> {
        let targets: Vec<String> = pids.iter().map(u32::to_string).collect();
        Command::new("perf")
            .args(args)
            .args(["-p", &targets.join(","), "--", "sleep"])
            .arg(self.settings.secs.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf: {e}"))
    }

    /// wrk against `target` with `script`, and where the machine's CPU went meanwhile. PROFILE
    /// adds a perf profile of the server, SYSCALLS its system calls (perf's raw_syscalls
    /// tracepoint: it slows each call a little, so it is off by default).
    fn run_wrk(&self, target: &Target, script: &Path, connections: u64) -> Result<Phase, String> {
        let name = target.name;
        let server_cpu = || {
            target
                .pids
                .iter()
                .map(|p| procfs::cpu_secs(*p))
                .sum::<f64>()
        };
        let broker_cpu = || with_rig(|r| r.broker.as_ref().map_or(0.0, Broker::cpu_secs));
        let (server0, broker0) = (server_cpu(), broker_cpu());
        let (busy0, idle0) = (procfs::machine_busy_secs(), procfs::machine_idle_secs());
        let records0 = self.records_acked(target.metrics.as_deref());
        let perf_data = self.work.join(format!("perf.{name}"));
        let syscalls_file = self.work.join(format!("syscalls.{name}"));
        let perf = if self.settings.profile {
            let out = perf_data.to_string_lossy();
            Some(self.perf(&["record", "-F", "499", "-g", "-o", &out], &target.pids)?)
        } else {
            None
        };
        let sys = if self.settings.syscalls {
            let out = syscalls_file.to_string_lossy();
            let args = ["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-o", &out];
            Some(self.perf(&args, &target.pids)?)
        } else {
            None
        };

        let mut wrk = Command::new("wrk")
            .arg(format!("-t{}", self.settings.threads))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}", self.settings.duration))
            .args(["--timeout", "10s", "-s"])
            .arg(script)
            .arg(&target.url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("wrk: {e}"))?;
        WRK.store(wrk.id(), Ordering::Relaxed);
        let mut output = String::new();
        let _ = wrk
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut output);
        // Waited for without reaping, so that the pid stays wrk's until the signal thread can
        // no longer see it; then reaped with wait4 rather than Child::wait, which also gives
        // wrk's own user and system time.
        let pid = wrk.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: all-zero siginfo_t and rusage are valid for waitid(2) and wait4(2) to fill;
        // the pid is our child, not reaped before the wait4.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            );
            WRK.store(0, Ordering::Relaxed);
            libc::wait4(pid, &mut status, 0, &mut usage)
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let wrk_s = seconds(usage.ru_utime) + seconds(usage.ru_stime);

        let mut phase = Phase {
            server_s: server_cpu() - server0,
            broker_s: broker_cpu() - broker0,
            wrk_s,
            busy_s: procfs::machine_busy_secs() - busy0,
            idle_s: procfs::machine_idle_secs() - idle0,
            records: self
                .records_acked(target.metrics.as_deref())
                .saturating_sub(records0),
            ..Phase::default()
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("wrk.log"))
            .and_then(|mut log| log.write_all(output.as_bytes()))
            .map_err(|e| format!("wrk.log: {e}"))?;
        let result: Vec<u64> = (output.lines())
            .find_map(|l| l.strip_prefix("RESULT "))
            .map(|r| {
                r.split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let [requests, duration_us, non2xx, socket_errors, p50_us, p99_us] = result[..] else {
            return Err(format!(
                "wrk ({name}, status {reaped}/{status}) gave no RESULT line:\n{output}"
            ));
        };
        (phase.requests, phase.duration_us, phase.non2xx) = (requests, duration_us, non2xx);
        (phase.socket_errors, phase.p50_us, phase.p99_us) = (socket_errors, p50_us, p99_us);
        say(&format!(
            "{name}: server {:.2} CPU s, broker {:.2}, wrk {:.2}; machine busy {:.2}, idle {:.2}",
            phase.server_s, phase.broker_s, phase.wrk_s, phase.busy_s, phase.idle_s
        ));
        if let Some(mut sys) = sys {
            let _ = sys.wait();
            phase.syscalls = std::fs::read_to_string(&syscalls_file)
                .ok()
                .and_then(|text| {
                    let line = text.lines().find(|l| l.contains("raw_syscalls"))?;
                    line.split(',').next()?.trim().parse().ok()
                });
        }
        if let Some(mut perf) = perf {
            let _ = perf.wait();
            say(&format!(
                "perf: where the server's time goes ({name}), self time by symbol"
            ));
            self.perf_report(
                &perf_data,
                &["--sort", "symbol", "--percent-limit", "1.5"],
                25,
            );
            say(&format!("perf: by shared object ({name})"));
            self.perf_report(&perf_data, &["--sort", "dso"], 8);
        }
        Ok(phase)
    }

    /// The first `lines` rows of a perf report, to stderr.
    fn perf_report(&self, data: &Path, sort: &[&str], lines: usize) {
        let Ok(out) = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(data)
            .arg("--no-children")
            .args(sort)
            .arg("--stdio")
            .stderr(Stdio::null())
            .output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let rows = text.lines().filter(|l| {
            let digits = l.trim_start_matches(' ');
            digits.len() < l.len() && digits.starts_with(|c: char| c.is_ascii_digit())
        });
        for row in rows.take(lines) {
            let _ = writeln!(std::io::stderr(), "{row}");
        }
    }
}

/// Polls `path` on `addr` until it answers (200 if `need_ok`), failing if `pid` exits first
/// (with its log) or a minute passes.
fn wait_ready(
    runtime: &tokio::runtime::Runtime,
    what: &str,
    addr: &str,
    need_ok: bool,
    pid: u32,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match runtime.block_on(http::get(addr, if need_ok { "/readyz" } else { "/" })) {
            Ok(answer) if answer.status == 200 || !need_ok => return Ok(()),
            _ => {}
        }
        if matches!(procfs::state(pid), None | Some('Z')) || Instant::now() >= deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{what} did not come up on {addr}:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whitespace-separated fields of a helper's one-line answer.
fn fields(what: &str, command: &mut Command) -> Result<Vec<String>, String> {
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn number<T: std::str::FromStr>(what: &str, fields: &[String], i: usize) -> Result<T, String> {
    (fields.get(i).and_then(|f| f.parse().ok()))
        .ok_or_else(|| format!("{what}: no number at field {} of {fields:?}", i + 1))
}

/// The nginx configuration: a no-op endpoint answering what the gateway answers.
fn nginx_conf(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      default_type application/json;
      return 200 '{{"status":"accepted","accepted":1,"epoch":0}}';
    }}
  }}
}}
"#
    )
}

/// One row of the single-tap table, its ratio to nginx's answered requests per second.
fn row(label: &str, p: &Phase, nginx_rate: f64) -> String {
    let r = p.rate();
    format!(
        "{label:<26} {r:>9}  {:>5.2}  {:>8.1}  {:>8.1}  {:>8}  {}",
        r / nginx_rate,
        p.p50_us as f64 / 1e3,
        p.p99_us as f64 / 1e3,
        p.non2xx,
        p.socket_errors
    )
}

/// Where a row's CPU went, per answered request, in CPU-µs: every microsecond of the machine's
/// cores over the phase is in one column (the columns add up to cores × duration / requests);
/// and the gateway's records per second and taps per record.
fn cost(label: &str, p: &Phase, cores: usize) -> String {
    let ok = p.ok().max(1) as f64;
    let u = 1e6 / ok;
    let other = (p.busy_s - p.server_s - p.broker_s - p.wrk_s).max(0.0);
    let secs = p.duration_us as f64 / 1e6;
    let sys = (p.syscalls).map_or("-".to_string(), |c| format!("{:.1}", c as f64 / ok));
    let (per_s, per_record) = if p.records > 0 {
        let rec = p.records as f64;
        (format!("{:.0}", rec / secs), format!("{:.1}", ok / rec))
    } else {
        ("-".to_string(), "-".to_string())
    };
    format!(
        "{label:<26} {:>7.1}  {:>6.1}  {:>6.1}  {:>6.1}  {:>6.1}  {:>7.1}  {sys:>9}  {per_s:>8}  {per_record:>8}",
        p.server_s * u,
        p.wrk_s * u,
        p.broker_s * u,
        other * u,
        p.idle_s * u,
        cores as f64 * p.duration_us as f64 / ok,
    )
}

fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    // 1,000 connections on each side of loopback, plus the gateway's own files; the servers
    // and wrk inherit the limit.
    let open_files = limits::raise_descriptor_limit();
    if open_files < 20_000 {
        return Err(format!(
            "open files: the limit is {open_files}, 20000 needed"
        ));
    }
    if let Ok(storage) = std::env::var("STORAGE") {
        if !storage.is_empty() {
            // Read by the broker (scripts/broker.sh) and by Config::load below.
            std::env::set_var("EMOSTREAM_DEV_BROKER__STORAGE", storage);
        }
    }
    let bin = bin_dir();
    // Debian installs nginx in /usr/sbin, which a user's PATH may lack.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let nginx_bin = (std::env::split_paths(&path).map(|dir| dir.join("nginx")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;

    let scratch = Scratch::new("bench-ingest");
    let work = scratch.path().to_path_buf();
    *RIG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Rig {
        servers: Vec::new(),
        broker: None,
        _scratch: scratch,
    });
    let (gateway_port, nginx_port, bare_port, ff_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (broker, _) = Broker::start(&work, |address| {
        format!(
            "[kafka]\nbrokers = \"{address}\"\nevents_partitions = 4\n[gateway]\n\
             listen = \"127.0.0.1:{gateway_port}\"\nip_requests_per_s = 1000000000\n\
             ip_burst_requests = 1000000000\nip_taps_per_s = 1000000000\n\
             ip_burst_taps = 1000000000\n[dataflow]\nprocesses = [\"127.0.0.1:2101\"]\n\
             [broadcaster]\nmain = \"127.0.0.1:9000\"\nclusters = []\n"
        )
    });
    let config = broker.config_path().to_path_buf();
    let brokers = broker.address();
    with_rig(|r| r.broker = Some(broker));
    let storage = Config::load(&config)
        .map_err(|e| format!("{}: {e}", config.display()))?
        .dev_broker
        .storage
        .name();

    let gateway = |ack: Option<(&str, u16)>| {
        let mut command = Command::new(bin.join("emostream-gateway"));
        command.arg("--config").arg(&config).env("RUST_LOG", "warn");
        if let Some((mode, port)) = ack {
            command
                .env("EMOSTREAM_GATEWAY__ACK_MODE", mode)
                .env("EMOSTREAM_GATEWAY__LISTEN", format!("127.0.0.1:{port}"));
        }
        command
    };
    let nginx_dir = work.join("nginx");
    std::fs::create_dir_all(&nginx_dir).map_err(|e| format!("{}: {e}", nginx_dir.display()))?;
    std::fs::write(
        nginx_dir.join("nginx.conf"),
        nginx_conf(&nginx_dir, nginx_port),
    )
    .map_err(|e| format!("nginx.conf: {e}"))?;
    let mut nginx = Command::new(&nginx_bin);
    nginx
        .arg("-c")
        .arg(nginx_dir.join("nginx.conf"))
        .arg("-p")
        .arg(&nginx_dir);
    let mut bare = Command::new(bin.join("examples/bare_http"));
    bare.args(["--listen", &format!("127.0.0.1:{bare_port}")]);
    // Durable (the default) and, on the same broker, fire-and-forget: idle while the others run.
    let mut servers: [(&str, Command, u16, bool); 4] = [
        ("gateway", gateway(None), gateway_port, true),
        (
            "gateway-ff",
            gateway(Some(("fire_and_forget", ff_port))),
            ff_port,
            true,
        ),
        ("bare", bare, bare_port, false),
        ("nginx", nginx, nginx_port, false),
    ];
    let mut pids = Vec::new();
    for (name, command, _, _) in &mut servers {
        let log = work.join(format!("{name}.log"));
        let process = Process::spawn(name, command, &log);
        pids.push(process.pid());
        with_rig(|r| r.servers.push(process));
    }
    for ((name, _, port, need_ok), pid) in servers.iter().zip(&pids) {
        let log = work.join(format!("{name}.log"));
        let addr = format!("127.0.0.1:{port}");
        wait_ready(&runtime, name, &addr, *need_ok, *pid, &log)?;
    }
    let [durable_pid, ff_pid, bare_pid, nginx_pid] = pids[..] else {
        unreachable!("four servers")
    };
    let mut nginx_pids = vec![nginx_pid];
    nginx_pids.extend(procfs::children(nginx_pid));

    let single = work.join("single.lua");
    let batch = work.join("batch.lua");
    std::fs::write(&single, format!("{SINGLE_LUA}{DONE_LUA}"))
        .and_then(|()| std::fs::write(&batch, format!("{BATCH_LUA}{DONE_LUA}")))
        .map_err(|e| format!("the wrk scripts: {e}"))?;
    let connections = settings.connections;
    let bench = Bench {
        settings,
        runtime,
        work: work.clone(),
    };
    let duration = bench.settings.duration.clone();
    let target =
        |name: &'static str, port: u16, path: &str, pids: Vec<u32>, gateway: bool| Target {
            name,
            url: format!("http://127.0.0.1:{port}{path}"),
            pids,
            metrics: gateway.then(|| format!("127.0.0.1:{port}")),
        };

    say(&format!(
        "nginx return 200: {connections} connections, {duration}"
    ));
    let n = bench.run_wrk(
        &target("nginx", nginx_port, "/send_emoji", nginx_pids, false),
        &single,
        connections,
    )?;
    say(&format!(
        "bare axum 200: {connections} connections, {duration}"
    ));
    let a = bench.run_wrk(
        &target("bare", bare_port, "/send_emoji", vec![bare_pid], false),
        &single,
        connections,
    )?;
    say(&format!(
        "gateway POST /send_emoji (fire-and-forget): {connections} connections, {duration}"
    ));
    let f = bench.run_wrk(
        &target("ff", ff_port, "/send_emoji", vec![ff_pid], true),
        &single,
        connections,
    )?;
    say(&format!(
        "gateway POST /send_emoji (durable): {connections} connections, {duration}"
    ));
    let g = bench.run_wrk(
        &target(
            "single",
            gateway_port,
            "/send_emoji",
            vec![durable_pid],
            true,
        ),
        &single,
        connections,
    )?;
    let batch_connections = bench.settings.batch_connections;
    say(&format!("gateway POST /v1/streams/bench-batch/emojis, 10,000 emojis per request: {batch_connections} connections, {duration}"));
    let path = "/v1/streams/bench-batch/emojis";
    let b = bench.run_wrk(
        &target("batch", gateway_port, path, vec![durable_pid], true),
        &batch,
        batch_connections,
    )?;

    // Every tap of the batch phase, counted in Kafka once every reply is in, over the span of
    // the gateway receive times of its records (first to last record, plus the last one's flush).
    let counted = fields(
        "count_events",
        Command::new(bin.join("examples/count_events")).args([
            "--brokers",
            &brokers,
            "--topic",
            "emoji-events",
            "--stream",
            "bench-batch",
        ]),
    )?;
    let landed: u64 = number("count_events", &counted, 0)?;
    let records: u64 = number("count_events", &counted, 1)?;
    let first_ms: i64 = number("count_events", &counted, 2)?;
    let last_ms: i64 = number("count_events", &counted, 3)?;

    // The broker's own ceiling for the same taps: as many as the gateway landed (at least a
    // million), in 10,000-tap records produced straight to it, on a stream of their own.
    say("bare produce of 10,000-tap records with the gateway's producer settings");
    let ceiling_records = (landed / 10_000).max(100);
    let produced = fields(
        "produce_batches",
        Command::new(bin.join("examples/produce_batches"))
            .arg("--config")
            .arg(&config)
            .args(["--stream", "bench-bare", "--records"])
            .arg(ceiling_records.to_string())
            .args(["--taps", "10000"]),
    )?;
    let p_taps: u64 = number("produce_batches", &produced, 0)?;
    let p_secs: f64 = number("produce_batches", &produced, 1)?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let span_ms = last_ms - first_ms + 100;
    let landed_rate = (landed as f64 / (span_ms as f64 / 1e3)).round();
    let bare_rate = (p_taps as f64 / p_secs).round();
    let nginx_rate = n.rate();
    let threads = bench.settings.threads;
    let rows = [
        ("nginx return 200", &n),
        ("bare axum 200", &a),
        ("gateway fire-and-forget", &f),
        ("gateway durable", &g),
    ];
    let mut report = format!(
        "\n== ingest benchmark ({cores} cores, {duration} per run, wrk -t{threads}; broker Nisshi 0.8.1, storage {storage}) ==\n\
         single tap, POST /send_emoji, {connections} connections (ratio: to nginx)\n\
         target                         req/s  ratio   p50 ms    p99 ms   non-2xx  socket errors\n"
    );
    for (label, phase) in rows {
        report += &row(label, phase, nginx_rate);
        report.push('\n');
    }
    report += &format!(
        "ratio gateway (durable) / nginx: {:.2}\n\
         where each answered request's CPU-us went ({cores} cores; other: what else ran on the machine)\n\
         target                      server     wrk  broker   other    idle  = total  syscalls  records/s  taps/rec\n",
        g.rate() / nginx_rate
    );
    for (label, phase) in rows {
        report += &cost(label, phase, cores);
        report.push('\n');
    }
    report += &format!(
        "batch route, landed      : {landed_rate} emojis/s in Kafka  ({landed} emojis in {records} records over {span_ms} ms of receive time; {} batches of 10,000 answered 202, non-2xx {}, socket errors {}, p50 {} us, p99 {} us)\n\
         bare produce, same broker: {bare_rate} emojis/s  ({p_taps} taps in {} s, every record acknowledged)\n\
         ratio landed / bare      : {:.2}\n",
        b.ok(),
        b.non2xx,
        b.socket_errors,
        b.p50_us,
        b.p99_us,
        produced[1],
        landed_rate / bare_rate
    );
    print!("{report}");
    let _ = std::io::stdout().flush();

    // The figures the capacity model (scripts/capacity.py) reads: per-phase requests and the
    // gateway's own CPU seconds, so it can work per core whatever else shared the machine.
    let results = std::env::var_os("RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".run/bench"));
    std::fs::create_dir_all(&results).map_err(|e| format!("{}: {e}", results.display()))?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%MZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let file = results.join("ingest.txt");
    std::fs::write(
        &file,
        format!(
            "# scripts/bench_ingest.sh, {date}, {cores} cores, storage {storage}, {duration} per phase\n\
             single_requests_ok={}\nsingle_requests_per_s={}\nsingle_p99_us={}\n\
             single_gateway_cpu_s={:.2}\nbatch_emojis_landed={landed}\n\
             batch_emojis_per_s={landed_rate}\nbatch_gateway_cpu_s={:.2}\n",
            g.ok(),
            g.rate(),
            g.p99_us,
            g.server_s,
            b.server_s
        ),
    )
    .map_err(|e| format!("{}: {e}", file.display()))?;
    say(&format!(
        "results for scripts/capacity.py: {}",
        file.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows print as the script's awk printed them (the report's format is a contract:
    /// docs/benchmarks.md quotes it).
    #[test]
    fn rows_print_as_the_script_printed_them() {
        let nginx = Phase {
            requests: 1_341_370,
            duration_us: 10_000_000,
            p50_us: 5_200,
            p99_us: 10_500,
            ..Phase::default()
        };
        let durable = Phase {
            requests: 452_600,
            duration_us: 10_001_000,
            non2xx: 3,
            socket_errors: 7,
            p50_us: 20_100,
            p99_us: 36_506,
            server_s: 8.73,
            broker_s: 4.2,
            wrk_s: 5.1,
            busy_s: 19.9,
            idle_s: 0.05,
            records: 3_800,
            syscalls: Some(905_000),
        };
        assert_eq!(nginx.rate(), 134_137.0);
        assert_eq!(
            row("gateway durable", &durable, nginx.rate()),
            "gateway durable                45255   0.34      20.1      36.5         3  7"
        );
        assert_eq!(
            cost("gateway durable", &durable, 2),
            "gateway durable               19.3    11.3     9.3     4.1     0.1     44.2        2.0       380     119.1"
        );
        assert_eq!(
            cost("nginx return 200", &nginx, 2)
                .split_whitespace()
                .last(),
            Some("-")
        );
    }
}
