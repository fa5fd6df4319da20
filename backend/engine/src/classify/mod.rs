//! The zero-shot diffusion classifier (Li et al. 2023, as the paper uses it): noise an image's latent z0
//! to timestep t, let the class-conditional denoiser predict under every class, and pick the class whose
//! prediction is best. The paper scores a class by the mean squared error of the predicted clean latent
//! against z0 ([`Score::X0Mse`]); Li et al. score the noise prediction ([`Score::EpsMse`]). Every class
//! sees the same (t, eps) draws, a paired comparison with far less variance than independent draws.
//!
//! Also the metrics a sweep over t reports: accuracy, precision, recall and F1 (class 1, haematoma, is
//! the positive class of a two-class problem; macro averages otherwise) and the confusion matrix; for the
//! test split, percentile bootstrap intervals ([`stats`]). With [`Stopping`], an image stops drawing
//! noise once its class is decided ([`sequential`]).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::diffusion::GaussianDiffusion;
use crate::dit::Dit;
use crate::rng::Rng;
use crate::{Error, Result};

pub mod sequential;
pub mod stats;

pub use sequential::{Rule, Stopping};
use sequential::{Schedule, Tally};
pub use stats::{Intervals, bootstrap, bootstrap_with};

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

/// The error of every class for each (image, noise) row: `z0` and `eps` are `[R, C, H, W]`, the result
/// `[R, K]`. Every class sees the same x_t of a row; rows and classes go through the model as one batch
/// of R*K.
pub fn pair_errors(
    diffusion: &GaussianDiffusion,
    predict: &mut Predictor,
    z0: &Tensor,
    eps: &Tensor,
    t: usize,
    num_classes: usize,
    score: Score,
) -> Result<Tensor> {
    let r = z0.dim(0)?;
    let k = num_classes;
    if k == 0 {
        return Err(Error::Config("classification needs at least one class".into()));
    }
    if t >= diffusion.num_steps() {
        return Err(Error::Config(format!("timestep {t} is outside 0..{}", diffusion.num_steps())));
    }
    let x_t = diffusion.q_sample(z0, &vec![t; r], eps)?;
    // Class-major: rows c*R..(c+1)*R are every row under class c, all with the same x_t.
    let x_rep = Tensor::cat(&vec![&x_t; k], 0)?;
    let labels: Vec<u32> = (0..k as u32).flat_map(|c| std::iter::repeat_n(c, r)).collect();
    let labels = Tensor::from_vec(labels, r * k, z0.device())?;
    let ts = vec![t; r * k];
    let output = predict(&x_rep, &ts, &labels)?;
    let (eps_pred, _) = diffusion.split_output(&output, &x_rep)?;
    let err = match score {
        Score::X0Mse => (diffusion.predict_xstart_from_eps(&x_rep, &ts, &eps_pred)? - Tensor::cat(&vec![z0; k], 0)?)?,
        Score::EpsMse => (eps_pred - Tensor::cat(&vec![eps; k], 0)?)?,
    };
    Ok(err.sqr()?.flatten_from(1)?.mean(1)?.reshape((k, r))?.t()?.contiguous()?)
}

/// Mean error of every class for every image: `[N, K]`, averaged over the noise `draws` (each
/// `[N, C, H, W]`), the same draws for every class.
pub fn class_errors(
    diffusion: &GaussianDiffusion,
    predict: &mut Predictor,
    z0: &Tensor,
    t: usize,
    draws: &[Tensor],
    num_classes: usize,
    score: Score,
) -> Result<Tensor> {
    if draws.is_empty() {
        return Err(Error::Config("classification needs at least one noise draw".into()));
    }
    let mut total: Option<Tensor> = None;
    for eps in draws {
        let per = pair_errors(diffusion, predict, z0, eps, t, num_classes, score)?;
        total = Some(match total {
            Some(sum) => (sum + per)?,
            None => per,
        });
    }
    Ok((total.expect("at least one draw") / draws.len() as f64)?)
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

/// How the classifier runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepOptions {
    pub timesteps: Vec<usize>,
    /// Noise draws per image and timestep (the paper: 512); with `stopping`, the most an image gets.
    pub draws: usize,
    pub seed: u64,
    /// (Image, noise) rows per model batch (each becomes `num_classes` model rows).
    pub batch_size: usize,
    pub score: Score,
    /// Stop drawing for an image once its class is decided (None: always `draws`).
    #[serde(default)]
    pub stopping: Option<Stopping>,
}

