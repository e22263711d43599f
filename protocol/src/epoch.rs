//! Time in Emostream is a grid of fixed windows ("epochs") over the gateway's receive clock.

/// The epoch that a receive time (Unix ms) falls into: `floor(ms / window_ms)`.
///
/// The client's own timestamp never enters here: phones' clocks are wrong often enough that
/// windowing on them would let one bad clock hold an epoch open or reopen a closed one.
pub const fn epoch_of(recv_ms: u64, window_ms: u64) -> u64 {
    recv_ms / window_ms
}

/// This host's clock in Unix ms: the gateway's receive time, the dataflow's view of it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// The half-open range `[start_ms, end_ms)` that an epoch covers.
pub const fn epoch_bounds(epoch: u64, window_ms: u64) -> (u64, u64) {
    (epoch * window_ms, (epoch + 1) * window_ms)
}

/// The per-1000 reduction: one "swarm emoji" per `divisor` taps, and at least one for any tap.
///
/// `n = 0` has no scaled value because an emoji nobody sent is absent from the frame.
pub const fn scaled(n: u64, divisor: u64) -> Option<u64> {
    if n == 0 {
        return None;
    }
    let s = n / divisor;
    Some(if s == 0 { 1 } else { s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_table() {
        let cases = [
            (0, None),
            (1, Some(1)),
            (999, Some(1)),
            (1000, Some(1)),
            (1001, Some(1)),
            (1999, Some(1)),
            (2000, Some(2)),
            (3785, Some(3)),
        ];
        for (n, want) in cases {
            assert_eq!(scaled(n, 1000), want, "scaled({n}, 1000)");
        }
    }

    #[test]
    fn reduction_with_custom_divisor() {
        let cases = [
            (1, Some(1)),
            (99, Some(1)),
            (100, Some(1)),
            (250, Some(2)),
            (3785, Some(37)),
        ];
        for (n, want) in cases {
            assert_eq!(scaled(n, 100), want, "scaled({n}, 100)");
        }
        assert_eq!(scaled(7, 1), Some(7));
    }

    #[test]
    fn epoch_at_window_boundaries() {
        // (receive ms, window ms, epoch)
        let cases = [
            (0, 2000, 0),
            (1999, 2000, 0),
            (2000, 2000, 1),
            (2001, 2000, 1),
            (3999, 2000, 1),
            (4000, 2000, 2),
            (1_762_464_000_000, 2000, 881_232_000),
            (1_762_464_001_999, 2000, 881_232_000),
            (1_762_464_002_000, 2000, 881_232_001),
            (999, 500, 1),
            (1000, 500, 2),
        ];
        for (ms, window, want) in cases {
            assert_eq!(epoch_of(ms, window), want, "epoch_of({ms}, {window})");
        }
    }

    #[test]
    fn bounds_contain_exactly_their_epoch() {
        let (start, end) = epoch_bounds(881_232_000, 2000);
        assert_eq!((start, end), (1_762_464_000_000, 1_762_464_002_000));
        assert_eq!(epoch_of(start, 2000), 881_232_000);
        assert_eq!(epoch_of(end - 1, 2000), 881_232_000);
        assert_eq!(epoch_of(end, 2000), 881_232_001);
    }
}
