//! `emostream-dev-broker` (run as `scripts/broker.sh`): the Kafka-protocol broker for
//! development, tests and the local run — Nisshi 0.8.1, on the address and with the storage
//! engine that cluster.toml's `[dev_broker]` names, read as the tiers read it (the file plus the
//! `EMOSTREAM_*` overrides). Nisshi is installed once into a per-user cache outside the clone
//! (`${EMOSTREAM_CACHE:-~/.cache/emostream}`), so a fresh clone (CI included) reuses it; Nisshi
//! 0.8 needs rustc 1.96 or later, so it is built with the nightly toolchain (about 18 minutes on
//! 2 cores, once).
//!
//! ```text
//! install                 build Nisshi once (a no-op once built), and PostgreSQL's server
//! start [flags]           start in the background, wait until it answers, create the topics
//!                         and check that the broker lists them
//! stop  [--data DIR]      SIGTERM, SIGKILL after 7 s; then stop its PostgreSQL
//! kill  [--data DIR]      SIGKILL the broker only (crash tests); start resumes
//! path                    print the nisshi binary's path
//! ```
//!
//! `--port P` overrides the port of both the listen and the advertised address (their hosts stay
//! as configured); `--data DIR` (default `.run/broker` of the clone) holds everything the broker
//! keeps: broker.pid, broker.log, and the storage. `--storage` overrides the configured engine:
//! `sqlite` (`DIR/nisshi.db`; the broker runs inside DIR), `postgres` (a private PostgreSQL server,
//! postgres.rs), `memory` (nothing survives a stop). `--cert`/`--key` make the listener TLS-only;
//! Nisshi's own command-line client speaks plaintext, so topics are then the caller's to create.

mod postgres;

use clap::{Args, Parser, Subcommand};
use emostream_protocol::config::DevStorage;
use emostream_protocol::Config;
use emostream_testkit::procfs;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const NISSHI_VERSION: &str = "0.8.1";

#[derive(Debug, Parser)]
#[command(
    name = "scripts/broker.sh",
    bin_name = "scripts/broker.sh",
    about = "The development broker (Nisshi 0.8.1)"
)]
struct Cli {
    /// The clone the defaults of --data and --config are in (the script passes its own).
    #[arg(long, hide = true, global = true, default_value = ".")]
    root: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Build Nisshi once into the per-user cache, and install PostgreSQL's server when missing.
    Install,
    /// Start in the background, wait until it answers, create the topics and check them.
    Start(Flags),
    /// SIGTERM, SIGKILL after 7 s; then stop its PostgreSQL.
    Stop(Flags),
    /// SIGKILL the broker only, as a crash; its PostgreSQL keeps running.
    Kill(Flags),
    /// Print the nisshi binary's path.
    Path,
}

#[derive(Debug, Args)]
struct Flags {
    /// Overrides the port of the listen and the advertised address.
    #[arg(long)]
    port: Option<u16>,
    /// Everything the broker keeps (default: .run/broker of the clone).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The cluster configuration (default: cluster.toml of the clone).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides [dev_broker] storage: sqlite, postgres or memory.
    #[arg(long)]
    storage: Option<String>,
    /// A PEM certificate: the listener speaks TLS only.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The certificate's PEM key.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// Messages go to stderr, and one that cannot be written (its reader gone: `up.sh | tee` after
/// Ctrl-C) must not stop the tool half-way, least of all before PostgreSQL is stopped.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "[broker] {message}");
}

fn die(message: &str) -> ! {
    say(message);
    std::process::exit(1);
}

fn main() {
    let cli = Cli::parse();
    let root = cli.root;
    match cli.action {
        Action::Install => {
            install();
            // The default engine's server comes with the broker, so no test installs packages
            // part-way.
            postgres::install();
        }
        Action::Start(flags) => Broker::new(&root, flags).start(),
        Action::Stop(flags) => Broker::new(&root, flags).stop(),
        Action::Kill(flags) => Broker::new(&root, flags).kill(),
        Action::Path => println!("{}", nisshi().display()),
    }
}

fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMOSTREAM_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    base.join("emostream")
}

fn prefix() -> PathBuf {
    cache().join(format!("nisshi-{NISSHI_VERSION}"))
}

fn nisshi() -> PathBuf {
    prefix().join("bin/nisshi")
}

