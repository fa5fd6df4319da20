//! One-dimensional t-SNE (van der Maaten & Hinton 2008) and the feature histograms of the paper's Figs.
//! 7 and 9: real and generated features embedded together on a line, binned, counted per set. The paper
//! rounds the positions to integers; the bins here are equal widths over the embedding's range instead
//! (about sqrt(N) of them, 5 to [`MAX_BINS`]), because t-SNE's scale follows the number of points: a few
//! dozen points land hundreds of units apart (scikit-learn's too), one per integer bin.
//!
//! Exact O(n^2) t-SNE as scikit-learn's `method="exact"` runs it: perplexity-calibrated Gaussian
//! affinities (binary search on each row's precision), symmetrised; Student-t similarities in the
//! embedding; gradient descent with momentum 0.5 then 0.8, per-coordinate gains, early exaggeration 12
//! for the first 250 of 1,000 iterations, learning rate max(n / 48, 50). The start is seeded and tiny
//! (N(0, 1e-4)), so a run is reproducible. Inputs are capped at a few thousand points by the caller.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::distance::FeatureMatrix;
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct TsneOptions {
    pub perplexity: f64,
    pub iterations: usize,
    pub seed: u64,
}

impl Default for TsneOptions {
    fn default() -> Self {
        TsneOptions { perplexity: 30.0, iterations: 1000, seed: 0 }
    }
}

/// Squared distances between all rows (f64).
fn all_squared_distances(x: &FeatureMatrix) -> Vec<f64> {
    let n = x.n;
    let norms: Vec<f64> = (0..n).map(|i| x.row(i).iter().map(|&v| v as f64 * v as f64).sum()).collect();
    let a = faer::Mat::from_fn(n, x.d, |i, j| x.values[i * x.d + j] as f64);
    let gram = &a * a.transpose();
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = if i == j { 0.0 } else { (norms[i] + norms[j] - 2.0 * gram[(i, j)]).max(0.0) };
        }
    }
    out
}

/// Row-conditional affinities p(j|i) with each row's entropy at log(perplexity), symmetrised and
/// normalised: p_ij = (p(j|i) + p(i|j)) / 2n.
fn affinities(dist: &[f64], n: usize, perplexity: f64) -> Vec<f64> {
    let target = perplexity.ln();
    let rows: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let d = &dist[i * n..(i + 1) * n];
            let (mut beta, mut lo, mut hi) = (1.0f64, f64::NEG_INFINITY, f64::INFINITY);
            let mut p = vec![0.0; n];
            for _ in 0..100 {
                let mut sum = 0.0;
                for j in 0..n {
                    p[j] = if j == i { 0.0 } else { (-d[j] * beta).exp() };
                    sum += p[j];
                }
                let sum = sum.max(1e-300);
                let mut weighted = 0.0;
                for j in 0..n {
                    p[j] /= sum;
                    weighted += d[j] * p[j];
                }
                let entropy = sum.ln() + beta * weighted;
                let gap = entropy - target;
                if gap.abs() < 1e-5 {
                    break;
                }
                if gap > 0.0 {
                    lo = beta;
                    beta = if hi.is_finite() { (beta + hi) / 2.0 } else { beta * 2.0 };
                } else {
                    hi = beta;
                    beta = if lo.is_finite() { (beta + lo) / 2.0 } else { beta / 2.0 };
                }
            }
            p
        })
        .collect();
    let mut p = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            p[i * n + j] = ((rows[i][j] + rows[j][i]) / (2.0 * n as f64)).max(1e-12);
        }
    }
    p
}

