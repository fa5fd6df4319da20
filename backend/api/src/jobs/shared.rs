//! The vocabulary several job kinds share: where data comes from, which checkpoint, how to sample, what a
//! run overrides, and the checks every kind's validation is written with.

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// The most training steps a run may take (the engine's `config::MAX_STEPS`).
pub const MAX_STEPS: usize = 100_000_000;
/// The largest batch (the engine's `config::MAX_BATCH`).
pub const MAX_BATCH: usize = 65_536;
/// The largest site number (the engine's `manifest::MAX_SITE`).
pub const MAX_SITE: usize = 1_000_000;
/// The most images the toy set may have.
pub const MAX_TOY: usize = 1_000_000;
/// The most denoising steps a sampler takes (the trained T).
pub const MAX_SAMPLING_STEPS: usize = 1000;
/// Density and coverage look at 5 neighbours: the fewest images a generation metric compares.
pub const MIN_METRIC_SET: usize = 6;

/// A parameter that is not valid: which one (a path such as `run.steps` or `validation.toy.n`) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid { field: field.into(), message: message.into() }
    }

    /// The same problem inside `parent` (`test` + `toy.n` = `test.toy.n`).
    pub fn within(self, parent: &str) -> Invalid {
        let field = if self.field.is_empty() { parent.to_string() } else { format!("{parent}.{}", self.field) };
        Invalid { field, ..self }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field.is_empty() {
            true => f.write_str(&self.message),
            false => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

impl std::error::Error for Invalid {}

/// `value` in `min..=max`, or the problem naming `field` and its range.
pub fn within(field: &str, value: usize, min: usize, max: usize) -> Result<(), Invalid> {
    match (min..=max).contains(&value) {
        true => Ok(()),
        false => Err(Invalid::new(field, format!("is {min} to {max}, got {value}"))),
    }
}

/// As [`within`], for a value that may be absent (absent is valid).
pub fn within_if(field: &str, value: Option<usize>, min: usize, max: usize) -> Result<(), Invalid> {
    value.map_or(Ok(()), |v| within(field, v, min, max))
}

/// A finite `value` in `min..=max`, or the problem naming `field` and its range.
pub fn finite_within(field: &str, value: f64, min: f64, max: f64) -> Result<(), Invalid> {
    match value.is_finite() && (min..=max).contains(&value) {
        true => Ok(()),
        false => Err(Invalid::new(field, format!("is a number in [{min:e}, {max}], got {value}"))),
    }
}

/// A learning rate: positive, at most 1.
pub fn learning_rate(field: &str, value: f64) -> Result<(), Invalid> {
    finite_within(field, value, f64::MIN_POSITIVE, 1.0)
}

/// A classifier-free guidance scale: finite and not negative.
pub fn guidance(field: &str, value: f64) -> Result<(), Invalid> {
    match value.is_finite() && value >= 0.0 {
        true => Ok(()),
        false => Err(Invalid::new(field, format!("is a number >= 0, got {value}"))),
    }
}

/// The part of a dataset's split (the paper's design: the downstream site's slices in train, validation
/// and test; every other site's in pre-training).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Pretrain,
    Train,
    Validation,
    Test,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Pretrain, Part::Train, Part::Validation, Part::Test];

    pub fn name(self) -> &'static str {
        match self {
            Part::Pretrain => "pretrain",
            Part::Train => "train",
            Part::Validation => "validation",
            Part::Test => "test",
        }
    }
}

/// One part of a dataset's split by site.
/// What a split keeps together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SplitUnit {
    /// All slices of one patient in one part (slices that name no patient: their study's, else their
    /// series', else their own), patients stratified by label. The default: a patient's neighbouring
    /// slices are nearly identical, so a per-slice split scores memory.
    #[default]
    Patient,
    /// The paper's split, slice by slice: slices of one patient may be in train and test.
    Slice,
}

impl SplitUnit {
    pub fn name(self) -> &'static str {
        match self {
            SplitUnit::Patient => "patient",
            SplitUnit::Slice => "slice",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// The site whose slices are split into train, validation and test, every other site's slices
    /// pre-training (the paper's design). None: a single-site design, every slice split into train,
    /// validation and test, and pre-training reads the training part (validation and test stay unseen).
    #[serde(default)]
    pub downstream_site: Option<usize>,
    pub part: Part,
    #[serde(default)]
    pub seed: u64,
    /// Patient (the default) or slice.
    #[serde(default)]
    pub unit: SplitUnit,
}

impl SplitSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        within_if("downstream_site", self.downstream_site, 0, MAX_SITE)
    }

    /// The part whose slices a job reads: `part`, except that without a site design pre-training reads
    /// the training part.
    pub fn reads(&self) -> Part {
        match (self.downstream_site, self.part) {
            (None, Part::Pretrain) => Part::Train,
            (_, part) => part,
        }
    }
}

