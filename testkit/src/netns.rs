//! A test's own network "hosts": Linux network namespaces joined by a bridge, each with a
//! 10.77.0.x address, and the ways a real network misbehaves that this kernel can show — a
//! link cut, a rate limit (`tc` `tbf`), random loss (`nft` `numgen random`) and latency (a
//! delaying TCP proxy; the kernel has no `netem`).
//!
//! ```text
//!   ns emo-PID-K-a        ns emo-PID-K (the switch)         ns emo-PID-K-b
//!   eth0 10.77.0.1 ────── p0 ─┐                     ┌─ p1 ────── eth0 10.77.0.2
//!                             └──────── br0 ────────┘
//! ```
//!
//! Every address lives inside namespaces this module made, so the same 10.77.0.0/24 serves every
//! [`Net`] at once without a clash, and nothing leaves the machine: the test process itself stays
//! in its own namespace, which has no route to these addresses (a connection to one from there
//! would leave by the default route; [`connect`] refuses it). Test code reaches a host through
//! [`Host::listen`] and [`connect`], which make the socket inside the host's namespace, and starts
//! processes there with [`Host::command`].
//!
//! Needs root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), `ip` and `tc` (Debian `iproute2`) and, for
//! loss, `nft` (Debian `nftables`); `scripts/install_build_deps.sh` installs them.

use std::ffi::OsStr;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Every namespace this module makes is named `emo-PID-K[-HOST]`, so leftovers of a test process
/// that died before its drop can be told apart and removed.
const PREFIX: &str = "emo-";
/// The hosts' subnet: the first three octets of every [`Net`]'s /24.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The host side of each host's link, inside its namespace.
const IFACE: &str = "eth0";
/// The nftables table holding a host's loss rules.
const LOSS_TABLE: &str = "emostream_loss";

/// Namespaces joined by a bridge, deleted on drop (with every link and rule inside them).
pub struct Net {
    switch: String,
    hosts: Vec<Host>,
}

/// One host of a [`Net`]: a namespace with loopback up and one link to the switch.
#[derive(Clone, Debug)]
pub struct Host {
    label: String,
    ns: String,
    switch: String,
    /// The switch's side of this host's link.
    port: String,
    addr: Ipv4Addr,
}

impl Net {
    /// One namespace per label (`[a-z0-9]`, at most 8 characters), addressed 10.77.0.1, .2, …
    /// in order, all on one bridge. Removes the namespaces of test processes that died without
    /// their drop first.
    pub fn new(labels: &[&str]) -> Net {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(
            !labels.is_empty() && labels.len() < 250,
            "a Net has 1 to 249 hosts"
        );
        remove_leftovers();
        let switch = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &switch]);
        // From here on, a panic deletes what was made so far.
        let mut net = Net {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, label) in labels.iter().enumerate() {
            assert!(
                !label.is_empty()
                    && label.len() <= 8
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "host label {label:?}: 1 to 8 characters of [a-z0-9]"
            );
            assert!(
                !labels[..i].contains(label),
                "host label {label:?} given twice"
            );
            let ns = format!("{switch}-{label}");
            let port = format!("p{i}");
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1);
            ip(&["netns", "add", &ns]);
            net.hosts.push(Host {
                label: label.to_string(),
                ns: ns.clone(),
                switch: switch.clone(),
                port: port.clone(),
                addr,
            });
            // Made in the switch with its peer born inside the host: no name is ever taken in the
            // test process's own namespace, so parallel tests cannot collide.
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", IFACE,
                "netns", &ns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                IFACE,
            ]);
            ip(&["-n", &ns, "link", "set", IFACE, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// The host with `label`.
    pub fn host(&self, label: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.label == label)
            .unwrap_or_else(|| panic!("no host {label:?} in this Net"))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // A process still running inside keeps its namespace alive, unnamed, until it exits; the
        // links go with the switch's namespace.
        for host in &self.hosts {
            let _ = try_ip(&["netns", "del", &host.ns]);
        }
        let _ = try_ip(&["netns", "del", &self.switch]);
    }
}

