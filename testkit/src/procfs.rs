//! What `/proc` says about a process: resident memory, scheduler state, CPU time, and which
//! processes run a given command line.

use std::sync::OnceLock;

/// Resident memory of `pid` in KiB (`VmRSS`); `None` once it has exited (a zombie has none).
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The state letter of `pid` (`R`, `S`, `D`, `Z` for a zombie not reaped yet, …); `None` once
/// it is gone.
pub fn state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// User + system CPU seconds `pid` has used so far (0 once it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let Some(fields) = stat_fields(pid) else {
        return 0.0;
    };
    // utime and stime: fields 14 and 15 of stat, 11 and 12 after the command name.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    (field(11).unwrap_or(0.0) + field(12).unwrap_or(0.0)) / clock_ticks()
}

/// CPU seconds of `pid` and of all its children, running or exited: its own user + system time,
/// its reaped children's (`cutime`, `cstime`), and its live children's own. For a server that
/// forks a process per connection (PostgreSQL), whose backends come and go.
pub fn cpu_secs_with_children(pid: u32) -> f64 {
    let Some(fields) = stat_fields(pid) else {
        return 0.0;
    };
    // cutime and cstime: fields 16 and 17 of stat, 13 and 14 after the command name.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let reaped = (field(13).unwrap_or(0.0) + field(14).unwrap_or(0.0)) / clock_ticks();
    cpu_secs(pid) + reaped + children(pid).into_iter().map(cpu_secs).sum::<f64>()
}

/// Seconds the machine's cores have spent idle since boot, summed over the cores (`/proc/stat`:
/// idle + iowait). The difference over an interval, against cores × its length, says how busy
/// the machine was, whoever kept it busy.
pub fn machine_idle_secs() -> f64 {
    machine_secs(&[3, 4])
}

/// Seconds the machine's cores have spent busy since boot, summed over the cores (`/proc/stat`:
/// user, nice, system, irq, softirq and steal): with [`machine_idle_secs`], every second of
/// every core over an interval, whoever used it.
pub fn machine_busy_secs() -> f64 {
    machine_secs(&[0, 1, 2, 5, 6, 7])
}

/// The sum of the `/proc/stat` machine-wide CPU times at `fields` (0: user, then nice, system,
/// idle, iowait, irq, softirq, steal), in seconds; 0 where /proc cannot say.
fn machine_secs(fields: &[usize]) -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<f64> = (cpu.split_whitespace().skip(1).take(8))
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .collect();
    let sum: f64 = fields.iter().filter_map(|i| ticks.get(*i)).sum();
    sum / clock_ticks()
}

/// The live children of `pid`: a server's workers (nginx's), to watch or profile with it.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // The parent: field 4 of stat, 1 after the command name.
            stat_fields(*child)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|parent| parent == pid)
        })
        .collect()
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    *TICKS.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    })
}

/// The fields of `/proc/PID/stat` after the parenthesised command name (which may hold spaces),
/// starting with the state.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Every running process whose command line (arguments joined by spaces) contains each of
/// `parts`. A process in the middle of `exec` has an empty command line for a moment: the
/// kernel lets a `vfork`ing parent (`posix_spawn`, hence `Command::spawn`) run on once the new
/// memory map is in place, before it records where the arguments are. Right after a spawn,
/// wait for the process to show rather than reading once.
pub fn pids_with(parts: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                parts.iter().all(|part| cmd.contains(part))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_child_is_seen_running_then_as_a_zombie_then_gone() {
        // A child that runs until it is killed (a short sleep could exit before a loaded
        // machine gets to look at it), with an argument no other process has.
        let seconds = format!("1000.{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg(&seconds)
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(rss_kib(pid).is_some());
        // Spawn returns while exec may still be writing the command line (see `pids_with`).
        let deadline = Instant::now() + Duration::from_secs(10);
        let command_line = format!("sleep {seconds}");
        while pids_with(&[&command_line]).is_empty() {
            assert!(
                Instant::now() < deadline,
                "sleep never showed its command line"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pids_with(&[&command_line]), vec![pid]);
        child.kill().unwrap();
        // Killed, not reaped: a zombie, which no longer has resident memory.
        while state(pid) != Some('Z') {
            assert!(Instant::now() < deadline, "sleep never died");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rss_kib(pid), None);
        child.wait().unwrap();
        assert_eq!(state(pid), None);
        assert_eq!(cpu_secs(pid), 0.0);
    }
}
