//! The benchmarks' tap driver: `POST /v1/streams/{stream}/emojis` at a steady open-loop rate
//! (each request on schedule, whether or not earlier ones were answered), over keep-alive
//! connections, recording per request its stream, send time and the epoch the gateway's 2xx
//! answer names.
//!
//! A hand-rolled HTTP/1.1 client, as the swarm's viewers are: the driver shares two cores with
//! everything it measures, and it only needs a request line, a few headers and a JSON answer.

use emostream_protocol::wire::Accepted;
use emostream_testkit::now_ms;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Below the gateway's `max_connections_per_ip` (1,000): the driver's connections are all one
/// client IP. At 2,000 taps/s and answers within ~150 ms (the gateway's 100 ms flush, then the
/// broker's acknowledgement) about 300 are busy at once.
pub const MAX_CONNECTIONS: usize = 900;

/// One acknowledged tap request.
#[derive(Debug, Clone, Copy)]
pub struct Tap {
    /// Which of the plan's streams it went to.
    pub stream: u32,
    pub send_ms: u64,
    pub taps: u64,
    pub epoch: u64,
}
/// An answer later than this is a transport error (the gateway's own delivery timeout is 5 s).
const ANSWER_LIMIT: Duration = Duration::from_secs(15);
/// A pooled connection idle longer than this is closed instead of reused: the gateway closes a
/// connection that sends no request head within `header_read_timeout_ms` (5 s), and a request
/// written as it does so gets no answer.
const IDLE_LIMIT: Duration = Duration::from_secs(2);
/// A few emojis, so the frame has more than one row; the count checked is the frame's total.
const EMOJIS: [&str; 4] = ["🔥", "❤️", "😂", "👏"];

#[derive(Debug, Default)]
pub struct Outcome {
    /// Acknowledged requests.
    pub acked: Vec<Tap>,
    /// Requests sent.
    pub requests: u64,
    /// Answers that were not 2xx, by status.
    pub refused: BTreeMap<u16, u64>,
    /// No answer (connection failed or closed, or no answer within the limit).
    pub transport_errors: u64,
    /// What went wrong for those, by message.
    pub errors: BTreeMap<String, u64>,
    /// Not sent: every connection busy (the open loop never waits).
    pub skipped: u64,
    /// Send → 2xx answer per acknowledged request.
    pub answer_ms: Vec<u64>,
}

/// Idle keep-alive connections to the gateway, most recently used last (a request takes the
/// warmest); shared by the warm-up and the measured run, so the latter opens none.
pub type Pool = Arc<Mutex<Vec<(TcpStream, Instant)>>>;

pub struct Plan {
    pub gateway: String,
    /// Request k goes to stream k mod len: with a rate of len requests per epoch, each stream
    /// gets one request an epoch.
    pub streams: Vec<String>,
    /// Taps per second.
    pub rate: f64,
    /// Taps per request.
    pub batch: usize,
    pub duration: Duration,
    /// Connections at most (below the gateway's `max_connections_per_ip`).
    pub connections: usize,
    /// Send as a load balancer would, from the gateway's trusted proxy: each stream's requests
    /// name a client address of their own in `X-Forwarded-For` (10.x.y.z from the stream's
    /// index), as the viewers of many streams come from many addresses.
    pub forwarded: bool,
}