impl Host {
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// This host's address on the bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `program` run inside this host (`ip netns exec NS program`; the pid is the program's own,
    /// as `ip` execs it).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.arg("netns").arg("exec").arg(&self.ns).arg(program);
        command
    }

    /// Cuts this host off (`false`) or connects it again (`true`). Down, its side of the link has
    /// no carrier: the host's own connections out fail at once (no route), and whatever another
    /// host sends it vanishes, so a connection open across the cut sees silence, as on a pulled
    /// cable. Its address is kept, and so its route comes back with the link.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns, "link", "set", IFACE, state]);
    }

    /// Limits this host's link to `kbit` kbit/s each way with `tc`'s token bucket (`tbf`) on both
    /// of its ends: the host's own interface shapes what it sends, the switch's port what it
    /// receives. The queue in front of the bucket holds 200 ms of traffic (at least 16 KiB),
    /// a bottleneck router's buffer; what overflows it is dropped, as there.
    pub fn limit_rate(&self, kbit: u32) {
        let bytes_per_s = u64::from(kbit) * 1000 / 8;
        self.limit_rate_queued(kbit, (bytes_per_s / 5).max(16 * 1024));
    }

    /// As [`Host::limit_rate`], with `queue_bytes` in front of each bucket: a mobile network's
    /// deep buffers hold seconds of traffic.
    pub fn limit_rate_queued(&self, kbit: u32, queue_bytes: u64) {
        assert!(
            kbit >= 8,
            "a rate limit of {kbit} kbit/s is below one packet a second"
        );
        let bytes_per_s = u64::from(kbit) * 1000 / 8;
        // The bucket lets a few packets through at line rate: 10 ms of traffic, at least 4 KiB
        // so a full-size frame always fits.
        let burst = (bytes_per_s / 100).max(4096);
        let limit = queue_bytes;
        for (ns, dev) in [(&self.ns, IFACE), (&self.switch, self.port.as_str())] {
            run(Command::new("tc").args([
                "-n",
                ns,
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                &burst.to_string(),
                "limit",
                &limit.to_string(),
            ]));
        }
    }

    /// Drops `percent` % of the packets this host sends and, independently, of those it receives
    /// on its link (`nft` rules `numgen random mod 100 < percent drop`, with counters for
    /// [`Host::dropped_packets`]); loopback is untouched. `0` removes the rules.
    pub fn drop_percent(&self, percent: u32) {
        assert!(percent <= 100, "a loss of {percent} %");
        // Ignored when absent: the first call has no table to delete.
        let _ = self.nft_status(&["delete", "table", "inet", LOSS_TABLE]);
        if percent == 0 {
            return;
        }
        // nft types `numgen random mod 100` as 0..=99, so "< 100" does not parse: all is no test.
        let sample = if percent == 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        let rules = format!(
            "table inet {LOSS_TABLE} {{\n\
             \tchain outbound {{ type filter hook output priority 0; policy accept;\n\
             \t\toifname \"{IFACE}\" {sample}counter drop; }}\n\
             \tchain inbound {{ type filter hook input priority 0; policy accept;\n\
             \t\tiifname \"{IFACE}\" {sample}counter drop; }}\n\
             }}\n"
        );
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting nft (Debian package nftables): {e}"));
        child
            .stdin
            .take()
            .expect("stdin was piped")
            .write_all(rules.as_bytes())
            .expect("writing nft's rules");
        let out = child.wait_with_output().expect("waiting for nft");
        assert!(
            out.status.success(),
            "nft -f - in {}: {}\n{rules}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// How many packets [`Host::drop_percent`]'s rules have dropped so far, both ways.
    pub fn dropped_packets(&self) -> u64 {
        let out = self
            .command("nft")
            .args(["list", "table", "inet", LOSS_TABLE])
            .output()
            .expect("running nft");
        assert!(
            out.status.success(),
            "nft list table in {}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split("counter packets ")
            .skip(1)
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("nft prints `counter packets N bytes M`")
            })
            .sum()
    }

    fn nft_status(&self, args: &[&str]) -> bool {
        self.command("nft")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `f` on a thread of its own that has entered this host's namespace: every socket `f`
    /// makes belongs to the host, and stays there when handed back.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns(2) on a descriptor we own; it moves only this thread, which
                // ends when `f` returns.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {path}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("a thread inside a namespace panicked")
        })
    }

    /// A listener inside this host on `ip:port` (`port` 0: any free one). Must be called inside
    /// a tokio runtime.
    pub fn listen(&self, ip: Ipv4Addr, port: u16) -> TcpListener {
        let std = self.enter(|| std::net::TcpListener::bind((ip, port)));
        let std = std.unwrap_or_else(|e| panic!("binding {ip}:{port} in {}: {e}", self.ns));
        std.set_nonblocking(true).expect("a non-blocking listener");
        TcpListener::from_std(std).expect("a listener registered with tokio")
    }
}

