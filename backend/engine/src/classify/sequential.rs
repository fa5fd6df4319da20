//! Sequential stopping: draw noise for an image in growing rounds and stop once the leading class is
//! decided, instead of always spending the full budget.
//!
//! After each round (at 16, 32, 64, ... draws up to the budget N) the leader is the class with the
//! smallest mean error, and for every other class c the paired differences d = e_c - e_leader over the
//! draws so far are tested: the image stops when each mean difference exceeds its standard error times
//! the Student t quantile at 1 - alpha / (looks x rivals), a one-sided test Bonferroni-corrected over the
//! interim looks and the rival classes. So the chance that an image stops on a leader that more draws
//! would overturn is at most about alpha (under the t approximation of the mean). An image that never
//! stops is decided by all N draws, exactly as the fixed budget decides it: the draws of an image are one
//! seeded stream, so its first draws are the same in both.

use serde::{Deserialize, Serialize};

use super::stats::student_t_quantile;

/// When to stop drawing noise for an image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stopping {
    /// The error rate of an early decision (default 0.01).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Draws before the first look (default 16); looks follow at twice as many draws each time.
    #[serde(default = "default_min_draws")]
    pub min_draws: usize,
}

fn default_alpha() -> f64 {
    0.01
}

fn default_min_draws() -> usize {
    16
}

impl Default for Stopping {
    fn default() -> Self {
        Stopping { alpha: default_alpha(), min_draws: default_min_draws() }
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

/// The draw counts at which images are looked at: `min_draws`, doubling, then the budget (the last, where
/// every image still drawing is decided by its mean). Without stopping, only the budget.
pub fn looks(budget: usize, stopping: Option<&Stopping>) -> Vec<usize> {
    let mut looks = Vec::new();
    if let Some(s) = stopping {
        let mut at = s.min_draws;
        while at < budget {
            looks.push(at);
            at *= 2;
        }
    }
    looks.push(budget);
    looks
}

/// The t thresholds of the interim looks (all but the last of `looks`).
pub fn thresholds(looks: &[usize], stopping: &Stopping, num_classes: usize) -> Vec<f64> {
    let interim = looks.len().saturating_sub(1);
    let tests = (interim * num_classes.saturating_sub(1)).max(1) as f64;
    looks[..interim].iter().map(|&n| student_t_quantile(1.0 - stopping.alpha / tests, (n - 1) as f64)).collect()
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
