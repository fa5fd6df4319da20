//! `evaluate`: the paper's Table 5 and Figs. 7/9 as a job. Draws `num` samples from each model, reads the
//! real images, and reports FID, sFID, IS, precision/recall and density/coverage of every model against
//! them, plus the 1-D t-SNE feature histograms. The result is an [`repdiff_api::EvaluateReport`].
//!
//! With pytorch-fid's weights in the weights folder the numbers are the field's; without them the
//! documented random Inception stands in and the report's `extractor` and `pretrained` say so.

use repdiff_api::jobs::{CheckpointRef, EvaluateParams, Invalid};
use repdiff_engine::config::RunConfig;
use repdiff_engine::device::best_device;
use repdiff_engine::imaging::Channels;
use repdiff_engine::metrics::tsne::{TsneOptions, feature_histogram};
use repdiff_engine::metrics::{
    EvenlySpaced, ImageSource, InceptionV3, MetricOptions, SetFeatures, SliceImages, compare, extract_cached,
    extract_samples,
};
use repdiff_engine::sample::{SampleOptions, Weights, load_model, sample};

use super::inputs::{
    check_data, check_extractor, checkpoint_input, data_inputs, load_data, load_extractor, sampler_kind,
};
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Evaluate {
    pub weights_dir: std::path::PathBuf,
}

impl Evaluate {
    /// Features of the real images (at most `max_real`, evenly spaced), at the channels and side of the
    /// models' decoded samples. A dataset's slices are read a batch at a time as images (through the CT
    /// window, no autoencoder) and their features cached; a latent file or the toy set come in the
    /// model's space and are decoded like its samples.
    fn real_features(
        &self,
        ctx: &mut JobContext,
        net: &InceptionV3,
        p: &EvaluateParams,
        config: &RunConfig,
        (channels, side): (usize, usize),
        device: &repdiff_engine::Device,
    ) -> Result<SetFeatures, JobError> {
        let cancel = ctx.cancel.clone();
        let max_real = p.max_real.unwrap_or(usize::MAX);
        if let Some((manifest, window, part)) = super::inputs::slices_of(ctx, &p.real)? {
            let slices =
                SliceImages::open(&manifest, part, Channels::Window { window, copies: channels }, side, device)?;
            let images = EvenlySpaced::new(&slices, max_real);
            let total = images.len() as u64;
            let cache = std::env::temp_dir().join("repdiff-feature-cache");
            let (features, cached) = extract_cached(net, &images, &cache, 32, Some(&cancel), |d, _| {
                ctx.progress(d as u64, total, "real features");
            })?;
            ctx.log(
                "info",
                &format!("{} real images{}", features.len(), if cached { " (features cached)" } else { "" }),
            );
            return Ok(features);
        }
        let data = load_data(ctx, &p.real, config, &self.weights_dir, device)?;
        let samples = EvenlySpaced::new(&data.samples, max_real);
        let samples = samples.read(0, samples.len())?;
        let (features, _) = extract_samples(net, &samples, config, &self.weights_dir, 32, Some(&cancel), |d, t| {
            ctx.progress(d as u64, t as u64, "real features");
        })?;
        ctx.log("info", &format!("{} real images", features.len()));
        Ok(features)
    }
}

impl Task for Evaluate {
    type Spec = EvaluateParams;

    fn check(&self, p: &EvaluateParams) -> Result<(), Invalid> {
        check_extractor("extractor", p.extractor, &self.weights_dir)?;
        check_data("real", &p.real)?;
        for (i, model) in p.models.iter().enumerate() {
            if let Some(references) = &model.references {
                check_data(&format!("models.{i}.references"), references)?;
            }
        }
        Ok(())
    }

    fn reads(&self, p: &EvaluateParams) -> Vec<Input> {
        let mut inputs = data_inputs(&p.real);
        for m in &p.models {
            inputs.push(checkpoint_input(&m.checkpoint));
            inputs.extend(m.references.as_ref().map(data_inputs).unwrap_or_default());
        }
        inputs
    }

