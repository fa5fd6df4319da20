//! Sequential stopping: draw noise for an image in rounds and stop once its class is decided, instead of
//! always spending the full budget of N draws.
//!
//! At each look the leader is the class with the smallest mean error, and for every other class c the
//! paired differences d = e_c - e_leader over the n draws so far give z = mean(d) / se(d). Two rules
//! decide when the lead is enough ([`Rule`]):
//!
//! - [`Rule::Predictive`] (the default) targets the fixed budget's decision, which is what the sequential
//!   run replaces: the image stops once the predictive probability that the remaining N - n draws would
//!   overturn the lead (a flat prior on the mean difference, Student's t for its uncertainty) is below
//!   alpha per rival, that is z > t(1 - alpha / rivals, n - 1) * sqrt((N - n) / N). Near the end of the
//!   budget a small lead is enough, because few draws are left to overturn it (stochastic curtailment).
//!   Looks come every `min_draws` draws.
//! - [`Rule::Confidence`] targets the decision of unlimited draws: a one-sided t test at
//!   1 - alpha / (looks x rivals), Bonferroni-corrected over the interim looks and the rival classes, so
//!   the chance that an image stops on a leader more draws would overturn is at most about alpha. Looks at
//!   `min_draws`, then twice as many draws each time.
//!
//! An image that never stops is decided by all N draws, exactly as the fixed budget decides it: the
//! draws of an image are one seeded stream, so its first draws are the same in both, and a fixed run that
//! keeps every draw's errors can replay any rule without a model ([`replay`]).

use serde::{Deserialize, Serialize};

use super::stats::student_t_quantile;

/// Which lead stops an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The remaining draws of the budget are unlikely (< alpha) to overturn the leader.
    #[default]
    Predictive,
    /// The leader is ahead by a Bonferroni-corrected t test at alpha: unlimited draws would agree.
    Confidence,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Predictive => "predictive",
            Rule::Confidence => "confidence",
        }
    }
}

/// When to stop drawing noise for an image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stopping {
    /// The error rate of an early decision (default 0.01).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Draws before the first look (default 16); the rule sets the looks after it.
    #[serde(default = "default_min_draws")]
    pub min_draws: usize,
    #[serde(default)]
    pub rule: Rule,
}

fn default_alpha() -> f64 {
    0.01
}

fn default_min_draws() -> usize {
    16
}

impl Default for Stopping {
    fn default() -> Self {
        Stopping { alpha: default_alpha(), min_draws: default_min_draws(), rule: Rule::default() }
    }
}

impl Stopping {
    pub fn check(&self) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(format!("the stopping error rate alpha is in (0, 1), not {}", self.alpha));
        }
        if self.min_draws < 2 {
            return Err("sequential stopping needs at least 2 draws before its first look".into());
        }
        Ok(())
    }
}

/// When images are looked at and what lead stops them there.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Draw counts of the looks, the budget last (where every image still drawing is decided by its mean).
    pub looks: Vec<usize>,
    /// The z an image's lead must exceed at each interim look (all but the last).
    pub thresholds: Vec<f64>,
}

impl Schedule {
    /// The looks and thresholds of `stopping` for a budget of `budget` draws and `num_classes` classes;
    /// without stopping, one look at the budget.
    pub fn new(budget: usize, stopping: Option<&Stopping>, num_classes: usize) -> Self {
        let Some(s) = stopping else {
            return Schedule { looks: vec![budget], thresholds: Vec::new() };
        };
        let mut looks = Vec::new();
        let mut at = s.min_draws;
        while at < budget {
            looks.push(at);
            at = match s.rule {
                Rule::Predictive => at + s.min_draws,
                Rule::Confidence => at * 2,
            };
        }
        let rivals = num_classes.saturating_sub(1).max(1) as f64;
        let thresholds = match s.rule {
            Rule::Predictive => looks
                .iter()
                .map(|&n| {
                    let remaining = (budget - n) as f64 / budget as f64;
                    student_t_quantile(1.0 - s.alpha / rivals, (n - 1) as f64) * remaining.sqrt()
                })
                .collect(),
            Rule::Confidence => {
                let tests = looks.len().max(1) as f64 * rivals;
                looks.iter().map(|&n| student_t_quantile(1.0 - s.alpha / tests, (n - 1) as f64)).collect()
            }
        };
        looks.push(budget);
        Schedule { looks, thresholds }
    }

    /// Whether an image with `tally` stops at interim look `look` (never at the last: it is decided there).
    pub fn stops(&self, look: usize, tally: &Tally) -> bool {
        self.thresholds.get(look).is_some_and(|&threshold| tally.decided(threshold))
    }
}

/// Replays `stopping` on a fixed run's recorded errors: `trace[i]` holds image i's errors draw by draw
/// (`budget x num_classes`, in stream order). Each image's tally is what a sequential run would have
/// ended with, since it would have drawn the same noise in the same order.
pub fn replay(trace: &[Vec<f32>], num_classes: usize, budget: usize, stopping: &Stopping) -> Vec<Tally> {
    let schedule = Schedule::new(budget, Some(stopping), num_classes);
    trace
        .iter()
        .map(|errors| {
            debug_assert_eq!(errors.len(), budget * num_classes);
            let mut tally = Tally::new(num_classes);
            for (look, &at) in schedule.looks.iter().enumerate() {
                for row in errors[tally.draws * num_classes..at * num_classes].chunks(num_classes) {
                    tally.add(row);
                }
                if schedule.stops(look, &tally) {
                    break;
                }
            }
            tally
        })
        .collect()
}

