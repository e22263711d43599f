//! When each request is due: a base rate, multiplied during "goal moments" (a wicket, a goal, a
//! knockout line in a debate), on an open-loop timetable that never waits for answers.

use crate::zipf::Rng;
use std::ops::Range;
use std::time::Duration;

/// Goal moments: one per `every`, starting at a seeded random point in the first three quarters
/// of its period (never at the very start, so the run has a baseline first), lasting `length`,
/// during which the rate is `multiplier` times the base.
#[derive(Debug, Clone)]
pub struct Goals {
    windows: Vec<Range<Duration>>,
    multiplier: f64,
}

impl Goals {
    /// No goal moments: a flat rate.
    pub fn none() -> Self {
        Goals {
            windows: Vec::new(),
            multiplier: 1.0,
        }
    }

    /// The goal moments of a run of `run` length. `length` must be shorter than `every`.
    pub fn new(
        every: Duration,
        length: Duration,
        multiplier: f64,
        run: Duration,
        seed: u64,
    ) -> Self {
        assert!(
            length < every,
            "a goal moment must be shorter than the time between them"
        );
        let mut rng = Rng::new(seed);
        let slack = every - length;
        let mut windows = Vec::new();
        let mut period = Duration::ZERO;
        while period < run {
            // Between a quarter of the slack and all of it after the period starts.
            let offset = slack.mul_f64(0.25 + 0.75 * rng.next_f64());
            let start = period + offset;
            if start < run {
                windows.push(start..(start + length).min(run));
            }
            period += every;
        }
        Goals {
            windows,
            multiplier,
        }
    }

    pub fn windows(&self) -> &[Range<Duration>] {
        &self.windows
    }

    pub fn multiplier_at(&self, t: Duration) -> f64 {
        if self.windows.iter().any(|w| w.contains(&t)) {
            self.multiplier
        } else {
            1.0
        }
    }
}

/// The open-loop timetable: request i is due at `due[i]`, whatever happened to request i − 1.
/// Each gap is the inverse of the rate in force at the previous send.
pub struct Timetable<'a> {
    per_second: f64,
    goals: &'a Goals,
    next: Duration,
    until: Duration,
}

impl<'a> Timetable<'a> {
    pub fn new(per_second: f64, goals: &'a Goals, until: Duration) -> Self {
        assert!(per_second > 0.0, "the rate must be positive");
        Timetable {
            per_second,
            goals,
            next: Duration::ZERO,
            until,
        }
    }
}

impl Iterator for Timetable<'_> {
    /// When the request is due, after the start, and the rate multiplier in force then.
    type Item = (Duration, f64);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.until {
            return None;
        }
        let due = self.next;
        let multiplier = self.goals.multiplier_at(due);
        self.next += Duration::from_secs_f64(1.0 / (self.per_second * multiplier));
        Some((due, multiplier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn one_goal_per_period_inside_its_period_and_none_overlapping() {
        let goals = Goals::new(S(20), S(4), 5.0, S(100), 3);
        assert_eq!(goals.windows().len(), 5);
        for (k, w) in goals.windows().iter().enumerate() {
            let period = S(20 * k as u64);
            assert!(
                w.start >= period + S(4),
                "{k}: {w:?} starts after a quarter of the slack"
            );
            assert!(w.end <= period + S(20), "{k}: {w:?} ends inside its period");
            assert_eq!(w.end - w.start, S(4));
        }
        let w = goals.windows()[2].clone();
        assert_eq!(goals.multiplier_at(w.start), 5.0);
        assert_eq!(goals.multiplier_at(w.end - Duration::from_millis(1)), 5.0);
        assert_eq!(goals.multiplier_at(w.end), 1.0);
        assert_eq!(goals.multiplier_at(Duration::ZERO), 1.0);
    }

    #[test]
    fn goals_are_cut_at_the_end_of_the_run_and_repeat_with_the_seed() {
        let goals = Goals::new(S(10), S(6), 3.0, S(12), 9);
        assert!(goals.windows().iter().all(|w| w.end <= S(12)));
        let again = Goals::new(S(10), S(6), 3.0, S(12), 9);
        assert_eq!(goals.windows(), again.windows());
        assert!(Goals::none().windows().is_empty());
    }

    #[test]
    fn the_timetable_offers_the_rate_times_the_multiplier() {
        // 100/s for 10 s, with one goal moment of 2 s at ×5: 800 + 1000 = 1800 requests.
        let goals = Goals {
            windows: vec![S(4)..S(6)],
            multiplier: 5.0,
        };
        let sends: Vec<_> = Timetable::new(100.0, &goals, S(10)).collect();
        let in_goal = sends
            .iter()
            .filter(|(t, _)| goals.windows()[0].contains(t))
            .count();
        assert!(
            (999..=1001).contains(&in_goal),
            "{in_goal} in the goal moment"
        );
        assert!(
            (1799..=1801).contains(&sends.len()),
            "{} in all",
            sends.len()
        );
        assert!(sends.iter().all(|(t, m)| *m == goals.multiplier_at(*t)));
        assert!(
            sends.windows(2).all(|w| w[0].0 < w[1].0),
            "strictly increasing"
        );
        assert!(sends.last().is_some_and(|(t, _)| *t < S(10)));
    }

    #[test]
    fn a_flat_timetable_is_evenly_spaced() {
        let flat = Goals::none();
        let sends: Vec<_> = Timetable::new(4.0, &flat, S(2)).map(|(t, _)| t).collect();
        let ms: Vec<u128> = sends.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 250, 500, 750, 1000, 1250, 1500, 1750]);
    }
}