/// Where a job's images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// The two-class toy set (horizontal vs vertical bars), grey, at the model's input size.
    Toy {
        n: usize,
        #[serde(default)]
        seed: u64,
    },
    /// A latent file in the store (`latents` [N, C, H, W], optional `labels`), as an encode job writes.
    Latents { key: String },
    /// A dataset's slices (labels: hematoma or not), or one part of its split, through a CT window
    /// (default brain), at the model's input size; encoded by the run's autoencoder when it works on
    /// latents.
    Dataset {
        id: i64,
        /// `brain`, `subdural`, `soft-tissue`, `bone` or `LEVEL/WIDTH` in HU.
        #[serde(default)]
        window: Option<String>,
        /// One part of the split of the dataset; all slices when absent.
        #[serde(default)]
        split: Option<SplitSpec>,
    },
    /// Synthetic phantom slices (`repdiff phantoms`), made again identically by every job that reads
    /// them: `num` from random sites, then `downstream` more from site 1; as a dataset's, through the brain
    /// window, or one part of their split.
    Phantoms {
        num: usize,
        #[serde(default)]
        downstream: usize,
        /// Side in pixels.
        size: usize,
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        split: Option<SplitSpec>,
        /// Above 1: the slices come as patients of this many neighbouring, nearly identical slices (one
        /// site, one label each), so that a per-slice split leaks as it does on real studies.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        slices_per_patient: usize,
    },
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// The most slices of one phantom patient.
pub const MAX_SLICES_PER_PATIENT: usize = 64;

/// The most phantom slices a data source may generate.
pub const MAX_PHANTOMS: usize = 200_000;

impl DataSource {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            DataSource::Toy { n, .. } => within("toy.n", *n, 1, MAX_TOY),
            DataSource::Latents { key } if key.trim().is_empty() => Err(Invalid::new("latents.key", "is empty")),
            DataSource::Dataset { window: Some(w), .. } if w.trim().is_empty() => {
                Err(Invalid::new("dataset.window", "is empty; leave it out for the brain window"))
            }
            DataSource::Dataset { split: Some(split), .. } => split.validate().map_err(|e| e.within("dataset.split")),
            DataSource::Phantoms { num, downstream, size, split, slices_per_patient, .. } => {
                within("phantoms.slices_per_patient", *slices_per_patient, 1, MAX_SLICES_PER_PATIENT)?;
                within("phantoms.num", *num, 1, MAX_PHANTOMS)?;
                within("phantoms.downstream", *downstream, 0, MAX_PHANTOMS - num.min(&MAX_PHANTOMS))?;
                within("phantoms.size", *size, 16, 1024)?;
                split.as_ref().map_or(Ok(()), |s| s.validate().map_err(|e| e.within("phantoms.split")))
            }
            _ => Ok(()),
        }
    }
}

/// Validates `data`, reporting problems under `field`.
pub fn data(field: &str, data: &DataSource) -> Result<(), Invalid> {
    data.validate().map_err(|e| e.within(field))
}

/// Validates optional data under `field`.
pub fn data_if(field: &str, source: Option<&DataSource>) -> Result<(), Invalid> {
    source.map_or(Ok(()), |d| data(field, d))
}

/// A checkpoint in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointRef {
    /// The checkpoint of a training job (`{"job": 12}`).
    Job(i64),
    /// Any checkpoint artifact by key.
    Key(String),
}

impl CheckpointRef {
    /// Its key in the store.
    pub fn key(&self) -> String {
        match self {
            CheckpointRef::Job(id) => format!("jobs/{id}/checkpoint.safetensors"),
            CheckpointRef::Key(key) => key.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            CheckpointRef::Key(key) if key.trim().is_empty() => Err(Invalid::new("key", "is empty")),
            _ => Ok(()),
        }
    }
}

/// The sampler of every job that samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Ancestral sampling (the paper's, at 250 steps).
    Ddpm,
    /// DDIM, deterministic at eta 0.
    #[default]
    Ddim,
}