impl SweepOptions {
    pub fn check(&self) -> Result<()> {
        if self.draws == 0 || self.batch_size == 0 || self.timesteps.is_empty() {
            return Err(Error::Config("the classifier needs timesteps, draws >= 1 and batch_size >= 1".into()));
        }
        if let Some(stopping) = &self.stopping {
            stopping.check().map_err(Error::Config)?;
        }
        Ok(())
    }
}

/// Every image classified at one timestep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    pub t: usize,
    pub predicted: Vec<u32>,
    /// Noise draws each image took (each is one forward pass per class).
    pub draws: Vec<usize>,
    /// Mean error of every class, per image.
    pub errors: Vec<Vec<f64>>,
}

impl Classified {
    /// The decisions of finished tallies, one per image.
    pub fn from_tallies(t: usize, tallies: &[Tally]) -> Self {
        Classified {
            t,
            predicted: tallies.iter().map(Tally::leader).collect(),
            draws: tallies.iter().map(|tally| tally.draws).collect(),
            errors: tallies.iter().map(Tally::means).collect(),
        }
    }

    /// Mean model forward passes per image (draws x classes).
    pub fn forwards_per_image(&self) -> f64 {
        let classes = self.errors.first().map_or(0, Vec::len);
        self.draws.iter().sum::<usize>() as f64 * classes as f64 / self.draws.len().max(1) as f64
    }
}

/// Classifies every image of `samples` (`[N, C, H, W]`) at timestep `t`. Image i's noise is its own
/// stream, seeded by (seed, t, i), so its result does not depend on the batching and a sequential run
/// sees the same first draws as a fixed-budget one. `on_progress(rows, most)` counts (image, noise) rows
/// against the most there can be.
#[allow(clippy::too_many_arguments)]
pub fn classify_images(
    predict: &mut Predictor,
    diffusion: &GaussianDiffusion,
    samples: &Tensor,
    num_classes: usize,
    t: usize,
    options: &SweepOptions,
    cancel: &crate::train::CancelToken,
    on_progress: impl FnMut(usize, usize),
) -> Result<Classified> {
    let (tallies, _) =
        draw_and_score(predict, diffusion, samples, num_classes, t, options, false, cancel, on_progress)?;
    Ok(Classified::from_tallies(t, &tallies))
}

