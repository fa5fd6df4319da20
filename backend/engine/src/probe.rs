//! Linear probes: multinomial logistic regression on frozen features (the paper's Table 6 baseline on a
//! pre-trained encoder), fitted by Newton's method to the exact optimum of scikit-learn's objective
//! (`LogisticRegression(C=1/lambda)`: summed log-loss + lambda/2 |W|^2, intercepts not penalised), on
//! features standardised with the training set's mean and deviation. For two classes that is the binary
//! model (one weight vector), which is the two-class multinomial with twice the penalty.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A fitted probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    pub classes: usize,
    /// Per feature: the training mean and standard deviation (1 where a feature is constant).
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    /// `weights[k]`: class k's weights on the standardised features, then its intercept.
    pub weights: Vec<Vec<f64>>,
    pub lambda: f64,
    pub iterations: usize,
}

fn softmax(logits: &mut [f64]) {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for l in logits.iter_mut() {
        *l = (*l - max).exp();
        sum += *l;
    }
    for l in logits.iter_mut() {
        *l /= sum;
    }
}

/// Solves `a x = b` for symmetric positive definite `a` (n x n, row-major) by faer's blocked Cholesky;
/// None when `a` is not positive definite.
fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    use faer::linalg::solvers::Solve;
    let llt = faer::Mat::from_fn(n, n, |i, j| a[i * n + j]).llt(faer::Side::Lower).ok()?;
    let x = llt.solve(faer::Mat::from_fn(n, 1, |i, _| b[i]));
    Some((0..n).map(|i| x[(i, 0)]).collect())
}

impl Probe {
    fn standardise(&self, row: &[f32]) -> Vec<f64> {
        let mut x: Vec<f64> =
            row.iter().zip(&self.mean).zip(&self.scale).map(|((&v, m), s)| (v as f64 - m) / s).collect();
        x.push(1.0);
        x
    }

    /// Class probabilities of every row of `features`.
    pub fn probabilities(&self, features: &[Vec<f32>]) -> Vec<Vec<f64>> {
        features
            .iter()
            .map(|row| {
                let x = self.standardise(row);
                let mut logits: Vec<f64> =
                    self.weights.iter().map(|w| w.iter().zip(&x).map(|(a, b)| a * b).sum()).collect();
                softmax(&mut logits);
                logits
            })
            .collect()
    }

    /// The most probable class of every row.
    pub fn predict(&self, features: &[Vec<f32>]) -> Vec<u32> {
        self.probabilities(features)
            .iter()
            .map(|p| p.iter().enumerate().fold(0, |best, (k, &v)| if v > p[best] { k } else { best }) as u32)
            .collect()
    }

