//! Training kinds: `pretrain` and `finetune`, with the generation metrics measured as they train.

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use super::shared::{
    CheckpointRef, DataSource, ExtractorChoice, Invalid, MAX_STEPS, MIN_METRIC_SET, MatmulPrecision, RunOverrides,
    Sampler, default_guidance, default_sampling_steps, within,
};

/// `pretrain`: trains a DiT (unconditional unless `run.conditioning` says otherwise) on `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PretrainParams {
    /// The run: a preset and overrides (`{"preset": "tiny-cpu", "steps": 500}`).
    #[serde(default)]
    pub run: RunOverrides,
    pub data: DataSource,
    /// Generation metrics of the checkpoints as the run trains (none by default).
    #[serde(default)]
    pub eval: Option<CheckpointEval>,
}

impl PretrainParams {
    /// Training on `data` with the default preset and no checkpoint evaluation.
    pub fn new(data: DataSource) -> Self {
        PretrainParams { run: RunOverrides::default(), data, eval: None }
    }
}

impl PretrainParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.run.validate().map_err(|e| e.within("run"))?;
        super::shared::data("data", &self.data)?;
        self.eval.as_ref().map_or(Ok(()), |e| e.validate().map_err(|e| e.within("eval")))
    }
}

fn default_dropout() -> f64 {
    0.1
}

/// What a fine-tune may change of the pre-trained run (its model stays).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneRun {
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<usize>,
    pub matmul_precision: Option<MatmulPrecision>,
}

impl FinetuneRun {
    pub fn validate(&self) -> Result<(), Invalid> {
        super::shared::schedule(self.steps, self.batch_size, self.checkpoint_every, self.learning_rate)
    }
}

/// `finetune`: a class-conditional model started from a pre-trained checkpoint (the paper's transfer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FinetuneParams {
    /// The pre-trained checkpoint: `{"job": ID}` (a pretrain job's) or `{"key": "..."}`.
    pub from: CheckpointRef,
    /// Start from its raw weights instead of their EMA.
    #[serde(default)]
    pub raw_weights: bool,
    /// Label dropout (the null class for classifier-free guidance); 0 for none.
    #[serde(default = "default_dropout")]
    pub label_dropout: f64,
    #[serde(default)]
    pub run: FinetuneRun,
    /// Labelled data (the downstream training split).
    pub data: DataSource,
    /// Generation metrics of the checkpoints as the run trains (none by default).
    #[serde(default)]
    pub eval: Option<CheckpointEval>,
}

impl FinetuneParams {
    /// Fine-tuning `from` on `data` with the defaults.
    pub fn new(from: CheckpointRef, data: DataSource) -> Self {
        FinetuneParams {
            from,
            raw_weights: false,
            label_dropout: default_dropout(),
            run: FinetuneRun::default(),
            data,
            eval: None,
        }
    }
}

impl FinetuneParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.from.validate().map_err(|e| e.within("from"))?;
        if !(0.0..1.0).contains(&self.label_dropout) {
            return Err(Invalid::new("label_dropout", format!("is in [0, 1), got {}", self.label_dropout)));
        }
        self.run.validate().map_err(|e| e.within("run"))?;
        super::shared::data("data", &self.data)?;
        self.eval.as_ref().map_or(Ok(()), |e| e.validate().map_err(|e| e.within("eval")))
    }
}

fn default_eval_num() -> usize {
    64
}
fn default_max_real() -> usize {
    500
}

/// Generation metrics (FD, precision, recall, ...) of a training run's checkpoints, measured every `every`
/// steps against the training images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckpointEval {
    /// Measure every this many steps (and at the last step).
    pub every: usize,
    /// Samples drawn each time (a class-conditional model's cycle through the classes; a representation
    /// model's vary the training images in turn).
    #[serde(default = "default_eval_num")]
    pub num: usize,
    /// Training images the samples are measured against (evenly spaced through the set).
    #[serde(default = "default_max_real")]
    pub max_real: usize,
    #[serde(default)]
    pub sampler: Sampler,
    #[serde(default = "default_sampling_steps")]
    pub steps: usize,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    #[serde(default)]
    pub extractor: ExtractorChoice,
    /// The sampling seed: the same noise at every checkpoint, so the curve shows the model changing.
    #[serde(default)]
    pub seed: u64,
}

impl CheckpointEval {
    /// Measuring every `every` steps with the defaults.
    pub fn new(every: usize) -> Self {
        CheckpointEval {
            every,
            num: default_eval_num(),
            max_real: default_max_real(),
            sampler: Sampler::default(),
            steps: default_sampling_steps(),
            guidance: default_guidance(),
            extractor: ExtractorChoice::default(),
            seed: 0,
        }
    }
}

impl CheckpointEval {
    pub fn validate(&self) -> Result<(), Invalid> {
        within("every", self.every, 1, MAX_STEPS)?;
        within("num", self.num, MIN_METRIC_SET, 10_000)?;
        within("max_real", self.max_real, MIN_METRIC_SET, 50_000)?;
        super::shared::sampling("", self.steps, self.guidance)
    }

    /// Whether the checkpoint at `step` of a `total`-step run is measured.
    pub fn due(&self, step: usize, total: usize) -> bool {
        step.is_multiple_of(self.every.max(1)) || step == total
    }

    /// The next step after `step` that is measured.
    pub fn next(&self, step: usize, total: usize) -> usize {
        ((step / self.every.max(1) + 1) * self.every.max(1)).min(total)
    }
}
