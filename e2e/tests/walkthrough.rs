//! docs/deploy.md's three-host walk-through, performed. The test reads the section "Without
//! systemd: three hosts, step by step" — its `cluster.toml` and its `hN$` lines — and runs each
//! line inside network host `hN` (testkit's `netns`, 10.77.0.N), with the page's paths
//! (`/usr/local/bin`, `/etc/emostream`, `/var/lib/emostream`) mapped to this build's binaries and
//! a scratch folder. The page is the script, so the page and what was tested cannot drift apart.
//!
//! Each line names, after `#`, the systemd units it stands in for; the test checks that a binary's
//! line is its unit's `ExecStart` character for character, and that the timely processes the
//! supervisors start have their units' command lines. Then taps go to the gateway on h1 and the
//! viewers on h3's subscriber must receive exactly the counts the gateway acknowledged; and a
//! configuration error makes `run_workers.sh -n 4` exit 78 with the error, once.

use emostream_e2e::trace;
use emostream_e2e::viewer::Viewer;
use emostream_protocol::exit;
use emostream_protocol::wire::{Assignment, EpochFrame};
use emostream_protocol::Config;
use emostream_testkit::netns::{Host, Net};
use emostream_testkit::procfs::pids_with;
use emostream_testkit::{bin_dir, http, repo_root, wait_for, wait_until, Process, Scratch};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SECTION: &str = "### Without systemd: three hosts, step by step";
const STREAMS: [&str; 2] = ["cricket", "football"];
/// Everything here runs on one 2-core machine, debug builds: generous.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the page says to do.
struct Walkthrough {
    /// `/etc/emostream/cluster.toml`.
    config: String,
    /// The `all$ export` line's variables.
    env: Vec<(String, String)>,
    steps: Vec<Step>,
}

/// One `hN$ command  # unit…` line.
struct Step {
    host: String,
    command: String,
    units: Vec<String>,
}

fn walkthrough() -> Walkthrough {
    let doc = std::fs::read_to_string(repo_root().join("docs/deploy.md")).unwrap();
    let start = doc
        .find(SECTION)
        .expect("docs/deploy.md has the walk-through");
    let rest = &doc[start + SECTION.len()..];
    let section = &rest[..rest.find("\n### ").unwrap_or(rest.len())];
    let block = |fence: &str| {
        let open = section
            .find(fence)
            .unwrap_or_else(|| panic!("the walk-through has a {fence} block"));
        let body = &section[open + fence.len()..];
        body[..body.find("\n```").expect("a closed block")].trim_start_matches('\n')
    };
    let mut env = Vec::new();
    let mut steps = Vec::new();
    for line in block("```sh").lines() {
        let (host, text) = line
            .split_once("$ ")
            .unwrap_or_else(|| panic!("not a `host$ command` line: {line}"));
        let (command, units) = text.split_once("  # ").unwrap_or((text, ""));
        // The lines are split on spaces, as a shell would split these.
        assert!(
            !command.contains(['"', '\'', '\\', '$']),
            "a walk-through line the test would split wrongly: {line}"
        );
        if host == "all" {
            let vars = command
                .strip_prefix("export ")
                .unwrap_or_else(|| panic!("`all$` lines export variables: {line}"));
            for var in vars.split_whitespace() {
                let (k, v) = var.split_once('=').expect("NAME=value");
                env.push((k.to_string(), v.to_string()));
            }
        } else {
            steps.push(Step {
                host: host.to_string(),
                command: command.trim().to_string(),
                units: units.split_whitespace().map(str::to_string).collect(),
            });
        }
    }
    Walkthrough {
        config: block("```toml").to_string(),
        env,
        steps,
    }
}

/// `ExecStart` of `unit` (`name.service`, or a template's instance `name@i[.service]`) in
/// deploy/systemd, with `%i` and the unit's own `Environment=` variables filled in.
fn exec_start(unit: &str) -> String {
    let unit = unit.strip_suffix(".service").unwrap_or(unit);
    let (file, instance) = match unit.split_once('@') {
        Some((name, i)) => (format!("{name}@.service"), i),
        None => (format!("{unit}.service"), ""),
    };
    let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(&file))
        .unwrap_or_else(|e| panic!("deploy/systemd/{file}: {e}"));
    let mut line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{file} has no ExecStart"))
        .replace("%i", instance);
    for (k, v) in text
        .lines()
        .filter_map(|l| l.strip_prefix("Environment=")?.split_once('='))
    {
        line = line.replace(&format!("${{{k}}}"), v);
    }
    line
}

