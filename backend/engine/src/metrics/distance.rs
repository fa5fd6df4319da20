//! The numbers of generation metrics, on feature matrices (rows are images), in f64 with faer:
//! Frechet distance (FID, sFID), Inception Score, precision and recall (Kynkaeaenniemi et al. 2019, as the
//! ADM evaluator computes them), density and coverage (Naeem et al. 2020, as their `prdc` package does).

use faer::{Mat, Side};

use crate::{Error, Result};

/// `n` rows of `d` features, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMatrix {
    pub n: usize,
    pub d: usize,
    pub values: Vec<f32>,
}

impl FeatureMatrix {
    pub fn new(n: usize, d: usize, values: Vec<f32>) -> Result<Self> {
        if values.len() != n * d {
            return Err(Error::Config(format!("{} feature values do not make {n} rows of {d}", values.len())));
        }
        Ok(FeatureMatrix { n, d, values })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.d..(i + 1) * self.d]
    }

    fn to_faer(&self) -> Mat<f64> {
        Mat::from_fn(self.n, self.d, |i, j| self.values[i * self.d + j] as f64)
    }

    /// The rows of `parts`, one part after another (batches joined into one set).
    pub fn concat(parts: &[FeatureMatrix]) -> Result<Self> {
        let d = parts.first().map_or(0, |p| p.d);
        if parts.iter().any(|p| p.d != d) {
            return Err(Error::Config("feature matrices of different widths".into()));
        }
        let values: Vec<f32> = parts.iter().flat_map(|p| p.values.iter().copied()).collect();
        Ok(FeatureMatrix { n: values.len() / d.max(1), d, values })
    }
}

/// Mean and covariance (unbiased, as `np.cov`) of a feature set: all FID needs of it.
#[derive(Clone, Debug)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    pub covariance: Mat<f64>,
}

impl Gaussian {
    pub fn fit(features: &FeatureMatrix) -> Result<Self> {
        if features.n < 2 {
            return Err(Error::Config(format!("a covariance needs at least 2 images, got {}", features.n)));
        }
        let x = features.to_faer();
        let mean: Vec<f64> = (0..x.ncols()).map(|j| x.col(j).iter().sum::<f64>() / x.nrows() as f64).collect();
        let centred = Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] - mean[j]);
        let covariance = (centred.transpose() * &centred) / (features.n as f64 - 1.0);
        Ok(Gaussian { mean, covariance })
    }
}

/// The Frechet distance between two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).
///
/// tr (S1 S2)^(1/2) is the sum of the square roots of the eigenvalues of S1 S2, which are those of the
/// symmetric positive semi-definite M = L^T S2 L with S1 = V diag(l) V^T and L = V diag(sqrt l). Two
/// symmetric eigendecompositions replace scipy's Schur-based `sqrtm`: the same number on well-conditioned
/// covariances, and on near-singular ones (fewer images than features) a real, finite one without the
/// `eps * I` retry, since rounding's tiny negative eigenvalues are clipped to zero.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    let d = a.mean.len();
    if b.mean.len() != d {
        return Err(Error::Config(format!("feature widths differ: {d} vs {}", b.mean.len())));
    }
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &Mat<f64>| (0..d).map(|i| m[(i, i)]).sum::<f64>();
    let eig = a
        .covariance
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Config(format!("eigendecomposition failed: {e:?}")))?;
    let roots = eig.S().column_vector().iter().map(|&l| l.max(0.0).sqrt()).collect::<Vec<_>>();
    let l = Mat::from_fn(d, d, |i, j| eig.U()[(i, j)] * roots[j]);
    let m = l.transpose() * &b.covariance * &l;
    let m = Mat::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let eigenvalues = m
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::Config(format!("eigendecomposition failed: {e:?}")))?;
    let trace_sqrt: f64 = eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).sum();
    Ok(mean_term + trace(&a.covariance) + trace(&b.covariance) - 2.0 * trace_sqrt)
}