/// Running sums of one image's class errors over its draws: enough for the mean and variance of any
/// paired difference between two classes.
#[derive(Clone, Debug)]
pub struct Tally {
    pub draws: usize,
    sums: Vec<f64>,
    /// `cross[a][b]`: the sum over draws of e_a * e_b.
    cross: Vec<Vec<f64>>,
}

impl Tally {
    pub fn new(num_classes: usize) -> Self {
        Tally { draws: 0, sums: vec![0.0; num_classes], cross: vec![vec![0.0; num_classes]; num_classes] }
    }

    /// Adds one draw's errors, one per class.
    pub fn add(&mut self, errors: &[f32]) {
        self.draws += 1;
        for (a, &ea) in errors.iter().enumerate() {
            self.sums[a] += ea as f64;
            for (b, &eb) in errors.iter().enumerate() {
                self.cross[a][b] += ea as f64 * eb as f64;
            }
        }
    }

    pub fn means(&self) -> Vec<f64> {
        self.sums.iter().map(|s| s / self.draws.max(1) as f64).collect()
    }

    /// The class with the smallest mean error (the first of equals).
    pub fn leader(&self) -> u32 {
        let means = self.means();
        let mut best = 0;
        for (c, &m) in means.iter().enumerate() {
            if m < means[best] {
                best = c;
            }
        }
        best as u32
    }

    /// Whether every rival's mean paired difference to the leader exceeds `threshold` standard errors.
    pub fn decided(&self, threshold: f64) -> bool {
        let n = self.draws as f64;
        if self.draws < 2 {
            return false;
        }
        let l = self.leader() as usize;
        let means = self.means();
        (0..self.sums.len()).filter(|&c| c != l).all(|c| {
            let diff = means[c] - means[l];
            let second_moment = (self.cross[c][c] - 2.0 * self.cross[c][l] + self.cross[l][l]) / n;
            let variance = ((second_moment - diff * diff) * n / (n - 1.0)).max(0.0);
            diff > threshold * (variance / n).sqrt()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_follow_the_rule_and_end_at_the_budget() {
        let predictive = Stopping { alpha: 0.01, min_draws: 16, rule: Rule::Predictive };
        let confidence = Stopping { rule: Rule::Confidence, ..predictive };
        assert_eq!(Schedule::new(64, Some(&predictive), 2).looks, vec![16, 32, 48, 64]);
        assert_eq!(Schedule::new(100, Some(&confidence), 2).looks, vec![16, 32, 64, 100]);
        assert_eq!(Schedule::new(64, None, 2), Schedule { looks: vec![64], thresholds: vec![] });
        // A budget at or below the first look has no interim look.
        assert_eq!(Schedule::new(16, Some(&predictive), 2).looks, vec![16]);
    }

    #[test]
    fn the_predictive_threshold_shrinks_as_the_budget_runs_out() {
        let s = Stopping { alpha: 0.01, min_draws: 16, rule: Rule::Predictive };
        let schedule = Schedule::new(512, Some(&s), 2);
        let z = &schedule.thresholds;
        assert_eq!(z.len(), 31);
        assert!(z.windows(2).all(|w| w[1] < w[0]), "{z:?}");
        // At half the budget: t(0.99, 255) * sqrt(1/2) = 2.3410 * 0.7071.
        assert!((z[15] - 2.341 * 0.5f64.sqrt()).abs() < 1e-3, "{}", z[15]);
        // The Bonferroni t test: 5 interim looks (16 .. 256 draws), each one-sided at 0.01 / 5.
        let c = Schedule::new(512, Some(&Stopping { rule: Rule::Confidence, ..s }), 2);
        assert_eq!(c.looks, vec![16, 32, 64, 128, 256, 512]);
        for (&n, &threshold) in c.looks.iter().zip(&c.thresholds) {
            let tail = 1.0 - super::super::stats::student_t_cdf(threshold, (n - 1) as f64);
            assert!((tail - 0.002).abs() < 1e-6, "{n} draws: tail {tail}");
        }
    }

    #[test]
    fn replay_stops_where_the_lead_is_decided_and_otherwise_takes_every_draw() {
        let s = Stopping { alpha: 0.01, min_draws: 4, rule: Rule::Predictive };
        // Class 1 always better by about 1: decided at the first look.
        let clear: Vec<f32> = (0..16).flat_map(|i| [2.0 + (i % 3) as f32 * 0.1, 1.0]).collect();
        // Alternating leads of equal size: the mean difference is 0 at every even count, never decided.
        let tied: Vec<f32> = (0..16).flat_map(|i| if i % 2 == 0 { [1.0, 2.0] } else { [2.0, 1.0] }).collect();
        let tallies = replay(&[clear, tied], 2, 16, &s);
        assert_eq!((tallies[0].draws, tallies[0].leader()), (4, 1));
        assert_eq!(tallies[1].draws, 16);
        assert_eq!(tallies[1].means(), vec![1.5, 1.5]);
    }
}
