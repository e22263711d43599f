//! `Sentiment`: per stream, the tap-weighted mean of the Emoji Sentiment Ranking's scores, in the
//! newest epoch and over the window, as exact integer sums that retractions cancel.

use super::lexicon::{self, div_round, SCORE_UNIT};
use crate::EpochCount;
use differential_dataflow::operators::CountTotal;
use differential_dataflow::VecCollection;
use emostream_protocol::trends::SentimentIndex;

/// `(Σ taps × score in millionths, scored taps, all taps)` of some epochs of one stream.
pub type Tally = (i64, i64, i64);

/// A stream's tallies: the newest epoch, then the window.
pub type Tallies = (Tally, Tally);

/// Per stream, the tallies of the newest epoch (`this_epoch`: `SlideWindow` of 1) and of the
/// window (`windowed`), as one difference, so one count gives both and one frame carries both.
///
/// Work: each epoch adds and retracts one tally per stream and window; the count touches only
/// those streams, whatever the window's length.
pub fn tallies<'scope>(
    this_epoch: VecCollection<'scope, u64, EpochCount, i64>,
    windowed: VecCollection<'scope, u64, EpochCount, i64>,
) -> VecCollection<'scope, u64, (String, Tallies), isize> {
    const NONE: Tally = (0, 0, 0);
    this_epoch
        .explode(|c: EpochCount| Some((c.stream.clone(), (tally(&c), NONE))))
        .concat(windowed.explode(|c: EpochCount| Some((c.stream.clone(), (NONE, tally(&c))))))
        .count_total()
}

/// One epoch's tally. An emoji the ranking does not score counts in `taps` only.
pub fn tally(c: &EpochCount) -> Tally {
    let (mut weighted, mut scored) = (0, 0);
    for (emoji, n) in &c.emojis {
        if let Some(score) = lexicon::score(emoji) {
            let n = super::topk::count_diff(*n);
            weighted += n * score;
            scored += n;
        }
    }
    (weighted, scored, super::topk::count_diff(c.total))
}

/// The index of a tally: the weighted mean in millionths, rounded half away from zero, then as a
/// fraction (so the same tally always prints the same number).
pub fn index((weighted, scored, taps): Tally) -> SentimentIndex {
    SentimentIndex {
        index: (scored > 0).then(|| div_round(weighted, scored) as f64 / SCORE_UNIT as f64),
        scored: u64::try_from(scored).expect("a tally of whole epochs is not negative"),
        taps: u64::try_from(taps).expect("a tally of whole epochs is not negative"),
    }
}
