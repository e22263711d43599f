//! `scripts/run_workers.sh` as an operator runs it, through the wrapper to the supervisor:
//! a configuration error is reported once and nothing restarts (read by the supervisor itself,
//! or found by the real dataflow process against a real broker); a crashing process is
//! restarted with a doubling delay; fenced and misconfigured exits end the supervisor with the
//! process's status; SIGTERM stops the processes, and so does the supervisor's own death.
//!
//! The backoff and signal tests run a stand-in for the dataflow binary (`--dataflow`, a shell
//! script that exits or sleeps as told): a real process would need seconds and a broker to
//! crash on cue, and these tests are about the supervisor's side. The end-to-end tests run the
//! real cluster under it (e2e/tests: recovery, host_cut, rolling_stop, fencing, crash_points).

use emostream_protocol::exit;
use emostream_testkit::broker::minimal_config_with;
use emostream_testkit::procfs::pids_with;
use emostream_testkit::{wait_until, workers, Broker, Process, Scratch};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Far beyond how long the supervisor and a stand-in need to start, exit or stop on a loaded
/// 2-core machine; only a hang reaches it.
const WITHIN: Duration = Duration::from_secs(30);

/// A configuration the supervisor accepts, for one process on 127.0.0.1, no broker needed.
fn valid_config(dir: &Scratch) -> PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(&path, minimal_config_with("127.0.0.1:9", "", "")).unwrap();
    path
}

/// An executable shell script standing in for `emostream-dataflow`.
fn stand_in(dir: &Scratch, body: &str) -> PathBuf {
    let path = dir.join("stand-in");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `run_workers.sh -n 1 -c config --dataflow stand_in`, its output in `dir/supervisor.log`.
fn supervise(dir: &Scratch, config: &Path, stand_in: &Path) -> Process {
    let mut command = workers::command(1, config);
    command.arg("--dataflow").arg(stand_in);
    Process::spawn("supervisor", &mut command, &dir.join("supervisor.log"))
}

fn log(dir: &Scratch) -> String {
    std::fs::read_to_string(dir.join("supervisor.log")).unwrap_or_default()
}

/// The log with pids and run times replaced by `#`, so lines can be compared whole.
fn masked(log: &str) -> String {
    log.lines()
        .map(|line| {
            let mut out = String::new();
            let mut rest = line;
            for marker in ["(pid ", "after "] {
                if let Some(at) = rest.find(marker) {
                    let start = at + marker.len();
                    let end = rest[start..]
                        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                        .map_or(rest.len(), |n| start + n);
                    out.push_str(&rest[..start]);
                    out.push('#');
                    rest = &rest[end..];
                }
            }
            out.push_str(rest);
            out + "\n"
        })
        .collect()
}

#[test]
fn a_configuration_error_is_reported_once_and_nothing_starts() {
    let dir = Scratch::new("supervisor-bad-config");
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        "[kafka]\nbrokers = \"127.0.0.1:9\"\n[dataflow]\nthreads = \"four\"\n",
    )
    .unwrap();
    let output = workers::command(1, &config).output().unwrap();
    assert_eq!(output.status.code(), Some(exit::CONFIG));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "run_workers: invalid configuration: invalid type: found string \"four\", expected \
             usize for key \"default.dataflow.threads\" in {} TOML file\n",
            config.display()
        )
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "");
}

/// The real dataflow process against a real broker: its workers find that the epochs
/// topic has two partitions where the configuration (overridden) says three.
/// The bash supervisor restarted into that error every second, forever.
#[test]
fn a_configuration_the_brokers_contradict_stops_the_cluster_once() {
    let dir = Scratch::new("supervisor-contradicted");
    let (broker, _) = Broker::start(dir.path(), |address| {
        minimal_config_with(address, "events_partitions = 2", "")
    });
    let mut command = workers::command(1, broker.config_path());
    command
        .args(["-w", "2"])
        .env("EMOSTREAM_KAFKA__EPOCHS_PARTITIONS", "3");
    let mut supervisor = Process::spawn("supervisor", &mut command, &dir.join("supervisor.log"));
    let status = supervisor.wait_until(Instant::now() + WITHIN);
    let log = log(&dir);
    let status = status.unwrap_or_else(|| panic!("still running after {WITHIN:?}:\n{log}"));
    assert_eq!(
        (status.code(), status.signal()),
        (Some(exit::CONFIG), None),
        "{log}"
    );
    let count = |line: &str| log.lines().filter(|l| l.ends_with(line)).count();
    // Both workers check the topic, and the first to find it wrong ends the process: which
    // one is a race (worker 1 won about half the runs on a loaded machine).
    let reports = [0, 1].map(|w| {
        count(&format!(
            "emostream-dataflow: worker {w}: topic emoji-epochs has 2 partitions on the brokers; \
             the configuration needs 3"
        ))
    });
    assert!(
        reports.iter().all(|n| *n <= 1) && reports.iter().sum::<usize>() >= 1,
        "{log}"
    );
    assert_eq!(
        masked(&log)
            .lines()
            .filter(|l| l.starts_with("run_workers: "))
            .collect::<Vec<_>>(),
        [
            "run_workers: process 0 of 1 started (pid #)",
            "run_workers: process 0 found the configuration unworkable (its error is above); \
             stopping, not restarting",
        ],
        "{log}"
    );
    drop(broker);
}