/// The draws of [`classify_images`], tallied per image; with `keep_trace`, also every draw's class errors
/// per image (`draws x num_classes`, in stream order) for [`sequential::replay`].
#[allow(clippy::too_many_arguments)]
fn draw_and_score(
    predict: &mut Predictor,
    diffusion: &GaussianDiffusion,
    samples: &Tensor,
    num_classes: usize,
    t: usize,
    options: &SweepOptions,
    keep_trace: bool,
    cancel: &crate::train::CancelToken,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<(Vec<Tally>, Vec<Vec<f32>>)> {
    options.check()?;
    let n = samples.dim(0)?;
    let image_shape = samples.dims()[1..].to_vec();
    let image_len: usize = image_shape.iter().product();
    let schedule = Schedule::new(options.draws, options.stopping.as_ref(), num_classes);
    let mut streams: Vec<Rng> = (0..n).map(|i| Rng::derive(options.seed, (t as u64) << 32 | i as u64)).collect();
    let mut tallies = vec![Tally::new(num_classes); n];
    let mut trace = vec![Vec::new(); if keep_trace { n } else { 0 }];
    let mut active: Vec<usize> = (0..n).collect();
    let (most, mut done, mut drawn) = (n * options.draws, 0, 0);
    for (look, &at) in schedule.looks.iter().enumerate() {
        // Rows grouped by image, its draws in stream order.
        let rows: Vec<usize> = active.iter().flat_map(|&i| std::iter::repeat_n(i, at - drawn)).collect();
        for chunk in rows.chunks(options.batch_size) {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled { step: done });
            }
            let index =
                Tensor::from_vec(chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(), chunk.len(), samples.device())?;
            let z0 = samples.index_select(&index, 0)?;
            let noise: Vec<f32> = chunk.iter().flat_map(|&i| streams[i].normal_vec(image_len)).collect();
            let mut shape = vec![chunk.len()];
            shape.extend(&image_shape);
            let eps = Tensor::from_vec(noise, shape, samples.device())?;
            let errors = pair_errors(diffusion, predict, &z0, &eps, t, num_classes, options.score)?;
            for (&i, row) in chunk.iter().zip(errors.to_dtype(DType::F32)?.to_vec2::<f32>()?) {
                tallies[i].add(&row);
                if keep_trace {
                    trace[i].extend(row);
                }
            }
            done += chunk.len();
            on_progress(done, most);
        }
        drawn = at;
        active.retain(|&i| !schedule.stops(look, &tallies[i]));
    }
    on_progress(most, most);
    Ok((tallies, trace))
}

/// One timestep of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    pub t: usize,
    pub metrics: Metrics,
    /// Mean model forward passes per image (draws x classes).
    pub forwards_per_image: f64,
}

/// The number of classes of a class-conditional `model`, or an error naming what is wrong.
fn classes_of(model: &Dit) -> Result<usize> {
    model
        .config()
        .num_classes()
        .ok_or_else(|| Error::Config("the diffusion classifier needs a class-conditional model".into()))
}