/// The page's folders, on this machine.
struct Paths {
    etc: PathBuf,
    var: PathBuf,
}

impl Paths {
    fn local(&self, text: &str) -> String {
        let text = text
            .replace("/usr/local/bin", &bin_dir().to_string_lossy())
            .replace("/etc/emostream", &self.etc.to_string_lossy())
            .replace("/var/lib/emostream", &self.var.to_string_lossy());
        match text.strip_prefix("scripts/") {
            Some(script) => format!("{}/scripts/{script}", repo_root().display()),
            None => text,
        }
    }

    fn command(&self, host: &Host, line: &str, env: &[(String, String)]) -> Command {
        let line = self.local(line);
        let mut argv = line.split_whitespace();
        let mut command = host.command(argv.next().expect("a program"));
        command.args(argv);
        command.envs(env.iter().map(|(k, v)| (k, self.local(v))));
        command
    }
}

/// Stops the page's broker (`broker.sh stop`, as the page ends) however the test ends.
struct BrokerStop(Command);

impl Drop for BrokerStop {
    fn drop(&mut self) {
        let _ = self.0.status();
    }
}

/// The frames a viewer received, by (stream, epoch); panics on a (stream, epoch) received twice.
fn by_epoch(viewer: &Viewer, stream: &str) -> BTreeMap<(String, u64), EpochFrame> {
    let mut out = BTreeMap::new();
    for received in viewer.epoch_frames() {
        let frame: EpochFrame = serde_json::from_str(&received.text)
            .unwrap_or_else(|e| panic!("{e}: {}", received.text));
        assert_eq!(frame.stream, stream, "{} got another stream", viewer.url);
        let key = (frame.stream.clone(), frame.epoch);
        assert!(
            out.insert(key.clone(), frame).is_none(),
            "{} received {key:?} twice",
            viewer.url
        );
    }
    out
}

