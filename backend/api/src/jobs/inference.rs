//! Kinds that use trained models: `sample`, `counterfactual`, `classify`, `evaluate`, `probe`, and the
//! supervised baselines; and `noop`, the queue's own test kind.

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use super::shared::{
    CheckpointRef, DataSource, ExtractorChoice, Invalid, MIN_METRIC_SET, Sampler, data, data_if, default_guidance,
    default_sampling_steps, finite_within, learning_rate, sampling, within,
};

/// The most samples one job draws.
pub const MAX_SAMPLES: usize = 10_000;
/// The fewest samples an evaluation measures.
pub const MIN_EVALUATED: usize = 10;

fn checkpoint(field: &str, checkpoint: &CheckpointRef) -> Result<(), Invalid> {
    checkpoint.validate().map_err(|e| e.within(field))
}

fn default_sample_num() -> usize {
    16
}

/// `sample`: draws samples from a checkpoint and publishes them (a PNG each, a grid, the tensor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleParams {
    pub checkpoint: CheckpointRef,
    #[serde(default = "default_sample_num")]
    pub num: usize,
    /// Classes cycled over the samples; empty: every class in turn (class-conditional models).
    #[serde(default)]
    pub classes: Vec<u32>,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    #[serde(default)]
    pub sampler: Sampler,
    /// Denoising steps, respaced from the trained T.
    #[serde(default = "default_sampling_steps")]
    pub steps: usize,
    /// DDIM stochasticity (0: deterministic).
    #[serde(default)]
    pub eta: f64,
    #[serde(default)]
    pub seed: u64,
    /// Use the raw weights instead of their EMA.
    #[serde(default)]
    pub raw_weights: bool,
    /// Reference images for a representation-conditional model (sample i is a variation of reference
    /// i, cycled).
    #[serde(default)]
    pub references: Option<DataSource>,
    /// Also record each sample's x0 predictions at this many evenly spaced steps (the paper's Fig. 11).
    #[serde(default)]
    pub frames: Option<usize>,
}

impl SampleParams {
    pub fn new(checkpoint: CheckpointRef) -> Self {
        SampleParams {
            checkpoint,
            num: default_sample_num(),
            classes: Vec::new(),
            guidance: default_guidance(),
            sampler: Sampler::default(),
            steps: default_sampling_steps(),
            eta: 0.0,
            seed: 0,
            raw_weights: false,
            references: None,
            frames: None,
        }
    }
}

impl SampleParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        checkpoint("checkpoint", &self.checkpoint)?;
        within("num", self.num, 1, MAX_SAMPLES)?;
        sampling("", self.steps, self.guidance)?;
        finite_within("eta", self.eta, 0.0, 1.0)?;
        if let Some(frames) = self.frames {
            within("frames", frames, 2, 64)?;
        }
        data_if("references", self.references.as_ref())
    }
}

fn default_counterfactual_num() -> usize {
    8
}
fn default_t() -> usize {
    500
}

/// `counterfactual`: each scan noised to `t` and denoised as each class (the paper's Fig. 10).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CounterfactualParams {
    /// A class-conditional checkpoint (a finetune job's: `{"job": ID}`).
    pub checkpoint: CheckpointRef,
    /// The scans (their first `num`).
    pub data: DataSource,
    #[serde(default = "default_counterfactual_num")]
    pub num: usize,
    /// The noise level to go up to (the nearest DDIM step at or below is used).
    #[serde(default = "default_t")]
    pub t: usize,
    /// DDIM steps over the whole process.
    #[serde(default = "default_sampling_steps")]
    pub steps: usize,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub raw_weights: bool,
}

impl CounterfactualParams {
    pub fn new(checkpoint: CheckpointRef, data: DataSource) -> Self {
        CounterfactualParams {
            checkpoint,
            data,
            num: default_counterfactual_num(),
            t: default_t(),
            steps: default_sampling_steps(),
            guidance: default_guidance(),
            seed: 0,
            raw_weights: false,
        }
    }
}