fn runs(command: &mut Command) -> bool {
    command.status().is_ok_and(|s| s.success())
}

/// Builds Nisshi into the cache unless it is there.
fn install() {
    if nisshi().exists() {
        return;
    }
    let cache = cache();
    std::fs::create_dir_all(&cache).unwrap_or_else(|e| die(&format!("{}: {e}", cache.display())));
    // Two callers (say, two test binaries) must not build at once: the second waits for the
    // first and then finds the binary. The lock is the open file's, released when it closes.
    let lock_path = cache.join("install.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| die(&format!("{}: {e}", lock_path.display())));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock(2) on a descriptor this function owns for its whole run.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        say(&format!(
            "another install of Nisshi is under way (lock {}); waiting for it",
            lock_path.display()
        ));
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_EX) };
    }
    if nisshi().exists() {
        return;
    }
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        say(&format!(
            "Nisshi {NISSHI_VERSION} needs rustc >= 1.96: installing the nightly toolchain"
        ));
        if !runs(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ])) {
            die("rustup toolchain install nightly failed");
        }
    }
    say(&format!(
        "installing Nisshi {NISSHI_VERSION} into {} (once per machine; about 18 minutes on 2 cores)",
        prefix().display()
    ));
    // A private target dir keeps the build out of the clone; --locked pins Nisshi's own lock
    // file. The default features give the sqlite (libsql), postgres and memory engines.
    let build = cache.join("nisshi-build");
    let built = runs(
        Command::new("cargo")
            .env("CARGO_TARGET_DIR", &build)
            .args(["+nightly", "install", "--locked", "--root"])
            .arg(prefix())
            .args(["nisshi", "--version", NISSHI_VERSION]),
    );
    let _ = std::fs::remove_dir_all(&build);
    if !built {
        die("cargo +nightly install nisshi failed");
    }
    say(&format!("installed {}", nisshi().display()));
    drop(lock);
}

/// Whether something accepts connections on `host:port` (an IPv6 host in brackets).
fn answers(host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
}

/// Whether `pid` is a live process, not a zombie. The broker outlives this tool, and whatever
/// inherits it may reap it late (or never, in a container): a zombie counts as gone.
fn exists(pid: u32) -> bool {
    procfs::state(pid).is_some_and(|s| s != 'Z')
}

/// Whether `pid` is a live nisshi process (not one that reused a stale pid file's pid).
fn alive(pid: u32) -> bool {
    exists(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
            argv0.ends_with(b"nisshi")
        })
}

/// Waits up to `limit` for `pid`, known to be the broker, to be gone. It asks `exists`, not
/// `alive`: a dying process loses its command line (the kernel releases its memory first) while
/// it still closes its files and sockets, and callers rely on the port and the storage being
/// free once this returns.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while exists(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid checked to be the broker just before.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// `host:port` → (host, port); an IPv6 host keeps its brackets.
fn split_address(address: &str) -> (String, u16) {
    let (host, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| die(&format!("{address}: not host:port")));
    let port = port
        .parse()
        .unwrap_or_else(|_| die(&format!("{address}: not host:port")));
    (host.to_string(), port)
}

/// Runs `command` to its end, or kills it after `limit` (a broker that accepts and never
/// answers must not hang the caller).
fn run_within(command: &mut Command, limit: Duration) -> Option<ExitStatus> {
    let mut child = command.spawn().ok()?;
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log, for a failure's message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Broker {
    flags: Flags,
    data: PathBuf,
    config: PathBuf,
    pidfile: PathBuf,
    log: PathBuf,
}

impl Broker {
    fn new(root: &Path, flags: Flags) -> Broker {
        let data = flags
            .data
            .clone()
            .unwrap_or_else(|| root.join(".run/broker"));
        let config = flags
            .config
            .clone()
            .unwrap_or_else(|| root.join("cluster.toml"));
        let mut broker = Broker {
            flags,
            data,
            config,
            pidfile: PathBuf::new(),
            log: PathBuf::new(),
        };
        broker.set_data();
        broker
    }

    /// Absolute, because the broker runs inside it.
    fn set_data(&mut self) {
        if let Ok(data) = std::fs::canonicalize(&self.data) {
            self.data = data;
        }
        self.pidfile = self.data.join("broker.pid");
        self.log = self.data.join("broker.log");
    }