#[tokio::test]
async fn a_crashing_process_is_restarted_ever_more_slowly_until_sigterm() {
    let dir = Scratch::new("supervisor-backoff");
    let config = valid_config(&dir);
    let crash = stand_in(&dir, "exit 1");
    let started = Instant::now();
    let mut supervisor = supervise(&dir, &config, &crash);
    wait_until("the third restart", WITHIN, || {
        let seen = log(&dir).contains("(restart 3)");
        async move { seen }
    })
    .await;
    // The first two delays (1 s, 2 s) have passed; sleeps never end early.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    // SIGTERM during the third delay (4 s) ends the supervisor at once.
    supervisor.signal(libc::SIGTERM);
    let status = supervisor.wait_until(Instant::now() + WITHIN);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", log(&dir));
    let crashed = |delay: u64, restart: u64| {
        format!(
            "run_workers: process 0 exited (exit status: 1) after # s; restarting the whole \
             cluster in {delay} s (restart {restart})\n"
        )
    };
    let started_line = "run_workers: process 0 of 1 started (pid #)\n";
    assert_eq!(
        masked(&log(&dir)),
        [
            started_line,
            &crashed(1, 1),
            started_line,
            &crashed(2, 2),
            started_line,
            &crashed(4, 3),
            "run_workers: stopping\n",
        ]
        .concat()
    );
}

#[test]
fn fenced_and_misconfigured_processes_are_not_restarted() {
    let cases = [
        (
            exit::FENCED,
            "run_workers: fenced: another cluster is publishing into these topics; stopping, \
             not restarting\n",
        ),
        (
            exit::CONFIG,
            "run_workers: process 0 found the configuration unworkable (its error is above); \
             stopping, not restarting\n",
        ),
    ];
    for (code, line) in cases {
        let dir = Scratch::new("supervisor-no-restart");
        let config = valid_config(&dir);
        let stand_in = stand_in(&dir, &format!("exit {code}"));
        let mut supervisor = supervise(&dir, &config, &stand_in);
        let status = supervisor.wait_until(Instant::now() + WITHIN);
        assert_eq!(status.and_then(|s| s.code()), Some(code), "{}", log(&dir));
        assert_eq!(
            masked(&log(&dir)),
            format!("run_workers: process 0 of 1 started (pid #)\n{line}"),
            "exit {code}"
        );
    }
}

/// A stand-in that runs until it is signalled, named by an argument no other process has
/// (sleep reads `1000.<pid><case>` as seconds).
fn sleeper(dir: &Scratch, case: i32) -> (PathBuf, String) {
    let seconds = format!("1000.{}{case}", std::process::id());
    (stand_in(dir, &format!("exec sleep {seconds}")), seconds)
}

#[tokio::test]
async fn sigterm_stops_the_processes_and_so_does_the_supervisors_death() {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let dir = Scratch::new("supervisor-signal");
        let config = valid_config(&dir);
        let (sleeper, seconds) = sleeper(&dir, signal);
        let mut supervisor = supervise(&dir, &config, &sleeper);
        let running = || pids_with(&["sleep", &seconds]);
        wait_until("the process to start", WITHIN, || {
            let up = running().len() == 1;
            async move { up }
        })
        .await;
        let status = supervisor.signal_and_wait(signal);
        // SIGTERM: forwarded, the process exits, the supervisor with 0. SIGKILL: the
        // supervisor cannot act, and its process gets SIGTERM from the kernel instead.
        let want = if signal == libc::SIGTERM {
            (Some(0), None)
        } else {
            (None, Some(libc::SIGKILL))
        };
        assert_eq!((status.code(), status.signal()), want, "{}", log(&dir));
        wait_until("the process to be gone", WITHIN, || {
            let gone = running().is_empty();
            async move { gone }
        })
        .await;
    }
}

/// The `SigIgn` and `SigCgt` masks of `/proc/PID/status`: the signals a process ignores and
/// those it has handlers for (bit `n - 1` for signal `n`).
fn signal_masks(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigIgn:"), mask("SigCgt:"))
}

/// A script's background job starts with SIGINT ignored, and so the terminal's Ctrl-C to the
/// whole group is its script's to handle (up.sh sends SIGTERM in its own order): the supervisor
/// keeps SIGINT ignored then, and stops on it otherwise.
#[tokio::test]
async fn sigint_stops_it_unless_it_started_ignoring_sigint() {
    let bit = |signal: i32| 1u64 << (signal - 1);
    for ignored in [false, true] {
        let dir = Scratch::new("supervisor-sigint");
        let config = valid_config(&dir);
        let (sleeper, seconds) = sleeper(&dir, 100 + i32::from(ignored));
        let mut command = workers::command(1, &config);
        command.arg("--dataflow").arg(&sleeper);
        if ignored {
            // SAFETY: signal(2) is async-signal-safe; the child only changes its own state.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let mut supervisor =
            Process::spawn("supervisor", &mut command, &dir.join("supervisor.log"));
        let pid = supervisor.pid();
        wait_until(
            "the supervisor to handle SIGTERM and run its process",
            WITHIN,
            || {
                let ready = signal_masks(pid).1 & bit(libc::SIGTERM) != 0
                    && pids_with(&["sleep", &seconds]).len() == 1;
                async move { ready }
            },
        )
        .await;
        let (ignoring, catching) = signal_masks(pid);
        assert_eq!(
            (
                ignoring & bit(libc::SIGINT) != 0,
                catching & bit(libc::SIGINT) != 0
            ),
            (ignored, !ignored),
            "SIGINT ignored at start: {ignored}"
        );
        let stop = if ignored { libc::SIGTERM } else { libc::SIGINT };
        let status = supervisor.signal_and_wait(stop);
        assert_eq!(status.code(), Some(0), "{}", log(&dir));
        assert!(
            log(&dir).ends_with("run_workers: stopping\n"),
            "{}",
            log(&dir)
        );
    }
}