impl CounterfactualParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        checkpoint("checkpoint", &self.checkpoint)?;
        within("num", self.num, 1, 256)?;
        within("t", self.t, 1, 999)?;
        sampling("", self.steps, self.guidance)?;
        data("data", &self.data)
    }
}

/// What the diffusion classifier compares between classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Error of the predicted clean latent (the paper's).
    #[default]
    X0Mse,
    /// Error of the predicted noise (Li et al.'s).
    EpsMse,
}

/// Which lead stops an image's noise draws.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The remaining draws of the budget are unlikely (< alpha) to overturn the leader.
    #[default]
    Predictive,
    /// The leader is ahead by a Bonferroni-corrected t test at alpha: unlimited draws would agree.
    Confidence,
}

fn default_alpha() -> f64 {
    0.01
}
fn default_min_draws() -> usize {
    16
}

/// Sequential stopping of the diffusion classifier's draws.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Stopping {
    /// The error rate of an early decision (default 0.01).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Draws before the first look (default 16); the rule sets the looks after it.
    #[serde(default = "default_min_draws")]
    pub min_draws: usize,
    #[serde(default)]
    pub rule: Rule,
}

impl Default for Stopping {
    fn default() -> Self {
        Stopping { alpha: default_alpha(), min_draws: default_min_draws(), rule: Rule::default() }
    }
}

impl Stopping {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Invalid::new("alpha", format!("is an error rate in (0, 1), got {}", self.alpha)));
        }
        within("min_draws", self.min_draws, 2, 4096)
    }
}

fn default_timesteps() -> Vec<usize> {
    vec![50, 100, 200, 300, 400, 500, 600, 700, 800, 900]
}
fn default_draws() -> usize {
    64
}
fn default_classify_batch() -> usize {
    16
}

/// `classify`: the zero-shot diffusion classifier; the timestep is chosen on `validation`, `test` is
/// classified at it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClassifyParams {
    /// A class-conditional checkpoint (a finetune job's: `{"job": ID}`).
    pub checkpoint: CheckpointRef,
    /// Labelled data the timestep is chosen on.
    pub validation: DataSource,
    /// Labelled data classified at the chosen timestep.
    #[serde(default)]
    pub test: Option<DataSource>,
    #[serde(default = "default_timesteps")]
    pub timesteps: Vec<usize>,
    /// Instead of a sweep: the timestep another classify job chose on its validation data (that job's id;
    /// the run waits for it). `timesteps` is then not read.
    #[serde(default)]
    pub timestep_of: Option<i64>,
    /// Noise draws per image and timestep, shared by every class (the paper: 512).
    #[serde(default = "default_draws")]
    pub draws: usize,
    #[serde(default)]
    pub score: Score,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_classify_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub raw_weights: bool,
    /// Stop drawing noise for an image once its class is decided (`{}` for the defaults).
    #[serde(default)]
    pub stopping: Option<Stopping>,
    /// With `stopping`: also classify the test data at the full budget and compare.
    #[serde(default)]
    pub measure_agreement: bool,
}

impl ClassifyParams {
    pub fn new(checkpoint: CheckpointRef, validation: DataSource) -> Self {
        ClassifyParams {
            checkpoint,
            validation,
            test: None,
            timesteps: default_timesteps(),
            timestep_of: None,
            draws: default_draws(),
            score: Score::default(),
            seed: 0,
            batch_size: default_classify_batch(),
            raw_weights: false,
            stopping: None,
            measure_agreement: false,
        }
    }
}

impl ClassifyParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        checkpoint("checkpoint", &self.checkpoint)?;
        if self.timestep_of.is_none() {
            within("timesteps", self.timesteps.len(), 1, 1000)
                .map_err(|_| Invalid::new("timesteps", "1 to 1000 of them"))?;
        }
        if let Some(i) = self.timesteps.iter().position(|&t| t >= 1000) {
            return Err(Invalid::new(format!("timesteps.{i}"), format!("is 0 to 999, got {}", self.timesteps[i])));
        }
        within("draws", self.draws, 1, 4096)?;
        within("batch_size", self.batch_size, 1, 1024)?;
        if let Some(stopping) = &self.stopping {
            stopping.validate().map_err(|e| e.within("stopping"))?;
        }
        if self.measure_agreement && self.stopping.is_none() {
            return Err(Invalid::new(
                "measure_agreement",
                "compares sequential stopping with the full budget: set stopping",
            ));
        }
        data("validation", &self.validation)?;
        data_if("test", self.test.as_ref())
    }
}

