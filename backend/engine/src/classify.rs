//! The zero-shot diffusion classifier (Li et al. 2023, as the paper uses it): noise an image's latent z0
//! to timestep t, let the class-conditional denoiser predict under every class, and pick the class whose
//! prediction is best. The paper scores a class by the mean squared error of the predicted clean latent
//! against z0 ([`Score::X0Mse`]); Li et al. score the noise prediction ([`Score::EpsMse`]). Every class
//! sees the same (t, eps) draws, a paired comparison with far less variance than independent draws.
//!
//! Also the metrics a sweep over t reports: accuracy, precision, recall and F1 (class 1, haematoma, is
//! the positive class of a two-class problem; macro averages otherwise) and the confusion matrix.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::diffusion::GaussianDiffusion;
use crate::dit::Dit;
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Error of the predicted clean latent (the paper's).
    #[default]
    X0Mse,
    /// Error of the predicted noise (Li et al.'s).
    EpsMse,
}

/// Predicts the model output (noise channels first) for noisy inputs `[B, C, H, W]`, their timesteps and
/// class labels `[B]` (u32).
pub type Predictor<'a> = dyn FnMut(&Tensor, &[usize], &Tensor) -> Result<Tensor> + 'a;

/// The class-conditional `model` as a [`Predictor`].
pub fn model_predictor<'a>(
    model: &'a Dit,
    diffusion: &'a GaussianDiffusion,
) -> impl FnMut(&Tensor, &[usize], &Tensor) -> Result<Tensor> + 'a {
    move |x, t, labels| model.forward(x, &diffusion.model_timesteps(t, x.device())?, Some(labels))
}

/// Mean error of every class for every image: `[N, K]`, averaged over the noise `draws` (each
/// `[N, C, H, W]`), the same draws for every class. Images and classes go through the model in one batch
/// of N*K per draw.
pub fn class_errors(
    diffusion: &GaussianDiffusion,
    predict: &mut Predictor,
    z0: &Tensor,
    t: usize,
    draws: &[Tensor],
    num_classes: usize,
    score: Score,
) -> Result<Tensor> {
    let n = z0.dim(0)?;
    if draws.is_empty() || num_classes == 0 {
        return Err(Error::Config("classification needs at least one noise draw and one class".into()));
    }
    if t >= diffusion.num_steps() {
        return Err(Error::Config(format!("timestep {t} is outside 0..{}", diffusion.num_steps())));
    }
    let k = num_classes;
    let z0_rep = Tensor::cat(&vec![z0; k], 0)?;
    let labels: Vec<u32> = (0..k as u32).flat_map(|c| std::iter::repeat_n(c, n)).collect();
    let labels = Tensor::from_vec(labels, n * k, z0.device())?;
    let ts = vec![t; n * k];
    let mut total: Option<Tensor> = None;
    for eps in draws {
        let x_t = diffusion.q_sample(z0, &vec![t; n], eps)?;
        // Class-major: rows c*N..(c+1)*N are every image under class c, all with the same x_t.
        let x_rep = Tensor::cat(&vec![&x_t; k], 0)?;
        let output = predict(&x_rep, &ts, &labels)?;
        let (eps_pred, _) = diffusion.split_output(&output, &x_rep)?;
        let err = match score {
            Score::X0Mse => (diffusion.predict_xstart_from_eps(&x_rep, &ts, &eps_pred)? - &z0_rep)?,
            Score::EpsMse => (eps_pred - Tensor::cat(&vec![eps; k], 0)?)?,
        };
        let per = err.sqr()?.flatten_from(1)?.mean(1)?.reshape((k, n))?.t()?;
        total = Some(match total {
            Some(sum) => (sum + per)?,
            None => per,
        });
    }
    Ok((total.expect("at least one draw") / draws.len() as f64)?.contiguous()?)
}

