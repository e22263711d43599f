//! Timely's TCP links between the cluster's processes, opened here rather than inside timely so
//! that a peer that vanishes without closing its sockets (a host powered off, its link cut, a
//! partition) is noticed within a bound instead of after Linux's ~15 minutes of retransmissions.
//!
//! Each link gets TCP keepalive ([`KEEPALIVE_IDLE`], then [`KEEPALIVE_INTERVAL`] ×
//! [`KEEPALIVE_PROBES`]) for an idle link, and `TCP_USER_TIMEOUT` ([`USER_TIMEOUT`]) for data left
//! unacknowledged. Either closes the socket with an error; timely's send or receive thread then
//! panics ("timely communication error"), the panic hook aborts the process, and the supervisor
//! restarts the cluster. The other processes on the surviving hosts see their links to the
//! aborted one reset at once and follow. So a cluster with a vanished host restarts within
//! [`USER_TIMEOUT`] (the longer of the two paths) plus the supervisor's one second; the restarted
//! processes then wait at timely's start for the lost host to come back. The peer's kernel, not
//! its process, answers both probes and data, so a loaded host is not taken for a vanished one:
//! timely's receive thread drains the socket even while the workers are busy. A process stopped
//! outright (SIGSTOP, a debugger) for longer than [`USER_TIMEOUT`] is: its receive buffer fills,
//! its kernel advertises a zero window, and since Linux 5.11 `TCP_USER_TIMEOUT` also closes a
//! link whose zero-window probes go on being answered. The cluster then restarts and replays, as
//! for a vanished host.
//!
//! Everything else is timely's own `Config::Cluster` set-up, step for step
//! (`timely_communication::initialize`).

use socket2::{SockRef, TcpKeepalive};
use std::any::Any;
use std::net::TcpStream;
use std::time::Duration;
use timely_communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely_communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely_communication::networking::create_sockets;
use timely_communication::Hooks;

/// An idle link is probed after this long without traffic.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered probes before the link is closed: an idle link to a vanished host closes within
/// `KEEPALIVE_IDLE + KEEPALIVE_PROBES × KEEPALIVE_INTERVAL` = 10 s.
pub const KEEPALIVE_PROBES: u32 = 5;
/// Data unacknowledged this long closes the link. Far above a loaded machine's scheduling delays
/// (the peer's kernel acknowledges, not its process), and the bound the restart is documented
/// with.
pub const USER_TIMEOUT: Duration = Duration::from_secs(15);

/// The allocators of process `process` of the cluster at `addresses`, as timely's
/// `Config::Cluster { threads, process, addresses, report, zerocopy }` builds them, over links
/// with the liveness settings above.
pub fn cluster(
    threads: usize,
    process: usize,
    addresses: Vec<String>,
    report: bool,
    zerocopy: bool,
) -> Result<(Vec<AllocatorBuilder>, Box<dyn Any + Send>), String> {
    let hooks = Hooks::default();
    let process_allocators = if zerocopy {
        ProcessBuilder::new_bytes_vector(threads, hooks.refill.clone(), hooks.spill.clone())
    } else {
        ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone())
    };
    let sockets = create_sockets(addresses, process, report)
        .map_err(|e| format!("failed to initialize networking: {e}"))?;
    for socket in sockets.iter().flatten() {
        watch(socket).map_err(|e| format!("setting the links' keepalive and timeout: {e}"))?;
    }
    let (builders, guard) =
        initialize_networking_from_sockets(process_allocators, sockets, process, threads, hooks)
            .map_err(|e| format!("failed to initialize networking: {e}"))?;
    Ok((
        builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
        Box::new(guard),
    ))
}

/// Keepalive and the user timeout on one link.
pub fn watch(socket: &TcpStream) -> std::io::Result<()> {
    let socket = SockRef::from(socket);
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The options as the kernel reports them back, on both ends of a link.
    #[test]
    fn links_carry_keepalive_and_the_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        for socket in [&client, &server] {
            watch(socket).unwrap();
            let socket = SockRef::from(socket);
            assert!(socket.keepalive().unwrap());
            assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
            assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        }
    }
}
