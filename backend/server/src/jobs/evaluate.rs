//! `evaluate`: the paper's Table 5 and Figs. 7/9 as a job. Draws `num` samples from each model, reads the
//! real images, and reports FID, sFID, IS, precision/recall and density/coverage of every model against
//! them, plus the 1-D t-SNE feature histograms. The result is an [`repdiff_api::EvaluateReport`].
//!
//! With pytorch-fid's weights in the weights folder the numbers are the field's; without them the
//! documented random Inception stands in and the report's `extractor` and `pretrained` say so.

use repdiff_engine::config::RunConfig;
use repdiff_engine::device::best_device;
use repdiff_engine::imaging::{Channels, Window};
use repdiff_engine::metrics::tsne::{TsneOptions, feature_histogram};
use repdiff_engine::metrics::{
    EvenlySpaced, ImageSource, InceptionV3, MetricOptions, SetFeatures, SliceImages, compare, extract_cached,
    extract_samples,
};
use repdiff_engine::sample::{SampleOptions, Weights, load_model, sample};
use serde::{Deserialize, Serialize};

use super::sample::{CheckpointRef, Sampler, default_guidance, default_steps};
use super::train::{DataSource, data_inputs, load_data, validate_data};
use crate::worker::{Handler, Input, JobContext, JobError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelToEvaluate {
    pub checkpoint: CheckpointRef,
    /// Shown in the report; default: the run and what it is ("#3 representation-conditional").
    #[serde(default)]
    pub name: Option<String>,
    /// Reference images of a representation-conditional model (sample i varies reference i); default:
    /// the real images.
    #[serde(default)]
    pub references: Option<DataSource>,
}

/// Which Inception-v3 measures the images.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExtractorChoice {
    /// The pretrained FID network when the weights folder has it, else the random one.
    #[default]
    Auto,
    /// The pretrained FID network (an error without its weights).
    Pretrained,
    /// The documented random Inception-v3 (seed 0): comparable between runs, never called FID.
    Random,
}

impl ExtractorChoice {
    /// Refuses the pretrained extractor when its weights are not in `weights_dir`.
    pub fn check(self, weights_dir: &std::path::Path) -> Result<(), String> {
        let file = repdiff_engine::metrics::inception::WEIGHTS_FILE;
        if self == ExtractorChoice::Pretrained && !weights_dir.join(file).exists() {
            return Err(format!(
                "the pretrained extractor needs {file} in the server's weights folder (or choose auto/random)"
            ));
        }
        Ok(())
    }

    /// The network this choice names.
    pub fn load(
        self,
        weights_dir: &std::path::Path,
        device: &repdiff_engine::Device,
    ) -> repdiff_engine::Result<InceptionV3> {
        match self {
            ExtractorChoice::Auto => InceptionV3::pretrained_or_random(weights_dir, device),
            ExtractorChoice::Pretrained => InceptionV3::pretrained(weights_dir, device),
            ExtractorChoice::Random => InceptionV3::random(0, device),
        }
    }
}

fn default_num() -> usize {
    256
}
fn default_histogram() -> usize {
    500
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The real images (a dataset, one part of its split, a latent file, or the toy set).
    pub real: DataSource,
    pub models: Vec<ModelToEvaluate>,
    /// Samples per model.
    #[serde(default = "default_num")]
    pub num: usize,
    #[serde(default)]
    pub sampler: Sampler,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    /// Classes cycled over a class-conditional model's samples; empty: every class in turn.
    #[serde(default)]
    pub classes: Vec<u32>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub extractor: ExtractorChoice,
    /// Images per set in the t-SNE histograms (0: none).
    #[serde(default = "default_histogram")]
    pub histogram: usize,
    /// Use at most this many real images, evenly spaced through the set (all by default).
    #[serde(default)]
    pub max_real: Option<usize>,
}

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
        if let DataSource::Dataset { id, window, split } = &p.real {
            let window = Window::parse(window.as_deref().unwrap_or("brain"))?;
            let manifest = super::encode::fetch_scans(ctx, *id, split.as_ref())?;
            let slices = SliceImages::open(
                &manifest,
                split.as_ref().map(|s| s.part),
                Channels::Window { window, copies: channels },
                side,
                device,
            )?;
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

impl Handler for Evaluate {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: EvaluateParams = super::parse("evaluate", params)?;
        if p.models.is_empty() || p.models.len() > 8 {
            return Err("models lists 1 to 8 checkpoints to evaluate".into());
        }
        if !(10..=10_000).contains(&p.num) {
            return Err("num must be between 10 and 10000 samples per model".into());
        }
        if p.steps == 0 || p.steps > 1000 {
            return Err("steps must be between 1 and 1000".into());
        }
        if !(p.guidance.is_finite() && p.guidance >= 0.0) {
            return Err("guidance must be >= 0".into());
        }
        if p.max_real.is_some_and(|m| m < 6) {
            // Density and coverage look at 5 neighbours.
            return Err("max_real must be at least 6 images".into());
        }
        if p.histogram > 2000 {
            return Err("histogram takes at most 2000 images per set (exact t-SNE)".into());
        }
        p.extractor.check(&self.weights_dir)?;
        validate_data(&p.real)?;
        p.models.iter().filter_map(|m| m.references.as_ref()).try_for_each(validate_data)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        match serde_json::from_value::<EvaluateParams>(params.clone()) {
            Ok(p) => {
                let mut inputs = data_inputs(&p.real);
                for m in &p.models {
                    inputs.push(Input::Artifact(m.checkpoint.key()));
                    inputs.extend(m.references.as_ref().map(data_inputs).unwrap_or_default());
                }
                inputs
            }
            Err(_) => Vec::new(),
        }
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: EvaluateParams = ctx.params()?;
        let (device, device_note) = best_device();
        let net = p.extractor.load(&self.weights_dir, &device)?;
        let extractor = net.extractor().label();
        ctx.log("info", &format!("extractor {extractor} on {device_note}"));
        let (sampler, respacing) = p.sampler.kind(p.steps, 0.0);

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