    fn running_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    fn log_file(&self) -> std::fs::File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| die(&format!("{}: {e}", self.log.display())))
    }

    fn start(mut self) {
        install();
        std::fs::create_dir_all(&self.data)
            .unwrap_or_else(|e| die(&format!("{}: {e}", self.data.display())));
        self.set_data();
        let config = Config::load(&self.config)
            .unwrap_or_else(|e| die(&format!("{}: {e}", self.config.display())));
        let (listen, advertised) = config.dev_broker_addresses();
        let (lhost, mut lport) = split_address(&listen);
        let (ahost, mut aport) = split_address(&advertised);
        if let Some(port) = self.flags.port {
            (lport, aport) = (port, port);
        }
        let mut engine = match &self.flags.storage {
            Some(name) => name.clone(),
            None => config.dev_broker.storage.name().to_string(),
        };
        // The address to connect to a listener bound to `lhost`.
        let chost = match lhost.as_str() {
            "0.0.0.0" | "[::]" | "" => "127.0.0.1".to_string(),
            host => host.to_string(),
        };
        let url = format!("tcp://{chost}:{lport}");

        let pid = match self.running_pid() {
            Some(pid) => {
                // Its engine is the one on its command line.
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                if let Some(i) = args.iter().position(|a| a == "--storage-engine") {
                    let url = args.get(i + 1).cloned().unwrap_or_default();
                    engine = url.split(':').next().unwrap_or_default().to_string();
                }
                say(&format!("already running (pid {pid})"));
                pid
            }
            None => self.launch(&engine, &lhost, lport, &ahost, aport, &chost),
        };

        if self.flags.cert.is_some() {
            say(&format!(
                "Nisshi {NISSHI_VERSION} ({engine}) listening for TLS only on {lhost}:{lport}, \
                 advertised {ahost}:{aport} (pid {pid}, data {}); the topics are the caller's to \
                 create",
                self.data.display()
            ));
            return;
        }
        let topics = config.topic_specs();
        for topic in &topics {
            let mut create = Command::new(nisshi());
            create
                .args(["topic", "create", "--broker", &url, "--partitions"])
                .arg(topic.partitions.to_string());
            for setting in topic.settings {
                create.args(["--config", setting]);
            }
            // An existing topic is refused (exit 1) and left as it is; the listing below checks
            // the result.
            create
                .args(["--silent", &topic.name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(self.log_file());
            let _ = run_within(&mut create, Duration::from_secs(30));
        }
        let listed = self.list_topics(&url).unwrap_or_else(|| {
            die(&format!(
                "could not list the topics on {url}; see {}",
                self.log.display()
            ))
        });
        for topic in &topics {
            if !listed.contains(&topic.name) {
                die(&format!(
                    "topic {} was not created; see {}",
                    topic.name,
                    self.log.display()
                ));
            }
        }
        say(&format!(
            "Nisshi {NISSHI_VERSION} ({engine}) listening on {lhost}:{lport}, advertised \
             {ahost}:{aport} (pid {pid}, data {})",
            self.data.display()
        ));
        let ready: Vec<String> = topics
            .iter()
            .map(|t| format!("{}({})", t.name, t.partitions))
            .collect();
        say(&format!("topics ready: {}", ready.join(" ")));
    }

    /// The names in `nisshi topic list`'s JSON array of the metadata response's topics
    /// (`[{"name":"…",…},…]`).
    fn list_topics(&self, url: &str) -> Option<Vec<String>> {
        let out = self.data.join("topics.json");
        let file = std::fs::File::create(&out).ok()?;
        let status = run_within(
            Command::new(nisshi())
                .args(["topic", "list", "--broker", url])
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(self.log_file()),
            Duration::from_secs(30),
        )?;
        let text = std::fs::read_to_string(&out).ok()?;
        let _ = std::fs::remove_file(&out);
        if !status.success() {
            return None;
        }
        let listed: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
        Some(
            listed
                .iter()
                .filter_map(|t| Some(t.get("name")?.as_str()?.to_string()))
                .collect(),
        )
    }

    /// Starts nisshi in the background and waits until it answers; returns its pid.
    // The broker is meant to outlive this tool: once it answers, its child is left unreaped, and
    // the init process reaps it when it exits.
    #[allow(clippy::zombie_processes)]
    fn launch(
        &self,
        engine: &str,
        lhost: &str,
        lport: u16,
        ahost: &str,
        aport: u16,
        chost: &str,
    ) -> u32 {
        let _ = std::fs::remove_file(&self.pidfile);
        let mut pg = None;
        let storage_url = match engine {
            "sqlite" => "sqlite://nisshi.db".to_string(),
            "memory" => "memory://nisshi/".to_string(),
            "postgres" => {
                let server = postgres::start(&self.data, lport);
                let url = format!(
                    "postgres://postgres:postgres@127.0.0.1:{}/nisshi",
                    server.port
                );
                pg = Some(server);
                url
            }
            other => die(&format!(
                "unknown storage engine '{other}' ({}, {} or {})",
                DevStorage::Sqlite.name(),
                DevStorage::Postgres.name(),
                DevStorage::Memory.name()
            )),
        };
        // A failed start stops the PostgreSQL server it started, and only that one.
        let fail = |message: &str| -> ! {
            if pg.as_ref().is_some_and(|s| s.started) {
                postgres::stop(&self.data);
            }
            die(message)
        };
        if answers(chost, lport) {
            fail(&format!("something already listens on {chost}:{lport}"));
        }
        let started = Instant::now();
        let mut command = Command::new(nisshi());
        command
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{lhost}:{lport}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{ahost}:{aport}"),
            ])
            .args(["--storage-engine", &storage_url]);
        if let (Some(cert), Some(key)) = (&self.flags.cert, &self.flags.key) {
            let absolute = |p: &PathBuf| {
                std::fs::canonicalize(p).unwrap_or_else(|e| die(&format!("{}: {e}", p.display())))
            };
            command
                .arg("--cert")
                .arg(absolute(cert))
                .arg("--key")
                .arg(absolute(key));
        }
        // SQLite paths are relative to the working directory, so the broker runs inside the
        // data folder.
        command
            .current_dir(&self.data)
            .stdin(Stdio::null())
            .stdout(self.log_file())
            .stderr(self.log_file());
        // SAFETY: signal(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // The broker outlives this tool and is stopped by `stop`, in the caller's order
                // (up.sh stops it after the tiers): the terminal's Ctrl-C to the caller's
                // process group must not kill it first, as a shell's background job ignores it.
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut child: Child = command
            .spawn()
            .unwrap_or_else(|e| fail(&format!("starting {}: {e}", nisshi().display())));
        let pid = child.id();
        std::fs::write(&self.pidfile, format!("{pid}\n"))
            .unwrap_or_else(|e| fail(&format!("{}: {e}", self.pidfile.display())));
        let deadline = started + Duration::from_secs(30);
        while !answers(chost, lport) {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = std::fs::remove_file(&self.pidfile);
                say("broker exited; its log:");
                let _ = writeln!(std::io::stderr(), "{}", tail(&self.log, 20));
                fail("the broker did not start");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = std::fs::remove_file(&self.pidfile);
                fail(&format!(
                    "broker did not answer on {chost}:{lport} within 30 s; see {}",
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say(&format!(
            "answering after {} ms",
            started.elapsed().as_millis()
        ));
        pid
    }

    fn stop(self) {
        if let Ok(text) = std::fs::read_to_string(&self.pidfile) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if alive(pid) {
                    signal(pid, libc::SIGTERM);
                    // Nisshi gives its connections 5 s to finish after SIGTERM, then exits.
                    if !wait_gone(pid, Duration::from_secs(7)) {
                        say(&format!(
                            "broker (pid {pid}) still running 7 s after SIGTERM: SIGKILL"
                        ));
                        signal(pid, libc::SIGKILL);
                        if !wait_gone(pid, Duration::from_secs(30)) {
                            die(&format!("broker (pid {pid}) survived SIGKILL"));
                        }
                    }
                    say(&format!("stopped (pid {pid})"));
                }
            }
            let _ = std::fs::remove_file(&self.pidfile);
        }
        postgres::stop(&self.data);
    }

    /// A crash: SIGKILL, nothing else. The pid file stays, as after a crash; start replaces it.
    fn kill(self) {
        let Some(pid) = self.running_pid() else {
            return;
        };
        signal(pid, libc::SIGKILL);
        if !wait_gone(pid, Duration::from_secs(30)) {
            die(&format!("broker (pid {pid}) survived SIGKILL"));
        }
        say(&format!("killed (pid {pid})"));
    }
}