/// The class with the smallest error, per image.
pub fn predictions(errors: &Tensor) -> Result<Vec<u32>> {
    Ok(errors.argmin(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?)
}

/// `draws` noise tensors shaped like `z0` from a generator seeded by (seed, stream): the same seed gives
/// the same draws, so every class (and a rerun) sees the same noise.
pub fn noise_draws(z0: &Tensor, draws: usize, seed: u64, stream: u64) -> Result<Vec<Tensor>> {
    let mut rng = Rng::derive(seed, stream);
    (0..draws).map(|_| rng.randn(z0.shape().clone(), z0.device())).collect()
}

/// Classification quality of predictions against the truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Precision, recall and F1 of class `c` (0 where undefined, as scikit-learn's zero_division=0).
fn class_scores(confusion: &[Vec<usize>], c: usize) -> (f64, f64, f64) {
    let tp = confusion[c][c] as f64;
    let predicted: usize = confusion.iter().map(|row| row[c]).sum();
    let actual: usize = confusion[c].iter().sum();
    let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
    let recall = if actual > 0 { tp / actual as f64 } else { 0.0 };
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    (precision, recall, f1)
}

/// Metrics of `predicted` against `truth` over `num_classes` classes: for two classes, of class 1 (the
/// positive, haematoma); for more, macro averages.
pub fn metrics(truth: &[u32], predicted: &[u32], num_classes: usize) -> Result<Metrics> {
    if truth.len() != predicted.len() || truth.is_empty() {
        return Err(Error::Data(format!("{} labels against {} predictions", truth.len(), predicted.len())));
    }
    let mut confusion = vec![vec![0usize; num_classes]; num_classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        if t as usize >= num_classes || p as usize >= num_classes {
            return Err(Error::Data(format!("class {} is outside 0..{num_classes}", t.max(p))));
        }
        confusion[t as usize][p as usize] += 1;
    }
    let correct: usize = (0..num_classes).map(|c| confusion[c][c]).sum();
    let (precision, recall, f1) = if num_classes == 2 {
        class_scores(&confusion, 1)
    } else {
        let all: Vec<_> = (0..num_classes).map(|c| class_scores(&confusion, c)).collect();
        let mean = |f: fn(&(f64, f64, f64)) -> f64| all.iter().map(f).sum::<f64>() / num_classes as f64;
        (mean(|s| s.0), mean(|s| s.1), mean(|s| s.2))
    };
    Ok(Metrics { accuracy: correct as f64 / truth.len() as f64, precision, recall, f1, confusion })
}

/// How a timestep sweep runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepOptions {
    pub timesteps: Vec<usize>,
    /// Noise draws per image and timestep (the paper: 512).
    pub draws: usize,
    pub seed: u64,
    /// Images per model batch (each becomes `num_classes` rows).
    pub batch_size: usize,
    pub score: Score,
}

/// One timestep of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    pub t: usize,
    pub metrics: Metrics,
    /// Model forward passes per image (draws x classes).
    pub forwards_per_image: usize,
}

/// Classifies every image of `samples` (`[N, C, H, W]`, true classes `labels`) at each timestep of
/// `options`, reporting the metrics per timestep. `on_progress(done, total)` counts image batches.
pub fn sweep(
    model: &Dit,
    diffusion: &GaussianDiffusion,
    samples: &Tensor,
    labels: &[u32],
    options: &SweepOptions,
    cancel: &crate::train::CancelToken,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Vec<SweepRow>> {
    let num_classes = model
        .config()
        .num_classes()
        .ok_or_else(|| Error::Config("the diffusion classifier needs a class-conditional model".into()))?;
    let n = samples.dim(0)?;
    if labels.len() != n || n == 0 {
        return Err(Error::Data(format!("{n} images but {} labels", labels.len())));
    }
    if options.draws == 0 || options.batch_size == 0 || options.timesteps.is_empty() {
        return Err(Error::Config("a sweep needs timesteps, draws >= 1 and batch_size >= 1".into()));
    }
    let batches = n.div_ceil(options.batch_size);
    let total = batches * options.timesteps.len();
    let mut predict = model_predictor(model, diffusion);
    let mut rows = Vec::with_capacity(options.timesteps.len());
    for (i, &t) in options.timesteps.iter().enumerate() {
        let mut predicted = Vec::with_capacity(n);
        for b in 0..batches {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled { step: i * batches + b });
            }
            let start = b * options.batch_size;
            let z0 = samples.narrow(0, start, options.batch_size.min(n - start))?;
            let draws = noise_draws(&z0, options.draws, options.seed, (t as u64) << 32 | b as u64)?;
            let errors = class_errors(diffusion, &mut predict, &z0, t, &draws, num_classes, options.score)?;
            predicted.extend(predictions(&errors)?);
            on_progress(i * batches + b + 1, total);
        }
        rows.push(SweepRow {
            t,
            metrics: metrics(labels, &predicted, num_classes)?,
            forwards_per_image: options.draws * num_classes,
        });
    }
    Ok(rows)
}

/// The operating timestep: the best F1 (then accuracy; then the smaller t) of a sweep, meant to be run on
/// the validation split and applied to the test split.
pub fn choose_timestep(rows: &[SweepRow]) -> Option<usize> {
    rows.iter()
        .max_by(|a, b| {
            (a.metrics.f1, a.metrics.accuracy)
                .partial_cmp(&(b.metrics.f1, b.metrics.accuracy))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.t.cmp(&a.t))
        })
        .map(|r| r.t)
}
