//! The postgres engine's private PostgreSQL server (Debian's postgresql package, installed when
//! missing): its cluster in `DATA/pg`, its log in `DATA/postgres.log`, listening on 127.0.0.1
//! only, on the broker's port − 10000 (+ 10000 below 11024, or the next free port). `stop`
//! stops it too; `kill` leaves it running. A stop and a start on the same DATA resume with the
//! same topics and records.

use crate::{answers, die, exists, runs, say};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A server [`start`] found or started.
pub struct Server {
    pub port: u16,
    /// Whether this call started it (a failed broker start stops only a server it started).
    pub started: bool,
}

fn root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The newest installed server's bin folder (`/usr/lib/postgresql/<version>/bin`).
fn bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// initdb and pg_ctl refuse to run as root; root runs them as the postgres system user.
fn as_pg(program: &Path) -> Command {
    if root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn pg_ctl(bin: &Path, data: &Path) -> Command {
    let mut command = as_pg(&bin.join("pg_ctl"));
    command.arg("-D").arg(data.join("pg"));
    command
}

pub fn install() {
    if bin().is_some() {
        return;
    }
    let sudo = |args: &[&str]| {
        let mut command = if root() {
            Command::new(args[0])
        } else {
            let mut c = Command::new("sudo");
            c.arg(args[0]);
            c
        };
        command
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null());
        command
    };
    say("installing PostgreSQL (apt-get install postgresql)");
    if !runs(&mut sudo(&["apt-get", "update", "-qq"]))
        || !runs(&mut sudo(&[
            "apt-get",
            "install",
            "-y",
            "-qq",
            "postgresql",
        ]))
    {
        die("apt-get install postgresql failed");
    }
    if bin().is_none() {
        die("apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb");
    }
}