impl Sampler {
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Ddpm => "ddpm",
            Sampler::Ddim => "ddim",
        }
    }
}

impl std::str::FromStr for Sampler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Sampler::Ddpm, Sampler::Ddim]
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("unknown sampler {s:?}: ddpm or ddim"))
    }
}

/// The sampling defaults every job (and every CLI command) that samples shares: DDIM, 50 steps, no guidance.
pub fn default_sampling_steps() -> usize {
    50
}
pub fn default_guidance() -> f64 {
    1.0
}

/// Checks the sampling fields every sampling kind has (`steps`, `guidance`).
pub fn sampling(prefix: &str, steps: usize, guidance_scale: f64) -> Result<(), Invalid> {
    let field = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
    within(&field("steps"), steps, 1, MAX_SAMPLING_STEPS)?;
    guidance(&field("guidance"), guidance_scale)
}

/// How matrix products run: `highest` exact f32, `high` TF32 on GPUs, `bf16` bf16 products with f32
/// accumulation (autocast-style on GPUs; on CPUs with AVX512-BF16 or AMX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    #[default]
    Highest,
    High,
    Bf16,
}

/// Conditioning as a user names it; the class count comes from the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConditioningKind {
    None,
    Class,
    /// The representation-conditional model, its encoder as deep and with as many heads as the DiT.
    Representation,
}

/// The presets a run may start from (`GET /api/v1/presets` shows them whole).
pub const PRESETS: [&str; 2] = ["tiny-cpu", "paper"];

/// A training run as a user asks for it: a preset (or a whole configuration) and the usual overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RunOverrides {
    /// `tiny-cpu` (the default) or `paper`.
    pub preset: Option<String>,
    /// A complete configuration replacing the preset (as `GET /api/v1/presets` shows one).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub config: Option<serde_json::Value>,
    /// A named architecture (DiT-S/2 ... DiT-XL/8) replacing the preset's.
    pub model: Option<String>,
    pub conditioning: Option<ConditioningKind>,
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<usize>,
    /// A speed setting: a resumed run may change it.
    pub matmul_precision: Option<MatmulPrecision>,
}

impl RunOverrides {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(preset) = &self.preset
            && !PRESETS.contains(&preset.as_str())
        {
            return Err(Invalid::new("preset", format!("is one of {}, got {preset:?}", PRESETS.join(", "))));
        }
        if self.config.as_ref().is_some_and(|c| !c.is_object()) {
            return Err(Invalid::new("config", "is a whole run configuration (an object)"));
        }
        if let Some(model) = &self.model {
            check_model_name(model).map_err(|m| Invalid::new("model", m))?;
        }
        schedule(self.steps, self.batch_size, self.checkpoint_every, self.learning_rate)
    }
}

/// The schedule a training run may override (a pre-training's `run`, a fine-tune's): each field absent or
/// in range.
pub fn schedule(
    steps: Option<usize>,
    batch_size: Option<usize>,
    checkpoint_every: Option<usize>,
    rate: Option<f64>,
) -> Result<(), Invalid> {
    within_if("steps", steps, 1, MAX_STEPS)?;
    within_if("batch_size", batch_size, 1, MAX_BATCH)?;
    within_if("checkpoint_every", checkpoint_every, 1, MAX_STEPS)?;
    rate.map_or(Ok(()), |lr| learning_rate("learning_rate", lr))
}

/// A DiT architecture's name: `DiT-{S,B,L,XL}/{2,4,8}`.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let valid = name
        .strip_prefix("DiT-")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(size, patch)| ["S", "B", "L", "XL"].contains(&size) && ["2", "4", "8"].contains(&patch));
    match valid {
        true => Ok(()),
        false => Err(format!("is DiT-S, DiT-B, DiT-L or DiT-XL with patch 2, 4 or 8 (DiT-B/2), got {name:?}")),
    }
}

/// Which Inception-v3 measures generated images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
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
    pub const ALL: [ExtractorChoice; 3] = [ExtractorChoice::Auto, ExtractorChoice::Pretrained, ExtractorChoice::Random];

    pub fn name(self) -> &'static str {
        match self {
            ExtractorChoice::Auto => "auto",
            ExtractorChoice::Pretrained => "pretrained",
            ExtractorChoice::Random => "random",
        }
    }
}

impl std::str::FromStr for ExtractorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ExtractorChoice::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown extractor {s:?}: auto, pretrained or random"))
    }
}
