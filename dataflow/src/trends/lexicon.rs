//! The Emoji Sentiment Ranking v1.0 (Kralj Novak et al., 2015; CC BY-SA 4.0, see
//! `dataflow/data/Emoji_Sentiment_Data_v1.0.LICENSE.md`), compiled into the binary so every
//! worker scores the same way without a file to ship beside it.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Scores are kept in millionths, as integers, so window sums are exact and retractions cancel.
pub const SCORE_UNIT: i64 = 1_000_000;

const RANKING_CSV: &str = include_str!("../../data/Emoji_Sentiment_Data_v1.0.csv");

/// Variation selector 16 (emoji presentation): the ranking lists `❤` where viewers send `❤️`.
const VS16: char = '\u{FE0F}';

/// The ranking's sentiment score of an emoji, in millionths of the -1..+1 scale, if it ranks it.
///
/// The ranking (tweets from 2013) lists single code points only. An emoji scores as its base code
/// point once the presentation selector (U+FE0F) and skin-tone modifiers (U+1F3FB..U+1F3FF) are
/// removed, so `❤️` scores as `❤` and `👍🏽` as `👍`; anything still longer (ZWJ sequences, flags,
/// keycaps) is unscored rather than guessed from one of its parts.
pub fn score(emoji: &str) -> Option<i64> {
    let mut base = emoji
        .chars()
        .filter(|c| *c != VS16 && !('\u{1F3FB}'..='\u{1F3FF}').contains(c));
    let (Some(c), None) = (base.next(), base.next()) else {
        return None;
    };
    ranking().get(&c).copied()
}

fn ranking() -> &'static HashMap<char, i64> {
    static RANKING: OnceLock<HashMap<char, i64>> = OnceLock::new();
    RANKING.get_or_init(|| parse(RANKING_CSV))
}

/// Each row's score is the paper's: the mean of -1, 0, +1 under Laplace-smoothed probabilities,
/// `(pos + 1)/(n + 3) - (neg + 1)/(n + 3) = (pos - neg)/(n + 3)`.
fn parse(csv: &str) -> HashMap<char, i64> {
    csv.lines()
        .skip(1) // the header
        .map(|line| {
            let fields: Vec<&str> = line.trim_end_matches('\r').split(',').collect();
            let number = |i: usize| -> i64 {
                fields[i]
                    .parse()
                    .expect("the shipped ranking has integer counts in columns 3, 5 and 7")
            };
            let mut chars = fields[0].chars();
            let emoji = chars
                .next()
                .expect("the shipped ranking names an emoji on every row");
            assert!(
                chars.next().is_none(),
                "the shipped ranking lists single code points"
            );
            let (occurrences, negative, positive) = (number(2), number(4), number(6));
            (
                emoji,
                div_round((positive - negative) * SCORE_UNIT, occurrences + 3),
            )
        })
        .collect()
}

/// `a / b` rounded to the nearest integer, halves away from zero (`b > 0`).
pub fn div_round(a: i64, b: i64) -> i64 {
    debug_assert!(b > 0, "a positive divisor");
    if a >= 0 {
        (a + b / 2) / b
    } else {
        -((-a + b / 2) / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_paper() {
        // 😂: 14622 occurrences, 3614 negative, 6845 positive: 3231 / 14625 = 0.220923…
        assert_eq!(score("😂"), Some(220_923));
        // ❤: 8050, 355, 6361: 6006 / 8053 = 0.745808…
        assert_eq!(score("❤"), Some(745_809));
        assert_eq!(score("❤️"), score("❤"), "VS16 is presentation only");
        assert_eq!(score("👍🏽"), score("👍"), "a skin tone keeps the base score");
        assert!(score("😭").unwrap() < 0, "the ranking has 😭 negative");
        assert_eq!(score("👨‍👩‍👧"), None, "ZWJ sequences are not ranked");
        assert_eq!(score("🇮🇳"), None, "flags are not ranked");
        assert_eq!(score("a"), None);
        assert_eq!(score(""), None);
        assert_eq!(ranking().len(), 969);
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let cases = [(5, 2, 3), (-5, 2, -3), (4, 3, 1), (-4, 3, -1), (0, 7, 0)];
        for (a, b, want) in cases {
            assert_eq!(div_round(a, b), want, "div_round({a}, {b})");
        }
    }
}