/// A TCP connection to `addr` from inside `from` (`None`: from the test process's own namespace,
/// which only loopback may be reached from). Cancel it with a timeout: a cut host never answers.
pub async fn connect(from: Option<&Host>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match from {
        Some(host) => host.enter(tokio::net::TcpSocket::new_v4)?,
        None => {
            assert!(
                addr.ip().is_loopback(),
                "{addr} is reached from inside a namespace, never from the test process's own \
                 (that would leave the machine)"
            );
            tokio::net::TcpSocket::new_v4()?
        }
    };
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// Deletes the namespaces of test processes that are gone (a test killed before its drop).
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = try_ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn try_ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("starting {command:?} (Debian package iproute2): {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP proxy that holds every byte for a fixed time in each direction: the latency of a long
/// link, which this kernel cannot add (no `netem`). It listens where its listener was made and
/// connects to its target from `from`'s namespace.
///
/// Each direction carries at most `window` bytes in flight, like a TCP window over a real link:
/// a slow reader at one end pushes back on the writer at the other. TCP itself runs on each
/// side of the proxy with the short round trip of the namespaces, so loss is recovered at that
/// speed; the added delay is the application's view of a far peer. Stopped on drop.
pub struct DelayProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// What a [`DelayProxy`] does by default with a byte: keep it 4 MiB away from the next (Linux's
/// default largest receive window is 6 MiB, most links see less).
pub const DEFAULT_WINDOW: usize = 4 << 20;

impl DelayProxy {
    /// Accepts on `listener` and forwards each connection to `target`, connected from inside
    /// `from` (`None`: this process's namespace), `delay` later in each direction.
    pub fn start(
        listener: TcpListener,
        target: SocketAddr,
        from: Option<Host>,
        delay: Duration,
    ) -> DelayProxy {
        DelayProxy::with_window(listener, target, from, delay, DEFAULT_WINDOW)
    }

    pub fn with_window(
        listener: TcpListener,
        target: SocketAddr,
        from: Option<Host>,
        delay: Duration,
        window: usize,
    ) -> DelayProxy {
        assert!(window >= CHUNK, "a window below {CHUNK} bytes");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let from = from.clone();
                conns.spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(server) = connect(from.as_ref(), target).await else {
                        // The client sees its connection closed, as a refused one upstream.
                        return;
                    };
                    let (client_rx, client_tx) = client.into_split();
                    let (server_rx, server_tx) = server.into_split();
                    let up = carry(client_rx, server_tx, delay, window);
                    let down = carry(server_rx, client_tx, delay, window);
                    tokio::pin!(up, down);
                    // A clean end of one direction (EOF passed on) leaves the other running,
                    // as a half-closed TCP connection does; an error ends both.
                    tokio::select! {
                        r = &mut up => if r.is_ok() { let _ = down.await; },
                        r = &mut down => if r.is_ok() { let _ = up.await; },
                    }
                });
                // Finished connections are reaped as new ones come.
                while conns.try_join_next().is_some() {}
            }
        });
        DelayProxy { addr, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// The largest read forwarded as one piece.
const CHUNK: usize = 16 * 1024;

/// One direction of a proxied connection: each piece read is written `delay` after it was read,
/// in order, with at most `window` bytes between the two.
async fn carry(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    window: usize,
) -> std::io::Result<()> {
    let room = Arc::new(Semaphore::new(window));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = {
        let room = room.clone();
        async move {
            loop {
                let permit = room
                    .clone()
                    .acquire_many_owned(CHUNK as u32)
                    .await
                    .expect("the semaphore is never closed");
                let mut buf = vec![0; CHUNK];
                let n = from.read(&mut buf).await?;
                if n == 0 {
                    // Dropping `tx` tells the writer to pass the EOF on once the rest is out.
                    return Ok::<(), std::io::Error>(());
                }
                buf.truncate(n);
                // Only what was read stays counted against the window.
                permit.forget();
                room.add_permits(CHUNK - n);
                if tx.send((Instant::now() + delay, buf)).is_err() {
                    return Ok(());
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&buf).await?;
            room.add_permits(buf.len());
        }
        to.shutdown().await
    };
    let (read, written) = tokio::join!(reader, writer);
    read.and(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    /// Echoes every connection on `listener` back to itself until the client closes.
    fn echo(listener: TcpListener) {
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut rx, mut tx) = conn.split();
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                });
            }
        });
    }

    /// Sends `payload` through `conn` and reads it back whole.
    async fn round_trip(conn: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
        let (mut rx, mut tx) = conn.split();
        let mut back = vec![0; payload.len()];
        let (sent, read) = tokio::join!(tx.write_all(payload), rx.read_exact(&mut back));
        sent.unwrap();
        read.unwrap();
        back
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn hosts_reach_each_other_across_the_bridge() {
        let net = Net::new(&["a", "b"]);
        let (a, b) = (net.host("a"), net.host("b"));
        assert_eq!(a.addr(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(b.addr(), Ipv4Addr::new(10, 77, 0, 2));
        let listener = b.listen(b.addr(), 0);
        let port = listener.local_addr().unwrap().port();
        echo(listener);
        let mut conn = connect(Some(a), (b.addr(), port).into()).await.unwrap();
        assert_eq!(conn.local_addr().unwrap().ip(), a.addr());
        let data = payload(100_000);
        assert_eq!(round_trip(&mut conn, &data).await, data);

        // A process started inside a host sees the host's link, not the machine's.
        let out = a.command("ip").args(["-o", "-4", "addr"]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("10.77.0.1/24"), "{text}");
        assert!(!text.contains("10.77.0.2"), "{text}");
    }

    #[tokio::test]
    async fn a_cut_link_fails_connections_until_it_is_restored() {
        let net = Net::new(&["a", "b"]);
        let (a, b) = (net.host("a"), net.host("b"));
        let listener = b.listen(b.addr(), 0);
        let target: SocketAddr = (b.addr(), listener.local_addr().unwrap().port()).into();
        echo(listener);
        connect(Some(a), target).await.unwrap();

        b.set_link(false);
        // Towards the cut host, the SYN vanishes (or its address stops answering ARP): no
        // connection within 2 s, however the attempt ends.
        let attempt = tokio::time::timeout(Duration::from_secs(2), connect(Some(a), target)).await;
        assert!(
            !matches!(attempt, Ok(Ok(_))),
            "connected to a cut host: {attempt:?}"
        );
        // From the cut host itself there is no route at all.
        let out = connect(Some(b), (a.addr(), 9).into()).await.unwrap_err();
        assert_eq!(out.raw_os_error(), Some(libc::ENETUNREACH), "{out}");

        b.set_link(true);
        // The link comes back at once, but the first SYN may still wait on an ARP retry: 10 s
        // is ten times what that takes.
        let mut conn = tokio::time::timeout(Duration::from_secs(10), connect(Some(a), target))
            .await
            .expect("a restored link connects")
            .unwrap();
        assert_eq!(round_trip(&mut conn, b"back").await, b"back");
    }

    #[tokio::test]
    async fn the_proxy_delays_each_direction() {
        let net = Net::new(&["a", "b"]);
        let (a, b) = (net.host("a"), net.host("b"));
        let listener = b.listen(b.addr(), 0);
        let target: SocketAddr = (b.addr(), listener.local_addr().unwrap().port()).into();
        echo(listener);
        let delay = Duration::from_millis(150);
        let proxy = DelayProxy::start(
            a.listen(Ipv4Addr::LOCALHOST, 0),
            target,
            Some(a.clone()),
            delay,
        );
        let mut conn = connect(Some(a), proxy.addr()).await.unwrap();
        for round in 0..3 {
            let started = StdInstant::now();
            let data = payload(1000 + round);
            assert_eq!(round_trip(&mut conn, &data).await, data);
            let took = started.elapsed();
            // Out and back: twice the delay at least; the upper bound only catches a proxy that
            // holds bytes far longer (2 s over it: a loaded 2-core machine's scheduling).
            assert!(took >= 2 * delay, "round {round} took {took:?}");
            assert!(
                took < 2 * delay + Duration::from_secs(2),
                "round {round} took {took:?}"
            );
        }
        // A half-close passes through once the bytes before it are out.
        let (mut rx, mut tx) = conn.split();
        tx.write_all(b"last").await.unwrap();
        tx.shutdown().await.unwrap();
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
    }

    #[tokio::test]
    async fn a_rate_limit_slows_a_transfer_to_its_rate() {
        let net = Net::new(&["a", "b"]);
        let (a, b) = (net.host("a"), net.host("b"));
        let listener = b.listen(b.addr(), 0);
        let target: SocketAddr = (b.addr(), listener.local_addr().unwrap().port()).into();
        // 2 Mbit/s is 250,000 bytes a second; 500,000 bytes echoed back cross the limit twice
        // (once each way), and the buckets let at most their 4 KiB bursts through early.
        a.limit_rate(2_000);
        echo(listener);
        let mut conn = connect(Some(a), target).await.unwrap();
        let data = payload(500_000);
        let started = StdInstant::now();
        assert_eq!(round_trip(&mut conn, &data).await, data);
        let took = started.elapsed();
        // Each way runs at the same time; the slower one bounds the whole: (500,000 − 8 KiB) /
        // 250,000 B/s ≥ 1.96 s. No upper bound: slower only means a busier machine.
        assert!(took >= Duration::from_millis(1_960), "took {took:?}");
    }

    #[tokio::test]
    async fn loss_drops_packets_and_tcp_still_delivers_everything() {
        let net = Net::new(&["a", "b"]);
        let (a, b) = (net.host("a"), net.host("b"));
        let listener = b.listen(b.addr(), 0);
        let target: SocketAddr = (b.addr(), listener.local_addr().unwrap().port()).into();
        echo(listener);

        a.drop_percent(100);
        let attempt = tokio::time::timeout(Duration::from_secs(1), connect(Some(a), target)).await;
        assert!(
            !matches!(attempt, Ok(Ok(_))),
            "connected through 100 % loss: {attempt:?}"
        );
        assert!(a.dropped_packets() >= 1);

        // 10 % each way over ~150 segments each way: no drop at all has odds of 0.9^300.
        a.drop_percent(10);
        let dropped_before = a.dropped_packets();
        let mut conn = tokio::time::timeout(Duration::from_secs(30), connect(Some(a), target))
            .await
            .expect("a connection through 10 % loss")
            .unwrap();
        let data = payload(200_000);
        assert_eq!(round_trip(&mut conn, &data).await, data);
        assert!(a.dropped_packets() > dropped_before);

        a.drop_percent(0);
        let out = a.command("nft").args(["list", "ruleset"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    }

    #[test]
    fn drop_deletes_the_namespaces_and_leftovers_of_dead_processes_go() {
        // A name as a test process that died would have left it: pid 0 never runs a test.
        let leftover = format!("{PREFIX}0-7-x");
        ip(&["netns", "add", &leftover]);
        let names = {
            let net = Net::new(&["a"]);
            let names = vec![net.switch.clone(), net.host("a").ns().to_string()];
            for name in &names {
                assert!(std::path::Path::new(&format!("/run/netns/{name}")).exists());
            }
            assert!(!std::path::Path::new(&format!("/run/netns/{leftover}")).exists());
            names
        };
        for name in &names {
            assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
        }
    }
}