/// One model an evaluation samples from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
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

fn default_evaluate_num() -> usize {
    256
}
fn default_histogram() -> usize {
    500
}

/// `evaluate`: generation metrics (FID/FD, sFID, IS, precision, recall, density, coverage) of up to eight
/// models against the same real images (the paper's Table 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The real images (a dataset, one part of its split, a latent file, or the toy set).
    pub real: DataSource,
    pub models: Vec<ModelToEvaluate>,
    /// Samples per model.
    #[serde(default = "default_evaluate_num")]
    pub num: usize,
    #[serde(default)]
    pub sampler: Sampler,
    #[serde(default = "default_sampling_steps")]
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

impl EvaluateParams {
    pub fn new(real: DataSource, models: Vec<ModelToEvaluate>) -> Self {
        EvaluateParams {
            real,
            models,
            num: default_evaluate_num(),
            sampler: Sampler::default(),
            steps: default_sampling_steps(),
            guidance: default_guidance(),
            classes: Vec::new(),
            seed: 0,
            extractor: ExtractorChoice::default(),
            histogram: default_histogram(),
            max_real: None,
        }
    }
}

impl ModelToEvaluate {
    pub fn new(checkpoint: CheckpointRef) -> Self {
        ModelToEvaluate { checkpoint, name: None, references: None }
    }
}

impl EvaluateParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        data("real", &self.real)?;
        within("models", self.models.len(), 1, 8).map_err(|_| Invalid::new("models", "lists 1 to 8 checkpoints"))?;
        for (i, model) in self.models.iter().enumerate() {
            checkpoint(&format!("models.{i}.checkpoint"), &model.checkpoint)?;
            if model.name.as_deref().is_some_and(|n| n.trim().is_empty() || n.chars().count() > 200) {
                return Err(Invalid::new(format!("models.{i}.name"), "is 1 to 200 characters"));
            }
            data_if(&format!("models.{i}.references"), model.references.as_ref())?;
        }
        within("num", self.num, MIN_EVALUATED, MAX_SAMPLES)?;
        sampling("", self.steps, self.guidance)?;
        if let Some(max_real) = self.max_real {
            within("max_real", max_real, MIN_METRIC_SET, 1_000_000)?;
        }
        // Exact t-SNE is quadratic in its points.
        within("histogram", self.histogram, 0, 2000)
    }
}

/// What a linear probe reads features from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Features {
    /// The representation encoder of `checkpoint`.
    #[default]
    Encoder,
    /// DINOv2 ViT-S/14 on the images.
    Dinov2,
}

/// DINOv2's patch: its input side is a multiple of it.
pub const DINO_PATCH: usize = 14;

fn default_dino_size() -> usize {
    224
}

/// `probe`: a logistic-regression probe on frozen features (the representation encoder's or DINOv2's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProbeParams {
    #[serde(default)]
    pub features: Features,
    /// A representation-conditional checkpoint (a `pretrain` job with `"conditioning": "representation"`):
    /// the encoder probed.
    #[serde(default)]
    pub checkpoint: Option<CheckpointRef>,
    /// DINOv2's input size (a multiple of 14; 518 is its native one).
    #[serde(default = "default_dino_size")]
    pub dino_size: usize,
    pub train: DataSource,
    pub validation: DataSource,
    #[serde(default)]
    pub test: Option<DataSource>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub raw_weights: bool,
}

impl ProbeParams {
    /// A probe of `features` (with the checkpoint of an encoder's model).
    pub fn new(
        features: Features,
        checkpoint: Option<CheckpointRef>,
        train: DataSource,
        validation: DataSource,
    ) -> Self {
        ProbeParams {
            features,
            checkpoint,
            dino_size: default_dino_size(),
            train,
            validation,
            test: None,
            seed: 0,
            raw_weights: false,
        }
    }
}

