//! The subscriber's reader of what viewers send (`viewers/websocket.rs`, `Reader`) on arbitrary
//! bytes. Nothing may panic, whatever arrives; the frames read must not depend on how the bytes
//! were cut into reads (the first input byte picks the read size, 1 to 16 bytes, against all at
//! once); a failure is one of the four codes a viewer can be failed with, and ends the reading;
//! a Close code read is one a peer may send (so echoing it is allowed); a pong answers at most
//! the 125 bytes a control frame holds.
#![no_main]

use emostream_broadcaster::fuzzing::{FromViewer, Reader, Violation, MAX_VIEWER_MESSAGE_BYTES};
use emostream_protocol::websocket::close_code;
use libfuzzer_sys::fuzz_target;

/// Everything read from `bytes` delivered `step` bytes at a time, up to and including a failure.
fn read(bytes: &[u8], step: usize) -> Vec<Result<FromViewer, Violation>> {
    let mut reader = Reader::new(MAX_VIEWER_MESSAGE_BYTES);
    let mut heard = Vec::new();
    for chunk in bytes.chunks(step) {
        reader.extend(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => heard.push(Ok(frame)),
                Ok(None) => break,
                Err(violation) => {
                    heard.push(Err(violation));
                    return heard;
                }
            }
        }
    }
    heard
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let whole = read(bytes, bytes.len().max(1));
    let pieces = read(bytes, usize::from(step % 16) + 1);
    assert_eq!(whole, pieces, "reads of {} bytes", step % 16 + 1);
    for heard in &whole {
        match heard {
            Ok(FromViewer::Ping(pong)) => assert!(pong.len() <= 2 + 125, "{pong:?}"),
            Ok(FromViewer::Close(Some(code))) => assert!(close_code::is_sendable(*code), "{code}"),
            Ok(FromViewer::Close(None) | FromViewer::Alive) => {}
            Err(Violation(code)) => assert!(
                [
                    close_code::PROTOCOL,
                    close_code::UNSUPPORTED,
                    close_code::INVALID_DATA,
                    close_code::SIZE,
                ]
                .contains(code),
                "{code}"
            ),
        }
    }
});
