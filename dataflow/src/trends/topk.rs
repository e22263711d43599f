//! `TopK`: per stream, the most tapped emojis over the window.

use crate::EpochCount;
use differential_dataflow::VecCollection;

/// A stream's top emojis with their taps in the window, in rank order.
pub type Ranked = Vec<(String, u64)>;

/// Per stream, its `k` most tapped emojis over the window (the windowed collection from
/// `SlideWindow`), highest first.
///
/// Tie rule: equal counts rank by the emoji's UTF-8 bytes, lowest first (Rust's `str` order), so the
/// list is a function of the window's counts alone and every worker count gives the same bytes.
///
/// Work: differential hands the reduction only the streams whose window changed at an epoch (new
/// taps or an epoch leaving), with the emojis that stream holds in its window; that is bounded by
/// the emoji vocabulary, not by the window's length.
pub fn top_k<'scope>(
    windowed: VecCollection<'scope, u64, EpochCount, i64>,
    k: usize,
) -> VecCollection<'scope, u64, (String, Ranked), isize> {
    windowed
        .explode(|c: EpochCount| {
            let stream = c.stream;
            c.emojis
                .into_iter()
                .map(move |(emoji, n)| ((stream.clone(), emoji), count_diff(n)))
        })
        .reduce_named("TopK", move |_stream, emojis: &[(&String, i64)], top| {
            top.push((rank(emojis.iter().map(|(e, n)| (*e, *n)), k), 1));
        })
}

/// The tie rule in one place: by count, highest first, then by emoji, lowest first; the first `k`.
pub fn rank<'a>(counts: impl Iterator<Item = (&'a String, i64)>, k: usize) -> Ranked {
    let mut ranked: Vec<(&String, i64)> = counts.collect();
    let order = |a: &(&String, i64), b: &(&String, i64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
    if ranked.len() > k && k > 0 {
        // Only the first k need sorting: partition around the k-th first.
        ranked.select_nth_unstable_by(k - 1, order);
    }
    ranked.truncate(k);
    ranked.sort_unstable_by(order);
    ranked
        .into_iter()
        .map(|(emoji, n)| {
            let n = u64::try_from(n).expect("a window holds whole epochs, so no count is negative");
            (emoji.clone(), n)
        })
        .collect()
}

/// Taps as a difference. A u64 count above i64::MAX would need 2^63 taps in one epoch.
pub fn count_diff(n: u64) -> i64 {
    i64::try_from(n).expect("an epoch's taps fit in an i64")
}