/// Inception Score: exp(E_x KL(p(y|x) || p(y))) on each of `splits` consecutive equal parts (as the
/// original improved-gan code splits), softmax over `logits`; returns the mean and standard deviation
/// over parts.
pub fn inception_score(logits: &FeatureMatrix, splits: usize) -> Result<(f64, f64)> {
    if splits == 0 || logits.n < splits {
        return Err(Error::Config(format!("{} images cannot make {splits} Inception Score splits", logits.n)));
    }
    let probs: Vec<Vec<f64>> = (0..logits.n)
        .map(|i| {
            let row = logits.row(i);
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(|v| v / sum).collect()
        })
        .collect();
    let scores: Vec<f64> = (0..splits)
        .map(|s| {
            let part = &probs[s * logits.n / splits..(s + 1) * logits.n / splits];
            let marginal: Vec<f64> =
                (0..logits.d).map(|j| part.iter().map(|p| p[j]).sum::<f64>() / part.len() as f64).collect();
            let kl: f64 = part
                .iter()
                .map(|p| {
                    p.iter()
                        .zip(&marginal)
                        .map(|(&q, &m)| if q > 0.0 { q * (q.ln() - m.ln()) } else { 0.0 })
                        .sum::<f64>()
                })
                .sum::<f64>()
                / part.len() as f64;
            kl.exp()
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / splits as f64;
    Ok((mean, var.sqrt()))
}

/// Squared Euclidean distances between every row of `a` and every row of `b`, one block of `a`'s rows
/// at a time (`visit(first_row, block)` sees a `rows x b.n` matrix), so 10,000 x 10,000 never sits in
/// memory at once.
fn squared_distances(a: &FeatureMatrix, b: &FeatureMatrix, mut visit: impl FnMut(usize, &Mat<f64>)) {
    const BLOCK: usize = 1024;
    let bf = b.to_faer();
    let b_norms: Vec<f64> = (0..b.n).map(|j| bf.row(j).iter().map(|v| v * v).sum()).collect();
    for start in (0..a.n).step_by(BLOCK) {
        let rows = BLOCK.min(a.n - start);
        let block = Mat::from_fn(rows, a.d, |i, j| a.values[(start + i) * a.d + j] as f64);
        let dots = &block * bf.transpose();
        let norms: Vec<f64> = (0..rows).map(|i| block.row(i).iter().map(|v| v * v).sum()).collect();
        let dist = Mat::from_fn(rows, b.n, |i, j| (norms[i] - 2.0 * dots[(i, j)] + b_norms[j]).max(0.0));
        visit(start, &dist);
    }
}

/// For each row, the squared distance to its `k`-th nearest other row (the row itself is the 0th).
fn kth_neighbour_radii(x: &FeatureMatrix, k: usize) -> Result<Vec<f64>> {
    if x.n <= k {
        return Err(Error::Config(format!("{} images are too few for k = {k} nearest neighbours", x.n)));
    }
    let mut radii = vec![0.0; x.n];
    squared_distances(x, x, |start, dist| {
        for i in 0..dist.nrows() {
            let mut row: Vec<f64> = dist.row(i).iter().copied().collect();
            let (_, kth, _) = row.select_nth_unstable_by(k, f64::total_cmp);
            radii[start + i] = *kth;
        }
    });
    Ok(radii)
}

/// Precision (the share of generated images inside the real manifold) and recall (the share of real
/// images inside the generated one), each manifold the union of balls reaching every point's `k`-th
/// nearest neighbour (k = 3 in the ADM evaluator), membership by `<=`.
pub fn precision_recall(real: &FeatureMatrix, fake: &FeatureMatrix, k: usize) -> Result<(f64, f64)> {
    let real_radii = kth_neighbour_radii(real, k)?;
    let fake_radii = kth_neighbour_radii(fake, k)?;
    let mut fake_in = vec![false; fake.n];
    let mut real_in = vec![false; real.n];
    squared_distances(real, fake, |start, dist| {
        for i in 0..dist.nrows() {
            for j in 0..fake.n {
                let d = dist[(i, j)];
                if d <= real_radii[start + i] {
                    fake_in[j] = true;
                }
                if d <= fake_radii[j] {
                    real_in[start + i] = true;
                }
            }
        }
    });
    let share = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / v.len() as f64;
    Ok((share(&fake_in), share(&real_in)))
}

/// Density (how many real neighbourhoods hold each generated image, over `k`, averaged: about 1 when the
/// distributions match) and coverage (the share of real neighbourhoods that hold any generated image),
/// neighbourhoods reaching each real image's `k`-th nearest real neighbour (k = 5 in `prdc`), by `<`.
pub fn density_coverage(real: &FeatureMatrix, fake: &FeatureMatrix, k: usize) -> Result<(f64, f64)> {
    let radii = kth_neighbour_radii(real, k)?;
    let mut inside = 0usize;
    let mut covered = 0usize;
    squared_distances(real, fake, |start, dist| {
        for i in 0..dist.nrows() {
            let r = radii[start + i];
            let hits = dist.row(i).iter().filter(|&&d| d < r).count();
            inside += hits;
            covered += usize::from(hits > 0);
        }
    });
    Ok((inside as f64 / (k as f64 * fake.n as f64), covered as f64 / real.n as f64))
}
