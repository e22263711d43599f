//! `emostream-fanout-floor`: the least work a fan-out can do, as the yardstick for the
//! broadcaster's. It takes WebSocket viewers like a subscriber (a minimal handshake, enough for
//! `emostream-swarm`) and, at the end of every `--every-ms` window, writes the same synthetic
//! frames the main publisher's `--synthetic-ms` emits (stream `main`'s epoch frame, its trending
//! and sentiment frames, the popular frame) to every socket from one thread: no tiers, no hub, no
//! runtime, no per-viewer state, no pings.
//!
//! Two ways to write them, as the number of sends per viewer and epoch is what the time goes to:
//! - `--writes one` (the default): the window's four frames joined into one buffer, once, and one
//!   `write` of it per socket — what a fan-out that groups an epoch's frames can do at best;
//! - `--writes four`: one `write` per frame per socket, a frame to every viewer before the next —
//!   what a fan-out that sends each frame as it comes can do at best.
//!
//! ```text
//! emostream-fanout-floor --listen 127.0.0.1:19200 [--every-ms 2000] [--writes one|four]
//! ```
//! `scripts/bench_fanout.sh` runs the same swarm against both and against the broadcaster, in the
//! same run, and reports the ratios.

use emostream_protocol::websocket::{server_frame, OP_TEXT};
use emostream_testkit::now_ms;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "../limits.rs"]
mod limits;

/// A handshake request is a few hundred bytes; anything longer is not our swarm.
const MAX_REQUEST: usize = 4096;

/// The least work a fan-out can do: the same synthetic frames to every WebSocket viewer at the
/// end of every window, from one thread, in one write per viewer or in four.
#[derive(Debug, clap::Parser)]
#[command(name = "emostream-fanout-floor")]
struct Cli {
    /// Where viewers connect.
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// One frame per window of this length.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    every_ms: u64,
    /// Writes per viewer and window: `one` (the four frames joined) or `four` (one per frame).
    #[arg(long, value_enum, default_value_t = Writes::One)]
    writes: Writes,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Writes {
    One,
    Four,
}

fn main() -> std::process::ExitCode {
    let Cli {
        listen,
        every_ms,
        writes,
    } = clap::Parser::parse();
    limits::raise_descriptor_limit();
    let listener = match TcpListener::bind(&listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("emostream-fanout-floor: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let viewers = Arc::new(Mutex::new(Vec::new()));
    let writer = Arc::clone(&viewers);
    std::thread::spawn(move || write_every_window(&writer, every_ms, writes));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        match handshake(conn) {
            Ok(conn) => viewers.lock().expect("never poisoned").push(conn),
            Err(e) => eprintln!("emostream-fanout-floor: handshake: {e}"),
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Reads the upgrade request and answers 101. The swarm does not check the accept key, so none is
/// computed: this is a yardstick, not a server.
fn handshake(mut conn: TcpStream) -> std::io::Result<TcpStream> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 || request.len() > MAX_REQUEST {
            return Err(ErrorKind::InvalidData.into());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    conn.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: floor\r\n\r\n",
    )?;
    conn.set_nodelay(true)?;
    conn.set_nonblocking(true)?;
    Ok(conn)
}

/// At each window's end, the window's frames to every viewer: in `Writes::Four`, one write of
/// each frame to every viewer, a frame to all of them before the next (the frames reach a fan-out
/// one at a time: trend frames come from another topic than epochs); in `Writes::One`, one write
/// of the four joined. A viewer whose socket does not take a whole write at once is dropped: the
/// floor is the cost of the writes that succeed, and the swarm reports what went missing.
fn write_every_window(viewers: &Mutex<Vec<TcpStream>>, every_ms: u64, writes: Writes) {
    let mut epoch = now_ms() / every_ms;
    loop {
        let end_ms = (epoch + 1) * every_ms;
        std::thread::sleep(Duration::from_millis(end_ms.saturating_sub(now_ms())));
        let frames: Vec<Vec<u8>> =
            emostream_protocol::synthetic::frames(&["main"], epoch, every_ms)
                .iter()
                .map(|text| server_frame(OP_TEXT, text.as_bytes()))
                .collect();
        // Joined once per window, like a fan-out that pre-joins an epoch's frames into one shared
        // buffer: the copy is 2.8 KB, not one per viewer.
        let writes: Vec<Vec<u8>> = match writes {
            Writes::One => vec![frames.concat()],
            Writes::Four => frames,
        };
        let mut viewers = viewers.lock().expect("never poisoned");
        for bytes in &writes {
            viewers.retain_mut(|v| matches!(v.write(bytes), Ok(n) if n == bytes.len()));
        }
        drop(viewers);
        epoch += 1;
    }
}
