//! The few pieces of RFC 6455 both ends of a viewer's WebSocket need: opcodes, and the server's
//! frame encoding (unmasked, unfragmented), which the subscribers, the swarm's yardstick and the
//! swarm's parser all agree on.

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A server frame: the FIN bit, `opcode`, the shortest length form, and `payload` unmasked.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_carry_the_payload_unmasked_with_the_shortest_length() {
        assert_eq!(server_frame(OP_TEXT, b"hi"), b"\x81\x02hi");
        let long = vec![b'x'; 300];
        let frame = server_frame(OP_TEXT, &long);
        assert_eq!(frame[..4], [0x81, 126, 1, 44]);
        assert_eq!(frame[4..], long);
        let huge = vec![b'y'; 70_000];
        assert_eq!(
            server_frame(OP_TEXT, &huge)[..10],
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(server_frame(OP_PING, &[]), [0x89, 0]);
    }
}