/// Classifies every image of `samples` (true classes `labels`) at each timestep of `options`, reporting
/// the metrics per timestep. `on_progress(done, total)` counts timesteps in thousandths.
pub fn sweep(
    model: &Dit,
    diffusion: &GaussianDiffusion,
    samples: &Tensor,
    labels: &[u32],
    options: &SweepOptions,
    cancel: &crate::train::CancelToken,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Vec<SweepRow>> {
    let num_classes = classes_of(model)?;
    let n = samples.dim(0)?;
    if labels.len() != n || n == 0 {
        return Err(Error::Data(format!("{n} images but {} labels", labels.len())));
    }
    let mut predict = model_predictor(model, diffusion);
    let total = options.timesteps.len() * 1000;
    let mut rows = Vec::with_capacity(options.timesteps.len());
    for (i, &t) in options.timesteps.iter().enumerate() {
        let result =
            classify_images(&mut predict, diffusion, samples, num_classes, t, options, cancel, |done, most| {
                on_progress(i * 1000 + done * 1000 / most.max(1), total)
            })?;
        rows.push(SweepRow {
            t,
            metrics: metrics(labels, &result.predicted, num_classes)?,
            forwards_per_image: result.forwards_per_image(),
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

/// The test split at the operating timestep: metrics with bootstrap intervals, each image's prediction
/// and, when measured, how a sequential run agrees with the fixed budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    pub t: usize,
    pub metrics: Metrics,
    pub intervals: Intervals,
    pub forwards_per_image: f64,
    pub predicted: Vec<u32>,
    pub draws: Vec<usize>,
    #[serde(default)]
    pub agreement: Option<Agreement>,
}

/// A sequential run against the fixed budget on the same images and noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Draws per image of the fixed run.
    pub fixed_draws: usize,
    /// The fraction of images whose sequential decision is the fixed run's.
    pub agreement: f64,
    /// Forward passes of the sequential run as a fraction of the fixed run's.
    pub forwards_fraction: f64,
    /// Accuracy of the fixed run (the sequential run's is the report's).
    pub fixed_accuracy: f64,
    /// Other stopping rules and error rates on the same draws: what each would have agreed and spent.
    #[serde(default)]
    pub alternatives: Vec<StoppingPoint>,
}

/// One stopping rule replayed on the fixed run's draws.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoppingPoint {
    pub rule: Rule,
    pub alpha: f64,
    pub agreement: f64,
    pub forwards_fraction: f64,
    pub accuracy: f64,
}

/// The error rates [`Agreement::alternatives`] replays, for each rule.
pub const ALTERNATIVE_ALPHAS: [f64; 4] = [0.001, 0.01, 0.05, 0.1];

/// Classifies the test images at `t`, with bootstrap intervals (1000 resamples, 95%) and, when
/// `measure_agreement` and `options.stopping` are set, the comparison with the fixed budget: one run at
/// the full budget that keeps every draw, the sequential decisions (and the alternatives) replayed from it.
/// `on_progress(done, total)` counts in thousandths.
#[allow(clippy::too_many_arguments)]
pub fn test_at(
    model: &Dit,
    diffusion: &GaussianDiffusion,
    samples: &Tensor,
    labels: &[u32],
    t: usize,
    options: &SweepOptions,
    measure_agreement: bool,
    cancel: &crate::train::CancelToken,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<TestReport> {
    let num_classes = classes_of(model)?;
    if labels.len() != samples.dim(0)? || labels.is_empty() {
        return Err(Error::Data(format!("{} images but {} labels", samples.dim(0)?, labels.len())));
    }
    let mut predict = model_predictor(model, diffusion);
    let progress = |d: usize, m: usize| on_progress(d * 1000 / m.max(1), 1000);
    let (result, agreement) = match options.stopping.filter(|_| measure_agreement) {
        // One fixed run that keeps every draw's errors; the sequential decisions are replayed from it (a
        // live sequential run would have drawn the same noise in the same order).
        Some(stopping) => {
            let fixed_options = SweepOptions { stopping: None, ..options.clone() };
            let (tallies, trace) = draw_and_score(
                &mut predict,
                diffusion,
                samples,
                num_classes,
                t,
                &fixed_options,
                true,
                cancel,
                progress,
            )?;
            let fixed = Classified::from_tallies(t, &tallies);
            let replayed = |s: &Stopping| -> Result<(Classified, StoppingPoint)> {
                let run = Classified::from_tallies(t, &sequential::replay(&trace, num_classes, options.draws, s));
                let same = fixed.predicted.iter().zip(&run.predicted).filter(|(a, b)| a == b).count();
                let point = StoppingPoint {
                    rule: s.rule,
                    alpha: s.alpha,
                    agreement: same as f64 / labels.len() as f64,
                    forwards_fraction: run.forwards_per_image() / fixed.forwards_per_image(),
                    accuracy: metrics(labels, &run.predicted, num_classes)?.accuracy,
                };
                Ok((run, point))
            };
            let (run, point) = replayed(&stopping)?;
            let mut alternatives = Vec::new();
            for rule in [Rule::Predictive, Rule::Confidence] {
                for alpha in ALTERNATIVE_ALPHAS {
                    alternatives.push(replayed(&Stopping { rule, alpha, ..stopping })?.1);
                }
            }
            let agreement = Agreement {
                fixed_draws: options.draws,
                agreement: point.agreement,
                forwards_fraction: point.forwards_fraction,
                fixed_accuracy: metrics(labels, &fixed.predicted, num_classes)?.accuracy,
                alternatives,
            };
            (run, Some(agreement))
        }
        None => {
            let run = classify_images(&mut predict, diffusion, samples, num_classes, t, options, cancel, progress)?;
            (run, None)
        }
    };
    Ok(TestReport {
        t,
        metrics: metrics(labels, &result.predicted, num_classes)?,
        intervals: bootstrap(labels, &result.predicted, num_classes, 1000, 0.95, options.seed)?,
        forwards_per_image: result.forwards_per_image(),
        predicted: result.predicted,
        draws: result.draws,
        agreement,
    })
}
