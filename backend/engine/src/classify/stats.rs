//! The statistics the classifier's reports rest on: Student's t distribution (for the sequential test)
//! and percentile bootstrap intervals of the metrics.

use serde::{Deserialize, Serialize};

use super::{Metrics, metrics};
use crate::rng::Rng;
use crate::{Error, Result};

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = C[0] + C.iter().enumerate().skip(1).map(|(i, c)| c / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// The continued fraction of the regularized incomplete beta function (modified Lentz), valid for
/// x < (a + 1) / (a + b + 2).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0));
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / clamp(1.0 + even * d);
        c = clamp(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / clamp(1.0 + odd * d);
        c = clamp(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// P(T <= x) for Student's t with `df` degrees of freedom.
pub fn student_t_cdf(x: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + x * x));
    if x >= 0.0 { 1.0 - tail } else { tail }
}

/// The `p` quantile of Student's t with `df` degrees of freedom (0 < p < 1), by bisection on the CDF.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0 && df > 0.0, "t quantile of p = {p}, df = {df}");
    if p < 0.5 {
        return -student_t_quantile(1.0 - p, df);
    }
    let mut hi = 1.0;
    while student_t_cdf(hi, df) < p {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Percentile bootstrap intervals of the metrics: `[low, high]` for each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intervals {
    /// Coverage, e.g. 0.95.
    pub level: f64,
    pub resamples: usize,
    pub accuracy: [f64; 2],
    pub precision: [f64; 2],
    pub recall: [f64; 2],
    pub f1: [f64; 2],
}

/// The `q` quantile (0..=1) of sorted values, interpolated linearly between order statistics (NumPy's
/// default percentile).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}

/// Bootstrap intervals from given resamples (`indices`, each a resample of image indices): the metrics
/// of every resample, then their (1 - level)/2 and (1 + level)/2 quantiles.
pub fn bootstrap_with(
    truth: &[u32],
    predicted: &[u32],
    num_classes: usize,
    indices: &[Vec<usize>],
    level: f64,
) -> Result<Intervals> {
    if indices.is_empty() || !(0.0..1.0).contains(&level) {
        return Err(Error::Config(format!("a bootstrap needs resamples and a level in [0, 1), not {level}")));
    }
    let mut columns: [Vec<f64>; 4] = Default::default();
    for resample in indices {
        if let Some(&bad) = resample.iter().find(|&&i| i >= truth.len()) {
            return Err(Error::Data(format!("resampled image {bad} of {}", truth.len())));
        }
        let t: Vec<u32> = resample.iter().map(|&i| truth[i]).collect();
        let p: Vec<u32> = resample.iter().map(|&i| predicted[i]).collect();
        let Metrics { accuracy, precision, recall, f1, .. } = metrics(&t, &p, num_classes)?;
        for (column, value) in columns.iter_mut().zip([accuracy, precision, recall, f1]) {
            column.push(value);
        }
    }
    let [lo, hi] = [(1.0 - level) / 2.0, (1.0 + level) / 2.0];
    let [accuracy, precision, recall, f1] = columns.map(|mut column| {
        column.sort_by(f64::total_cmp);
        [quantile(&column, lo), quantile(&column, hi)]
    });
    Ok(Intervals { level, resamples: indices.len(), accuracy, precision, recall, f1 })
}

/// Percentile bootstrap intervals of the metrics of `predicted` against `truth`: `resamples` resamples of
/// the images with replacement, drawn from `seed`.
pub fn bootstrap(
    truth: &[u32],
    predicted: &[u32],
    num_classes: usize,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<Intervals> {
    let n = truth.len();
    let mut rng = Rng::derive(seed, 0xB007);
    let indices: Vec<Vec<usize>> = (0..resamples).map(|_| (0..n).map(|_| rng.below(n)).collect()).collect();
    bootstrap_with(truth, predicted, num_classes, &indices, level)
}