/// Embeds the rows of `x` on a line.
pub fn tsne_1d(x: &FeatureMatrix, options: &TsneOptions) -> Result<Vec<f64>> {
    let n = x.n;
    if n < 4 {
        return Err(Error::Config(format!("t-SNE needs at least 4 points, got {n}")));
    }
    let perplexity = options.perplexity.min((n - 1) as f64 / 3.0);
    let p = affinities(&all_squared_distances(x), n, perplexity);
    let mut rng = Rng::new(options.seed);
    let mut y: Vec<f64> = rng.normal_vec(n).into_iter().map(|v| 1e-4 * v as f64).collect();
    let mut velocity = vec![0.0; n];
    let mut gains = vec![1.0; n];
    let rate = (n as f64 / 48.0).max(50.0);
    for iteration in 0..options.iterations {
        let exaggeration = if iteration < 250 { 12.0 } else { 1.0 };
        let momentum = if iteration < 250 { 0.5 } else { 0.8 };
        let z: f64 = (0..n)
            .into_par_iter()
            .map(|i| (0..n).filter(|&j| j != i).map(|j| 1.0 / (1.0 + (y[i] - y[j]).powi(2))).sum::<f64>())
            .sum();
        let grad: Vec<f64> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut g = 0.0;
                for j in 0..n {
                    if j != i {
                        let diff = y[i] - y[j];
                        let w = 1.0 / (1.0 + diff * diff);
                        g += (exaggeration * p[i * n + j] - w / z) * w * diff;
                    }
                }
                4.0 * g
            })
            .collect();
        for i in 0..n {
            let reversed = velocity[i] * grad[i] < 0.0;
            gains[i] = if reversed { gains[i] + 0.2 } else { (gains[i] * 0.8f64).max(0.01) };
            velocity[i] = momentum * velocity[i] - rate * gains[i] * grad[i];
            y[i] += velocity[i];
        }
    }
    Ok(y)
}

/// One set's counts over the shared bins.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SetHistogram {
    pub name: String,
    pub counts: Vec<u32>,
    /// Histogram intersection with the first set (the real images), both normalised: 1 = the same
    /// distribution on the line, 0 = disjoint.
    pub overlap: f64,
}

/// The most bins of a [`FeatureHistogram`].
pub const MAX_BINS: usize = 40;

/// Figs. 7/9: the sets' features embedded together by 1-D t-SNE, counted per set in equal-width bins.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FeatureHistogram {
    /// The t-SNE position at the centre of each bin.
    pub centres: Vec<f64>,
    pub sets: Vec<SetHistogram>,
}

/// Histograms of `sets` (name, features; the first is the reference, usually real images). Each set is
/// subsampled (seeded) to at most `per_set` rows so the exact t-SNE stays quick.
pub fn feature_histogram(
    sets: &[(String, &FeatureMatrix)],
    per_set: usize,
    options: &TsneOptions,
) -> Result<FeatureHistogram> {
    let Some((_, first)) = sets.first() else {
        return Err(Error::Config("no feature sets to histogram".into()));
    };
    let d = first.d;
    let mut rng = Rng::new(options.seed ^ 0x5EED);
    let mut values = Vec::new();
    let mut owners = Vec::new();
    for (k, (name, set)) in sets.iter().enumerate() {
        if set.d != d {
            return Err(Error::Config(format!("{name}: {} features, the first set has {d}", set.d)));
        }
        let mut rows: Vec<usize> = (0..set.n).collect();
        rng.shuffle(&mut rows);
        for &r in rows.iter().take(per_set) {
            values.extend_from_slice(set.row(r));
            owners.push(k);
        }
    }
    let joined = FeatureMatrix::new(owners.len(), d, values)?;
    let y = tsne_1d(&joined, options)?;
    let lo = y.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let bins = ((y.len() as f64).sqrt().round() as usize).clamp(5, MAX_BINS);
    let width = ((hi - lo) / bins as f64).max(f64::MIN_POSITIVE);
    let mut counts = vec![vec![0u32; bins]; sets.len()];
    for (&v, &k) in y.iter().zip(&owners) {
        counts[k][(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let centres = (0..bins).map(|b| lo + (b as f64 + 0.5) * width).collect();
    let normalised = |c: &[u32]| {
        let total = c.iter().sum::<u32>().max(1) as f64;
        c.iter().map(|&v| v as f64 / total).collect::<Vec<_>>()
    };
    let reference = normalised(&counts[0]);
    let sets = sets
        .iter()
        .zip(counts)
        .map(|((name, _), counts)| {
            let overlap = normalised(&counts).iter().zip(&reference).map(|(a, b)| a.min(*b)).sum();
            SetHistogram { name: name.clone(), counts, overlap }
        })
        .collect();
    Ok(FeatureHistogram { centres, sets })
}
