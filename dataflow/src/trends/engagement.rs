//! `PopularStreams`: the streams ranked by engagement — taps over the window.
//!
//! Per-viewer engagement hook: no tier reports viewer counts per stream to the dataflow yet (the
//! subscribers' heartbeats stop at the broadcaster). When one does (e.g. a topic of
//! `(stream, epoch, viewers)` read by a second source), join its collection with the per-stream
//! taps below (`explode` keyed by stream, then `join`) and rank by `taps / viewers` in the same
//! reduction; the frame's `PopularStream` then gains `viewers` and `taps_per_viewer`.

use super::topk::count_diff;
use crate::EpochCount;
use differential_dataflow::VecCollection;

/// Streams with their taps over the window, in rank order.
pub type Ranking = Vec<(String, u64)>;

/// The `n` streams with the most taps over the window, highest first; ties by stream id, lowest
/// first. All streams meet under one key, so one worker ranks them: its work per epoch is the
/// number of streams live in the window (thousands at most), not the window's length.
pub fn popular_streams<'scope>(
    windowed: VecCollection<'scope, u64, EpochCount, i64>,
    n: usize,
) -> VecCollection<'scope, u64, ((), Ranking), isize> {
    windowed
        .explode(|c: EpochCount| Some((((), c.stream), count_diff(c.total))))
        .reduce_named(
            "PopularStreams",
            move |_all, streams: &[(&String, i64)], top| {
                top.push((
                    super::topk::rank(streams.iter().map(|(s, t)| (*s, *t)), n),
                    1,
                ));
            },
        )
}
