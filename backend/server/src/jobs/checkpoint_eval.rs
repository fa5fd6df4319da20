//! Generation metrics per checkpoint: a training job (`pretrain`, `finetune`) given `eval` samples from
//! its EMA weights every `eval.every` steps (and at the last step) and measures the samples against its
//! own training images, writing FID, sFID, IS, precision, recall, density and coverage as metrics at that
//! step. The run page charts them over training and tables them Table 5 style, best values marked.
//!
//! With pytorch-fid's weights in the weights folder the metrics are `fid`, `sfid` and `is`; with the
//! random Inception standing in they are `fd_random`, `sfd_random` and `score_random`, so a chart never
//! calls a random network's distance FID.

use std::path::Path;

use repdiff_api::jobs::CheckpointEval;
use repdiff_engine::Device;
use repdiff_engine::Result as EngineResult;
use repdiff_engine::data::Dataset;
use repdiff_engine::metrics::{
    EvenlySpaced, GenerationMetrics, ImageSource, InceptionV3, MetricOptions, SetFeatures, compare, extract_samples,
};
use repdiff_engine::sample::{SampleOptions, Weights, load_model, sample};

use super::inputs::{load_extractor, sampler_kind};
use crate::worker::{JobContext, JobError};

/// Recorded last of a measurement's metrics (all are written together): a step that has it was measured.
pub const COMPLETION_METRIC: &str = "coverage";

/// A training job's evaluator: the extractor and the real set's features, computed once per attempt.
pub struct CheckpointEvaluator<'a> {
    spec: &'a CheckpointEval,
    weights_dir: &'a Path,
    net: InceptionV3,
    real: Option<SetFeatures>,
}

impl<'a> CheckpointEvaluator<'a> {
    pub fn new(spec: &'a CheckpointEval, weights_dir: &'a Path, device: &Device) -> EngineResult<Self> {
        Ok(CheckpointEvaluator {
            spec,
            weights_dir,
            net: load_extractor(spec.extractor, weights_dir, device)?,
            real: None,
        })
    }

    pub fn spec(&self) -> &CheckpointEval {
        self.spec
    }

    /// Samples from the EMA weights of `checkpoint` (the run's, at `step` of `total`), measures the
    /// samples against the training images of `data`, and records every metric at `step`. Progress stays
    /// at the training step; the message says how far the evaluation is.
    pub fn evaluate(
        &mut self,
        ctx: &mut JobContext,
        checkpoint: &Path,
        data: &Dataset,
        (step, total): (usize, usize),
        device: &Device,
    ) -> Result<GenerationMetrics, JobError> {
        let report = |ctx: &mut JobContext, what: &str, done: usize, of: usize| {
            ctx.progress(step as u64, total as u64, &format!("evaluating step {step}: {what} {done}/{of}"));
        };
        let spec = self.spec;
        let (model, config) = load_model(checkpoint, Weights::Ema, device)?;
        if spec.steps > config.diffusion.num_timesteps {
            return Err(JobError::Permanent(format!(
                "eval.steps must be at most the model's {} diffusion steps",
                config.diffusion.num_timesteps
            )));
        }
        let cancel = ctx.cancel.clone();
        let real_images = EvenlySpaced::new(&data.samples, spec.max_real);
        let real_images = real_images.read(0, real_images.len())?;
        if self.real.is_none() {
            let (real, _) =
                extract_samples(&self.net, &real_images, &config, self.weights_dir, 32, Some(&cancel), |d, t| {
                    report(ctx, "real features", d, t);
                })?;
            self.real = Some(real);
        }
        let (sampler, respacing) = sampler_kind(spec.sampler, spec.steps, 0.0);
        let options = SampleOptions {
            num_samples: spec.num,
            labels: None,
            guidance_scale: spec.guidance,
            sampler,
            respacing,
            seed: spec.seed,
            batch_size: 16,
            clip_denoised: None,
            cancel: cancel.clone(),
            references: config.model.is_representation().then(|| real_images.clone()),
        };
        let (samples, _) = sample(&model, &config, &options, device, |done, total| {
            report(ctx, "sampling", done, total);
        })?;
        let (generated, _) =
            extract_samples(&self.net, &samples, &config, self.weights_dir, 32, Some(&cancel), |d, t| {
                report(ctx, "sample features", d, t);
            })?;
        let real = self.real.as_ref().expect("extracted above");
        let metrics = compare(real, &generated, &MetricOptions::default())?;
        for (name, value) in metric_names(&metrics) {
            ctx.metric(name, step as u64, value)?;
        }
        ctx.flush()?;
        ctx.log(
            "info",
            &format!(
                "step {step}, {} samples against {} training images: {}",
                metrics.generated,
                metrics.real,
                metrics.rows().iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", ")
            ),
        );
        Ok(metrics)
    }

    /// What the job's result says about the evaluation.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "every": self.spec.every,
            "num": self.spec.num,
            "real": self.real.as_ref().map(SetFeatures::len),
            "extractor": self.net.extractor().label(),
            "pretrained": self.net.extractor() == &repdiff_engine::metrics::Extractor::Pretrained,
        })
    }
}

/// The metric names a checkpoint's evaluation is recorded under: FID, sFID and IS only from the
/// pretrained network.
pub fn metric_names(m: &GenerationMetrics) -> [(&'static str, f64); 7] {
    let (fid, sfid, is) =
        if m.is_pretrained() { ("fid", "sfid", "is") } else { ("fd_random", "sfd_random", "score_random") };
    [
        (fid, m.fid),
        (sfid, m.sfid),
        (is, m.inception_score),
        ("precision", m.precision),
        ("recall", m.recall),
        ("density", m.density),
        (COMPLETION_METRIC, m.coverage),
    ]
}