    /// Fits a probe on `features` (rows of equal length) and `labels` in 0..`classes` with L2 strength
    /// `lambda` (> 0).
    pub fn fit(features: &[Vec<f32>], labels: &[u32], classes: usize, lambda: f64) -> Result<Probe> {
        let n = features.len();
        let d = features.first().map_or(0, Vec::len);
        if n == 0 || d == 0 || labels.len() != n || features.iter().any(|r| r.len() != d) {
            return Err(Error::Data(format!(
                "a probe needs rows of equal length and a label each ({n} rows, {} labels)",
                labels.len()
            )));
        }
        if classes < 2 || labels.iter().any(|&y| y as usize >= classes) || lambda.is_nan() || lambda <= 0.0 {
            return Err(Error::Config(format!(
                "a probe needs labels in 0..{classes} (at least 2 classes) and lambda > 0"
            )));
        }
        let mean: Vec<f64> = (0..d).map(|j| features.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64).collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let var = features.iter().map(|r| (r[j] as f64 - mean[j]).powi(2)).sum::<f64>() / n as f64;
                if var > 1e-24 { var.sqrt() } else { 1.0 }
            })
            .collect();
        let mut probe = Probe { classes, mean, scale, weights: vec![vec![0.0; d + 1]; classes], lambda, iterations: 0 };
        let given = lambda;
        let xs: Vec<Vec<f64>> = features.iter().map(|r| probe.standardise(r)).collect();
        let design = faer::Mat::from_fn(n, d + 1, |i, j| xs[i][j]);
        let p = d + 1;
        let dim = classes * p;
        // Two classes: w1 = -w0 at the optimum, so lambda' (|w0|^2 + |w1|^2) / 2 = lambda |w1 - w0|^2 / 2
        // needs lambda' = 2 lambda.
        let lambda = if classes == 2 { 2.0 * lambda } else { lambda };
        let objective = |weights: &[Vec<f64>]| -> f64 {
            let mut loss = 0.0;
            for (x, &y) in xs.iter().zip(labels) {
                let mut logits: Vec<f64> = weights.iter().map(|w| w.iter().zip(x).map(|(a, b)| a * b).sum()).collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + logits.iter_mut().map(|l| (*l - max).exp()).sum::<f64>().ln();
                loss += lse - weights[y as usize].iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
            }
            loss + 0.5 * lambda * weights.iter().map(|w| w[..d].iter().map(|v| v * v).sum::<f64>()).sum::<f64>()
        };
        for iteration in 0..100 {
            // Gradient and Hessian of the objective in the flattened weights (class-major). Block (k, l) of
            // the Hessian is X^T diag(p_k (1[k = l] - p_l)) X, a matrix product.
            let mut grad = vec![0.0; dim];
            let mut hess = vec![0.0; dim * dim];
            let probs: Vec<Vec<f64>> = xs
                .iter()
                .map(|x| {
                    let mut prob: Vec<f64> =
                        probe.weights.iter().map(|w| w.iter().zip(x).map(|(a, b)| a * b).sum()).collect();
                    softmax(&mut prob);
                    prob
                })
                .collect();
            for ((x, &y), prob) in xs.iter().zip(labels).zip(&probs) {
                for k in 0..classes {
                    let residual = prob[k] - f64::from(u8::from(y as usize == k));
                    for (j, &xj) in x.iter().enumerate() {
                        grad[k * p + j] += residual * xj;
                    }
                }
            }
            for k in 0..classes {
                for l in k..classes {
                    let weighted = faer::Mat::from_fn(n, p, |i, j| {
                        probs[i][k] * (f64::from(u8::from(k == l)) - probs[i][l]) * design[(i, j)]
                    });
                    let block = design.transpose() * &weighted;
                    for a in 0..p {
                        for b in 0..p {
                            hess[(k * p + a) * dim + l * p + b] = block[(a, b)];
                            hess[(l * p + b) * dim + k * p + a] = block[(a, b)];
                        }
                    }
                }
            }
            for k in 0..classes {
                for j in 0..p {
                    let i = k * p + j;
                    // The intercepts are not penalised; a whisker of ridge keeps the Hessian invertible
                    // (adding one constant to every class's intercept changes nothing).
                    let ridge = if j < d { lambda } else { 1e-10 };
                    grad[i] += if j < d { lambda * probe.weights[k][j] } else { 0.0 };
                    hess[i * dim + i] += ridge;
                }
            }
            let step = cholesky_solve(&hess, &grad, dim)
                .ok_or_else(|| Error::Data("the probe's Hessian is not positive definite".into()))?;
            // Backtracking: Newton's step, halved until the objective decreases.
            let before = objective(&probe.weights);
            let mut t = 1.0;
            let candidate = loop {
                let c: Vec<Vec<f64>> =
                    (0..classes).map(|k| (0..p).map(|j| probe.weights[k][j] - t * step[k * p + j]).collect()).collect();
                if objective(&c) <= before || t < 1e-8 {
                    break c;
                }
                t *= 0.5;
            };
            probe.weights = candidate;
            probe.iterations = iteration + 1;
            let decrement: f64 = grad.iter().zip(&step).map(|(g, s)| g * s).sum();
            if decrement / 2.0 < 1e-12 * (1.0 + before.abs()) {
                break;
            }
        }
        probe.lambda = given;
        Ok(probe)
    }
}

/// Features of `samples` (`[N, C, H, W]`) for a probe: a representation model's encoder tokens,
/// averaged over the tokens (`[N, hidden]`), computed in batches of `batch_size`.
pub fn encoder_features(
    model: &crate::dit::Dit,
    samples: &candle_core::Tensor,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let n = samples.dim(0)?;
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(batch_size.max(1)) {
        let batch = samples.narrow(0, start, batch_size.max(1).min(n - start))?;
        let pooled = model.encode(&batch)?.mean(1)?.to_dtype(candle_core::DType::F32)?;
        out.extend(pooled.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// The L2 strengths [`choose`] tries.
pub const LAMBDAS: [f64; 7] = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0];

/// Fits a probe for every strength of `lambdas` on the training features and keeps the one with the best
/// F1 (then accuracy; then the stronger penalty) on the validation features. Returns it with its
/// validation metrics.
pub fn choose(
    train: (&[Vec<f32>], &[u32]),
    validation: (&[Vec<f32>], &[u32]),
    classes: usize,
    lambdas: &[f64],
) -> Result<(Probe, crate::classify::Metrics)> {
    let mut best: Option<(Probe, crate::classify::Metrics)> = None;
    for &lambda in lambdas {
        let probe = Probe::fit(train.0, train.1, classes, lambda)?;
        let m = crate::classify::metrics(validation.1, &probe.predict(validation.0), classes)?;
        let better = best.as_ref().is_none_or(|(_, b)| (m.f1, m.accuracy) >= (b.f1, b.accuracy));
        if better {
            best = Some((probe, m));
        }
    }
    best.ok_or_else(|| Error::Config("no probe strengths to try".into()))
}