impl ProbeParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        match (self.features, &self.checkpoint) {
            (Features::Encoder, None) => {
                return Err(Invalid::new("checkpoint", "an encoder probe needs the checkpoint of its model"));
            }
            (Features::Dinov2, Some(_)) => {
                return Err(Invalid::new("checkpoint", "a dinov2 probe reads no checkpoint"));
            }
            (Features::Dinov2, None) => {
                if self.dino_size == 0 || !self.dino_size.is_multiple_of(DINO_PATCH) || self.dino_size > 1022 {
                    return Err(Invalid::new(
                        "dino_size",
                        format!("is a multiple of {DINO_PATCH} up to 1022, got {}", self.dino_size),
                    ));
                }
            }
            (Features::Encoder, Some(c)) => checkpoint("checkpoint", c)?,
        }
        data("train", &self.train)?;
        data("validation", &self.validation)?;
        data_if("test", self.test.as_ref())
    }
}

/// The supervised baselines' architectures.
pub const ARCHITECTURES: [&str; 5] = ["vit-b", "vit-s", "tiny", "resnet-50", "resnet-tiny"];

fn default_architecture() -> String {
    "vit-b".into()
}
fn default_patch() -> usize {
    2
}
fn default_epochs() -> usize {
    50
}
fn default_supervised_batch() -> usize {
    32
}
fn default_supervised_learning_rate() -> f64 {
    3e-4
}
fn default_size() -> usize {
    32
}

/// `supervised`: a ViT or ResNet trained from scratch on the labels (the paper's baselines); the epoch
/// with the best validation F1 is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SupervisedParams {
    pub train: DataSource,
    pub validation: DataSource,
    #[serde(default)]
    pub test: Option<DataSource>,
    /// `vit-b` (the paper's), `vit-s`, `tiny`, `resnet-50` (the paper's) or `resnet-tiny`.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// The ViT's patch (it must tile `size`).
    #[serde(default = "default_patch")]
    pub patch: usize,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_supervised_batch")]
    pub batch_size: usize,
    #[serde(default = "default_supervised_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub seed: u64,
    /// Image side of dataset slices and the toy set (grey pixels; a latent file keeps its own shape).
    #[serde(default = "default_size")]
    pub size: usize,
}

impl SupervisedParams {
    pub fn new(train: DataSource, validation: DataSource) -> Self {
        SupervisedParams {
            train,
            validation,
            test: None,
            architecture: default_architecture(),
            patch: default_patch(),
            epochs: default_epochs(),
            batch_size: default_supervised_batch(),
            learning_rate: default_supervised_learning_rate(),
            seed: 0,
            size: default_size(),
        }
    }
}

impl SupervisedParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !ARCHITECTURES.contains(&self.architecture.as_str()) {
            return Err(Invalid::new(
                "architecture",
                format!("is one of {}, got {:?}", ARCHITECTURES.join(", "), self.architecture),
            ));
        }
        within("size", self.size, 8, 512)?;
        if !self.architecture.starts_with("resnet") && (self.patch == 0 || !self.size.is_multiple_of(self.patch)) {
            return Err(Invalid::new("patch", format!("must tile {0}x{0} inputs, got {1}", self.size, self.patch)));
        }
        within("epochs", self.epochs, 1, 1000)?;
        within("batch_size", self.batch_size, 1, 1024)?;
        learning_rate("learning_rate", self.learning_rate)?;
        data("train", &self.train)?;
        data("validation", &self.validation)?;
        data_if("test", self.test.as_ref())
    }
}

/// `noop`: sleeps (the queue's tests and benchmarks).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct NoopParams {
    pub sleep_ms: u64,
    /// After sleeping, abort the worker process (as a failed allocation does): how the tests check that a
    /// job's crash is the job's alone. Accepted only where the server runs with REPDIFF_TEST_HOOKS=1.
    pub abort: bool,
}

impl NoopParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self.sleep_ms <= 3_600_000 {
            true => Ok(()),
            false => Err(Invalid::new("sleep_ms", "is at most an hour")),
        }
    }
}
