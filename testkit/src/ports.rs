//! Loopback ports for processes a test starts later.

use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback port nobody uses right now, for a process started later to listen on.
///
/// It comes from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 and
/// up here), never from it: a port the kernel handed out and took back can be handed out again to
/// any outgoing connection — librdkafka's, the broker's to its PostgreSQL — before the process
/// it was meant for binds it, and that process then fails with "address in use". Each call in a
/// process takes the next candidate after a per-process starting point, so two calls never
/// return the same port.
pub fn free_port() -> u16 {
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {high}");
}