    fn run(&self, p: EvaluateParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let (device, device_note) = best_device();
        let net = load_extractor(p.extractor, &self.weights_dir, &device)?;
        let extractor = net.extractor().label();
        ctx.log("info", &format!("extractor {extractor} on {device_note}"));
        let (sampler, respacing) = sampler_kind(p.sampler, p.steps, 0.0);

        // Each model's samples are reduced to features as they are drawn: only features are kept.
        let options = MetricOptions::default();
        let cancel = ctx.cancel.clone();
        let mut real: Option<SetFeatures> = None;
        let mut results = Vec::new();
        let mut features = Vec::new();
        for (i, m) in p.models.iter().enumerate() {
            let key = m.checkpoint.key();
            let local = ctx.fetch(&key, &format!("checkpoint-{i}.safetensors"))?;
            let (model, config) = load_model(&local, Weights::Ema, &device)?;
            // Unnamed: the run it came from and what it is ("#3 representation-conditional"), not a storage key.
            let name = m.name.clone().unwrap_or_else(|| {
                let what = config.model.conditioning.describe();
                match &m.checkpoint {
                    CheckpointRef::Job(id) => format!("#{id} {what}"),
                    CheckpointRef::Key(key) => format!("{key} ({what})"),
                }
            });
            if p.steps > config.diffusion.num_timesteps {
                return Err(JobError::Permanent(format!(
                    "steps must be at most the model's {} diffusion steps",
                    config.diffusion.num_timesteps
                )));
            }
            // A representation model varies reference images: its own, or else the real ones.
            let references = match (&m.references, config.model.is_representation()) {
                (Some(source), _) => Some(load_data(ctx, source, &config, &self.weights_dir, &device)?.samples),
                (None, true) => Some(load_data(ctx, &p.real, &config, &self.weights_dir, &device)?.samples),
                (None, false) => None,
            };
            let sample_options = SampleOptions {
                num_samples: p.num,
                labels: (!p.classes.is_empty()).then(|| p.classes.clone()),
                guidance_scale: p.guidance,
                sampler,
                respacing: respacing.clone(),
                seed: p.seed,
                batch_size: 16,
                clip_denoised: None,
                cancel: ctx.cancel.clone(),
                references,
            };
            let (samples, _) = sample(&model, &config, &sample_options, &device, |done, total| {
                ctx.progress(done as u64, total as u64, &format!("sampling model {}/{}", i + 1, p.models.len()));
            })?;
            let (f, shape) = extract_samples(&net, &samples, &config, &self.weights_dir, 32, Some(&cancel), |d, t| {
                ctx.progress(d as u64, t as u64, &format!("features of {name}"));
            })
            .map_err(|e| match e {
                // A cancel is a cancel, not a broken model.
                repdiff_engine::Error::Cancelled { .. } => JobError::Cancelled,
                e => JobError::Permanent(format!("model {i}: {e}")),
            })?;
            if real.is_none() {
                real = Some(self.real_features(ctx, &net, &p, &config, shape, &device)?);
            }
            let real = real.as_ref().expect("set above");
            let metrics = compare(real, &f, &options)?;
            ctx.log(
                "info",
                &format!(
                    "{name}: {}",
                    metrics.rows().iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", ")
                ),
            );
            results.push(repdiff_api::EvaluatedSet {
                name: name.clone(),
                checkpoint: key,
                generated: metrics.generated,
                fid: metrics.fid,
                sfid: metrics.sfid,
                inception_score: metrics.inception_score,
                inception_score_std: metrics.inception_score_std,
                precision: metrics.precision,
                recall: metrics.recall,
                density: metrics.density,
                coverage: metrics.coverage,
            });
            features.push((name, f));
        }
        let real = real.expect("at least one model");
        let histogram = if p.histogram > 0 {
            ctx.progress(0, 1, "t-SNE histograms");
            let mut sets = vec![("real".to_string(), &real.pool)];
            sets.extend(features.iter().map(|(n, f)| (n.clone(), &f.pool)));
            let h = feature_histogram(&sets, p.histogram, &TsneOptions { seed: p.seed, ..Default::default() })?;
            ctx.progress(1, 1, "t-SNE histograms");
            Some(repdiff_api::FeatureHistogram {
                centres: h.centres,
                sets: h
                    .sets
                    .into_iter()
                    .map(|s| repdiff_api::SetHistogram { name: s.name, counts: s.counts, overlap: s.overlap })
                    .collect(),
            })
        } else {
            None
        };
        let report = repdiff_api::EvaluateReport {
            pretrained: net.extractor() == &repdiff_engine::metrics::Extractor::Pretrained,
            extractor,
            real: real.len(),
            results,
            histogram,
        };
        serde_json::to_value(report).map_err(|e| JobError::Permanent(format!("cannot encode the report: {e}")))
    }
}