/// The client address `X-Forwarded-For` names for stream `i` of a forwarded plan.
pub fn forwarded_address(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Sends for `plan.duration`, then waits (bounded) for the answers still out.
pub async fn drive(plan: Plan, idle: &Pool) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let busy = Arc::new(Semaphore::new(plan.connections));
    // Users enough that none nears the gateway's per-user bucket (50 taps/s).
    let users = ((plan.rate / 5.0) as usize).max(100);
    let gap = Duration::from_secs_f64(plan.batch as f64 / plan.rate);
    let start = tokio::time::Instant::now();
    let paths: Vec<String> = (plan.streams.iter())
        .map(|s| format!("/v1/streams/{s}/emojis"))
        .collect();
    for k in 0u64.. {
        let due = start + gap.mul_f64(k as f64);
        if due >= start + plan.duration {
            break;
        }
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&busy).try_acquire_owned() else {
            outcome.lock().expect("one thread").skipped += 1;
            continue;
        };
        let user = k as usize % users;
        let taps: Vec<String> = (0..plan.batch)
            .map(|i| {
                let emoji = EMOJIS[(k as usize + i) % EMOJIS.len()];
                format!(r#"{{"user_id":"e2e-{user}","emoji":"{emoji}"}}"#)
            })
            .collect();
        let body = if plan.batch == 1 {
            taps[0].clone()
        } else {
            format!("[{}]", taps.join(","))
        };
        let stream = k as usize % paths.len();
        let forwarded = if plan.forwarded {
            format!("X-Forwarded-For: {}\r\n", forwarded_address(stream))
        } else {
            String::new()
        };
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             {forwarded}Content-Length: {}\r\n\r\n{body}",
            paths[stream],
            plan.gateway,
            body.len()
        );
        let (gateway, idle, outcome) =
            (plan.gateway.clone(), Arc::clone(idle), Arc::clone(&outcome));
        let batch = plan.batch as u64;
        tokio::spawn(async move {
            let conn = {
                let mut idle = idle.lock().expect("one thread");
                std::iter::from_fn(|| idle.pop())
                    .find(|(_, since)| since.elapsed() < IDLE_LIMIT)
                    .map(|(conn, _)| conn)
            };
            let send_ms = now_ms();
            let answer =
                tokio::time::timeout(ANSWER_LIMIT, exchange(conn, &gateway, request.as_bytes()))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            let answered_ms = now_ms();
            let mut outcome = outcome.lock().expect("one thread");
            outcome.requests += 1;
            match answer {
                Ok((status, body, conn)) => {
                    if let Some(conn) = conn {
                        idle.lock()
                            .expect("one thread")
                            .push((conn, Instant::now()));
                    }
                    let accepted = (200..300)
                        .contains(&status)
                        .then(|| serde_json::from_slice::<Accepted>(&body).ok())
                        .flatten();
                    match accepted {
                        Some(a) => {
                            // The answer says how many it took: a partial batch counts as such.
                            debug_assert!(a.accepted <= batch);
                            outcome.acked.push(Tap {
                                stream: stream as u32,
                                send_ms,
                                taps: a.accepted,
                                epoch: a.epoch,
                            });
                            outcome.answer_ms.push(answered_ms - send_ms);
                        }
                        None => *outcome.refused.entry(status).or_default() += 1,
                    }
                }
                Err(e) => {
                    outcome.transport_errors += 1;
                    *outcome.errors.entry(e.to_string()).or_default() += 1;
                }
            }
            drop(permit);
        });
    }
    // Every permit back: every request answered or given up on.
    let all = u32::try_from(plan.connections).expect("a small number");
    let _ = tokio::time::timeout(
        ANSWER_LIMIT + Duration::from_secs(1),
        busy.acquire_many(all),
    )
    .await;
    let mut outcome = outcome.lock().expect("one thread");
    std::mem::take(&mut *outcome)
}

/// One request on `conn` (a new connection when `None`): the status, the body, and the
/// connection when it may be used again.
async fn exchange(
    conn: Option<TcpStream>,
    gateway: &str,
    request: &[u8],
) -> std::io::Result<(u16, Vec<u8>, Option<TcpStream>)> {
    let mut conn = match conn {
        Some(conn) => conn,
        None => {
            let conn = TcpStream::connect(gateway).await?;
            conn.set_nodelay(true)?;
            conn
        }
    };
    conn.write_all(request).await?;
    let mut raw = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((status, head_end, length, close)) = head(&raw)? {
            if raw.len() >= head_end + length {
                let body = raw[head_end..head_end + length].to_vec();
                return Ok((status, body, (!close).then_some(conn)));
            }
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the answer",
            ));
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// The response head once whole: status, where the body starts, its `Content-Length`, and
/// whether the server closes the connection after it.
fn head(raw: &[u8]) -> std::io::Result<Option<(u16, usize, usize, bool)>> {
    let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let text = std::str::from_utf8(&raw[..at]).map_err(|_| bad("a head that is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = (lines.next())
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let (mut length, mut close) = (0, false);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| bad("a bad content-length"))?;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // The gateway's answers are small JSON with a length; anything else is a surprise.
                return Err(bad("a chunked answer"));
            }
        }
    }
    Ok(Some((status, at + 4, length, close)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_gives_status_length_and_close() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-length: 25\r\nConnection: close\r\n\r\n{";
        assert_eq!(head(raw).unwrap(), Some((202, 64, 25, true)));
        assert_eq!(head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}
