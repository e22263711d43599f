//! The few pieces of RFC 6455 both ends of a viewer's WebSocket need: opcodes, and the server's
//! frame encoding (unmasked, unfragmented), which the subscribers, the swarm's yardstick and the
//! swarm's parser all agree on.

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The Close codes a viewer may get from a subscriber, and what each asks of the client
/// (docs/contracts.md has the table).
pub mod close_code {
    /// The viewer sent Close with no code (or this one).
    pub const NORMAL: u16 = 1000;
    /// The subscriber is shutting down: register again, resume with `since`.
    pub const AWAY: u16 = 1001;
    /// The viewer broke RFC 6455: unmasked or unknown frames, RSV bits, a bad Close code.
    pub const PROTOCOL: u16 = 1002;
    /// The viewer sent a data frame (text, binary or continuation): viewers have nothing to say
    /// beyond pings, pongs and Close.
    pub const UNSUPPORTED: u16 = 1003;
    /// A Close reason that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The viewer token expired while the connection was open: register again for a new one.
    pub const POLICY: u16 = 1008;
    /// A message over the 4096 bytes a viewer may send.
    pub const SIZE: u16 = 1009;
    /// The subscriber lost its upstream for more than a few seconds: register again (another
    /// subscriber may have it), resume with `since`.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The viewer read too slowly for the stream: reconnect with `since`, after a pause.
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// Whether a peer may send `code` in a Close frame (RFC 6455 7.4): 1005, 1006 and 1015 are
    /// reserved for reporting locally, 1004 and 1016-2999 are unassigned or IANA's, and below
    /// 1000 nothing is defined. A viewer that sends one of these is answered 1002, never echoed.
    pub fn is_sendable(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

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

    #[test]
    fn reserved_and_unassigned_close_codes_are_not_sendable() {
        let cases = [
            (999, false),
            (1000, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1013, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
        ];
        for (code, sendable) in cases {
            assert_eq!(close_code::is_sendable(code), sendable, "{code}");
        }
    }
}