/// Each binary's line on the page is its unit's command, character for character; a
/// supervisor's units are checked on the processes it starts (below).
#[test]
fn the_pages_lines_are_the_units_commands() {
    let page = walkthrough();
    let mut checked = 0;
    for step in &page.steps {
        assert!(
            step.command.starts_with("scripts/") || !step.units.is_empty(),
            "a binary's line names its unit: {}",
            step.command
        );
        if step.command.starts_with("scripts/run_workers.sh") {
            continue;
        }
        for unit in &step.units {
            assert_eq!(step.command, exec_start(unit), "the page's line for {unit}");
            checked += 1;
        }
    }
    let dataflow: Vec<&String> = page
        .steps
        .iter()
        .filter(|s| s.command.starts_with("scripts/run_workers.sh"))
        .flat_map(|s| &s.units)
        .collect();
    assert_eq!(
        dataflow,
        (0..4)
            .map(|i| format!("emostream-dataflow@{i}"))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(checked, 4, "gateway, main, cluster and subscriber");
}

#[test]
fn the_three_host_walkthrough_of_docs_deploy_md_delivers_exact_counts() {
    let page = walkthrough();
    let config = Config::from_toml(&page.config).expect("the page's cluster.toml is valid");
    let net = Net::new(&["h1", "h2", "h3"]);
    let dir = Scratch::new("walkthrough");
    let paths = Paths {
        etc: dir.join("etc"),
        var: dir.join("var"),
    };
    std::fs::create_dir_all(&paths.etc).unwrap();
    std::fs::create_dir_all(&paths.var).unwrap();
    std::fs::write(paths.etc.join("cluster.toml"), &page.config).unwrap();

    // Declared before the tiers, so that however the test ends they stop before the broker.
    let mut broker_stop = None;
    let mut processes: Vec<Process> = Vec::new();
    for (i, step) in page.steps.iter().enumerate() {
        let host = net.host(&step.host);
        let mut command = paths.command(host, &step.command, &page.env);
        if step.command.starts_with("scripts/broker.sh start") {
            let stop = step.command.replacen(" start ", " stop ", 1);
            broker_stop = Some(BrokerStop(paths.command(host, &stop, &page.env)));
            let status = command.status().expect("scripts/broker.sh");
            assert!(status.success(), "{}: {status}", step.command);
        } else {
            let name = format!("{i}-{}", step.host);
            let log = dir.join(format!("{name}.log"));
            processes.push(Process::spawn(&name, &mut command, &log));
        }
    }

    // The timely processes the two supervisors started run their units' command lines.
    let config_path = paths.etc.join("cluster.toml");
    for step in page
        .steps
        .iter()
        .filter(|s| s.command.starts_with("scripts/run_workers.sh"))
    {
        for unit in &step.units {
            let index = unit.split_once('@').expect("a dataflow instance").1;
            let want = paths.local(&exec_start(unit));
            let deadline = Instant::now() + DEADLINE;
            let running = loop {
                let found = pids_with(&[
                    "emostream-dataflow",
                    &config_path.to_string_lossy(),
                    &format!(" -p {index} "),
                ]);
                if let [pid] = found[..] {
                    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                    if !argv.is_empty() {
                        break argv.trim_end().to_string();
                    }
                }
                assert!(Instant::now() < deadline, "{unit}'s process never started");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(running, want, "{unit} as its host's supervisor runs it");
        }
    }

    let gateway = config.gateway.listen.clone();
    let main = config.broadcaster.main.clone();
    let subscriber = config.broadcaster.clusters[0].subscribers[0].clone();
    let viewer_host = net.host("h1");
    // A runtime on a thread inside h1: every socket the client side makes is h1's.
    viewer_host.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            wait_until("the gateway to be ready", DEADLINE, || {
                let gateway = gateway.clone();
                async move {
                    http::get(&gateway, "/readyz")
                        .await
                        .is_ok_and(|r| r.status == 200)
                }
            })
            .await;
            let assignment: Assignment = wait_for(
                "the main publisher to know h3's subscriber",
                DEADLINE,
                || {
                    let main = main.clone();
                    async move {
                        let r = http::post_json(
                            &main,
                            "/register",
                            r#"{"user_id":"viewer-1","group_id":"g"}"#,
                        )
                        .await
                        .ok()?;
                        (r.status == 200).then(|| r.json())
                    }
                },
            )
            .await;
            assert_eq!(assignment.subscriber, format!("ws://{subscriber}"));
            let mut viewers = Vec::new();
            for stream in STREAMS {
                viewers.push((
                    stream,
                    Viewer::connect(&assignment.subscriber, stream).await,
                ));
            }

            // Taps over three epochs (2 s each), so that frames are exact epoch after epoch.
            let mut truth = trace::steady(
                &gateway,
                &STREAMS,
                50,
                Duration::from_millis(100),
                Duration::from_secs(5),
                0xdec0de,
            )
            .await;
            let markers = trace::markers(&gateway, &STREAMS, &mut truth).await;
            for (stream, viewer) in &viewers {
                let want = (stream.to_string(), markers[*stream]);
                wait_until(&format!("{want:?} at the viewer"), DEADLINE, || {
                    let done = by_epoch(viewer, stream).contains_key(&want);
                    async move { done }
                })
                .await;
                let stream_truth: trace::Truth = truth
                    .iter()
                    .filter(|((s, _), _)| s == stream)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                trace::assert_exact(
                    &by_epoch(viewer, stream),
                    &stream_truth,
                    config.epochs.window_ms,
                    &format!("viewer of {stream} on h3"),
                );
            }
            eprintln!(
                "{} taps in {} epochs reached the viewers exactly",
                truth.values().flat_map(|m| m.values()).sum::<u64>(),
                truth.len()
            );
        });
    });

    // The page's supervisor line with an unworkable configuration: the error, once, and exit 78
    // (a loop would still be running at the deadline).
    let bad = paths.etc.join("bad.toml");
    std::fs::write(
        &bad,
        page.config.replace("threads = 1", "threads = \"one\""),
    )
    .unwrap();
    let line = page
        .steps
        .iter()
        .find(|s| s.command.starts_with("scripts/run_workers.sh"))
        .expect("the page runs the supervisor")
        .command
        .replace("/etc/emostream/cluster.toml", "/etc/emostream/bad.toml");
    let log = dir.join("bad-config.log");
    let mut refused = Process::spawn(
        "bad-config",
        &mut paths.command(net.host("h2"), &line, &page.env),
        &log,
    );
    let status = refused
        .wait_until(Instant::now() + Duration::from_secs(20))
        .expect("run_workers.sh exits on a configuration error");
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(exit::CONFIG), "{said}");
    assert_eq!(
        said,
        format!(
            "run_workers: invalid configuration: invalid type: found string \"one\", expected \
             usize for key \"default.dataflow.threads\" in {} TOML file\n",
            bad.display()
        )
    );

    // As the page stops: every tier in the reverse order, each within its unit's stop timeout.
    for process in processes.iter_mut().rev() {
        let ended = process.stop(Duration::from_secs(30));
        assert!(ended.is_some(), "{} ignored SIGTERM", process.name());
    }
    drop(broker_stop);
}