/// Whether the server of `data/pg` runs.
fn running(bin: &Path, data: &Path) -> bool {
    let pg = data.join("pg");
    if !pg.join("PG_VERSION").exists() {
        return false;
    }
    let pidfile = pg.join("postmaster.pid");
    if let Ok(text) = std::fs::read_to_string(&pidfile) {
        // A killed postmaster leaves its pid file, and where nothing reaps orphans (a container
        // whose init does not) its pid stays a zombie, which PostgreSQL takes for a live server.
        let pid = text.lines().next().and_then(|l| l.trim().parse().ok());
        if !pid.is_some_and(exists) {
            let _ = std::fs::remove_file(&pidfile);
            return false;
        }
    }
    runs(
        pg_ctl(bin, data)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// The postgres user must be able to reach `data/pg`: gives o+x to the folders on the way that
/// refuse it (a test's temporary folder is 0700).
fn let_postgres_in(data: &Path) {
    let traverses = |dir: &Path| {
        runs(
            Command::new("runuser")
                .args(["-u", "postgres", "--", "test", "-x"])
                .arg(dir),
        )
    };
    if traverses(data) {
        return;
    }
    let mut opened = Vec::new();
    for dir in data
        .ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .skip(1)
    {
        if !traverses(dir) {
            if let Ok(meta) = std::fs::metadata(dir) {
                let mut mode = meta.permissions();
                mode.set_mode(mode.mode() | 0o001);
                let _ = std::fs::set_permissions(dir, mode);
                opened.push(dir.display().to_string());
            }
        }
    }
    say(&format!(
        "allowed the postgres user to traverse {}",
        opened.join(" ")
    ));
}

fn chown_postgres(paths: &[&Path]) {
    if root() {
        runs(Command::new("chown").arg("postgres:").args(paths));
    }
}

fn append_to(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| die(&format!("{}: {e}", path.display())))
}

/// Starts the server of `data/pg` (creating the cluster and the nisshi database the first time)
/// unless it runs.
pub fn start(data: &Path, broker_port: u16) -> Server {
    install();
    let bin = bin().expect("installed just above");
    let (pg, log) = (data.join("pg"), data.join("postgres.log"));
    if root() {
        let_postgres_in(data);
    }
    if !pg.join("PG_VERSION").exists() {
        say(&format!(
            "creating a PostgreSQL cluster in {}",
            pg.display()
        ));
        let _ = std::fs::remove_dir_all(&pg);
        std::fs::create_dir(&pg).unwrap_or_else(|e| die(&format!("{}: {e}", pg.display())));
        std::fs::set_permissions(&pg, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| die(&format!("{}: {e}", pg.display())));
        let pwfile = data.join(".pgpass-init");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&pwfile)
                .unwrap_or_else(|e| die(&format!("{}: {e}", pwfile.display())));
            let _ = writeln!(f, "postgres");
        }
        chown_postgres(&[&pg, &pwfile]);
        let initialised = runs(
            as_pg(&bin.join("initdb"))
                .arg("-D")
                .arg(&pg)
                .args(["-U", "postgres", "-E", "UTF8", "--locale=C"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
                .stdout(append_to(&log))
                .stderr(append_to(&log)),
        );
        let _ = std::fs::remove_file(&pwfile);
        if !initialised {
            die(&format!("initdb failed; see {}", log.display()));
        }
        // fsync=on keeps the database consistent when the broker process (or PostgreSQL)
        // crashes, which is what the restart tests exercise. synchronous_commit=off lets a
        // commit return once its WAL record is in the WAL buffer, not on disk, and the broker
        // acknowledges a produce after its commit: a crash of the machine (not of a process) can
        // lose the last few hundred ms of acknowledged records, never the database's
        // consistency.
        let _ = append_to(&pg.join("postgresql.conf")).write_all(
            b"\n# scripts/broker.sh: a private server for the development broker.\n\
              listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
              fsync = on\nsynchronous_commit = off\n",
        );
    }
    drop(append_to(&log));
    chown_postgres(&[&log]);
    let server = if running(&bin, data) {
        let port = std::fs::read_to_string(pg.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().nth(3)?.trim().parse().ok())
            .unwrap_or_else(|| die("postmaster.pid names no port"));
        say(&format!("PostgreSQL already running on 127.0.0.1:{port}"));
        Server {
            port,
            started: false,
        }
    } else {
        // 10000 below the broker's port (above it for ports under 11024), so that with the
        // tests' ports, which stay below the kernel's ephemeral range, it stays out of that
        // range too: a port in it may be held by an outgoing connection no probe sees.
        let first = if broker_port >= 11024 {
            broker_port - 10000
        } else {
            broker_port + 10000
        };
        let port = (first..first.saturating_add(100))
            .find(|p| !answers("127.0.0.1", *p))
            .unwrap_or_else(|| die(&format!("no free port for PostgreSQL near {first}")));
        let started = runs(
            pg_ctl(&bin, data)
                .args(["start", "-w", "-t", "60", "-l"])
                .arg(&log)
                .args(["-o", &format!("-p {port}")])
                .stdout(Stdio::null()),
        );
        if !started {
            let _ = writeln!(std::io::stderr(), "{}", crate::tail(&log, 20));
            die(&format!("PostgreSQL did not start; see {}", log.display()));
        }
        Server {
            port,
            started: true,
        }
    };
    let psql = |sql: &str| {
        Command::new(bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres", "-tA", "-c", sql])
            .env("PGPASSWORD", "postgres")
            .stdin(Stdio::null())
            .output()
    };
    let exists = psql("select 1 from pg_database where datname = 'nisshi'")
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1");
    if !exists && !psql("create database nisshi").is_ok_and(|o| o.status.success()) {
        die("could not create database nisshi");
    }
    server
}

/// Stops the server of `data/pg` if it runs.
pub fn stop(data: &Path) {
    let Some(bin) = bin() else {
        return;
    };
    if running(&bin, data) {
        runs(
            pg_ctl(&bin, data)
                .args(["stop", "-m", "fast", "-w", "-t", "60"])
                .stdout(Stdio::null()),
        );
        say("PostgreSQL stopped");
    }
}
