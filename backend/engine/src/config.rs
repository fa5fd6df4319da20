//! Model, diffusion and training configuration, with the two presets (`tiny-cpu`, `paper`).
//! Every config is serde so that it travels inside checkpoints and job parameters.

use serde::{Deserialize, Serialize};

use crate::ops::MatmulPrecision;
use crate::{Error, Result};

/// What the denoiser is conditioned on besides the timestep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Conditioning {
    /// Unconditional: no label input at all (the paper's Fig. 2).
    None,
    /// Class label through an embedding table. With `dropout_prob > 0` the table has one extra row, the
    /// null class, used for label dropout in training and for classifier-free guidance at sampling.
    Class { num_classes: usize, dropout_prob: f64 },
    /// The paper's representation-conditional model (its Fig. 3): a ViT of `encoder_depth` blocks and
    /// `encoder_heads` heads, as wide as the DiT and with its patch size, encodes the clean latent (a
    /// reference image's at sampling) into tokens r, which enter the denoiser twice: as a latent-shaped
    /// map concatenated to its input channels, and concatenated to every block's tokens before one Linear
    /// maps them back to the width. Trained jointly by the diffusion loss.
    Representation { encoder_depth: usize, encoder_heads: usize },
}

impl Conditioning {
    /// What a person calls the model: "unconditional", "class-conditional", "representation-conditional".
    pub fn describe(&self) -> &'static str {
        match self {
            Conditioning::None => "unconditional",
            Conditioning::Class { .. } => "class-conditional",
            Conditioning::Representation { .. } => "representation-conditional",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Spatial size of the (square) input: 32 for SD-VAE latents of 256x256 images.
    pub input_size: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// Predict the variance interpolation too (output has 2C channels), as DiT and improved DDPM do.
    pub learn_sigma: bool,
    pub conditioning: Conditioning,
}

/// The DiT table: (depth, hidden size, heads) per size letter.
fn dit_size(size: &str) -> Option<(usize, usize, usize)> {
    match size {
        "S" => Some((12, 384, 6)),
        "B" => Some((12, 768, 12)),
        "L" => Some((24, 1024, 16)),
        "XL" => Some((28, 1152, 16)),
        _ => None,
    }
}

impl ModelConfig {
    /// A named DiT (`"DiT-B/2"`, `"DiT-XL/8"`, ...) on inputs of `input_size` x `input_size` x `in_channels`.
    pub fn dit(name: &str, input_size: usize, in_channels: usize, conditioning: Conditioning) -> Result<Self> {
        let unknown = || Error::UnknownModel(name.to_string());
        let rest = name.strip_prefix("DiT-").ok_or_else(unknown)?;
        let (size, patch) = rest.split_once('/').ok_or_else(unknown)?;
        let (depth, hidden_size, num_heads) = dit_size(size).ok_or_else(unknown)?;
        let patch_size = match patch {
            "2" => 2,
            "4" => 4,
            "8" => 8,
            _ => return Err(unknown()),
        };
        let config = ModelConfig {
            input_size,
            in_channels,
            patch_size,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            learn_sigma: true,
            conditioning,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.input_size == 0 || self.in_channels == 0 || self.depth == 0 || self.num_heads == 0 {
            return fail("input_size, in_channels, depth and num_heads must be positive".into());
        }
        if self.patch_size == 0 || !self.input_size.is_multiple_of(self.patch_size) {
            return fail(format!("input_size {} is not a multiple of patch_size {}", self.input_size, self.patch_size));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return fail(format!("hidden_size {} is not divisible by num_heads {}", self.hidden_size, self.num_heads));
        }
        // The 2-D sin-cos position embedding splits the width in four (sin/cos x row/column).
        if !self.hidden_size.is_multiple_of(4) {
            return fail(format!("hidden_size {} must be a multiple of 4", self.hidden_size));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= 16.0) {
            return fail(format!("mlp_ratio must be in (0, 16], got {}", self.mlp_ratio));
        }
        // Far beyond any model here (DiT-XL: 28 blocks of 1152 on 32x32x4), and small enough that sizes
        // computed from them cannot overflow.
        for (name, value, max) in [
            ("input_size", self.input_size, 4096),
            ("in_channels", self.in_channels, 64),
            ("hidden_size", self.hidden_size, 16_384),
            ("depth", self.depth, 512),
            ("num_heads", self.num_heads, 256),
        ] {
            if value > max {
                return fail(format!("{name} is at most {max}, got {value}"));
            }
        }
        if let Conditioning::Class { num_classes, dropout_prob } = self.conditioning {
            if num_classes == 0 || num_classes > 100_000 {
                return fail(format!("a class-conditional model has 1 to 100,000 classes, got {num_classes}"));
            }
            if !(0.0..1.0).contains(&dropout_prob) {
                return fail(format!("label dropout_prob must be in [0, 1), got {dropout_prob}"));
            }
        }
        if let Conditioning::Representation { encoder_depth, encoder_heads } = self.conditioning
            && (encoder_depth == 0
                || encoder_depth > 512
                || encoder_heads == 0
                || !self.hidden_size.is_multiple_of(encoder_heads))
        {
            return fail(format!(
                "the representation encoder needs depth >= 1 and a head count dividing hidden_size {} \
                 (got depth {encoder_depth}, {encoder_heads} heads)",
                self.hidden_size
            ));
        }
        Ok(())
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma { 2 * self.in_channels } else { self.in_channels }
    }

    pub fn grid_size(&self) -> usize {
        self.input_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    pub fn num_classes(&self) -> Option<usize> {
        match self.conditioning {
            Conditioning::Class { num_classes, .. } => Some(num_classes),
            Conditioning::None | Conditioning::Representation { .. } => None,
        }
    }

    /// Whether this is the representation-conditional model (it needs a reference latent).
    pub fn is_representation(&self) -> bool {
        matches!(self.conditioning, Conditioning::Representation { .. })
    }

    /// Channels entering the patch embedding: the noisy latent, plus the representation's map.
    pub fn embed_channels(&self) -> usize {
        if self.is_representation() { 2 * self.in_channels } else { self.in_channels }
    }

    /// The label id of the null class (classifier-free guidance), when the model has one.
    pub fn null_class(&self) -> Option<usize> {
        match self.conditioning {
            Conditioning::Class { num_classes, dropout_prob } if dropout_prob > 0.0 => Some(num_classes),
            _ => None,
        }
    }

    /// The input shape of one sample: (C, H, W).
    pub fn sample_dims(&self) -> (usize, usize, usize) {
        (self.in_channels, self.input_size, self.input_size)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffusionConfig {
    pub num_timesteps: usize,
    /// Linear beta schedule, as in DDPM: these are the values for T = 1000 and are scaled by 1000 / T.
    pub beta_start: f64,
    pub beta_end: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig { num_timesteps: 1000, beta_start: 1e-4, beta_end: 0.02 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Clip the global gradient norm to this value; `None` trains unclipped (as DiT does).
    pub grad_clip_norm: Option<f64>,
    pub ema_decay: f64,
    /// Ramp the EMA decay up as min(decay, (1 + n) / (10 + n)): useful for short runs.
    #[serde(default)]
    pub ema_warmup: bool,
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Random horizontal flips of training samples (DiT's only augmentation).
    pub hflip: bool,
    /// The CPU's matrix products in training: `highest` (f32) or `bf16` (bf16 operands, f32 sums: faster on
    /// CPUs with AVX512-BF16 or AMX, as PyTorch's "medium" float32 matmul precision).
    #[serde(default)]
    pub matmul_precision: MatmulPrecision,
}

/// How the training tensors relate to images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpace {
    /// The model works on resized images scaled to [-1, 1] (no autoencoder): 1 channel (grey) or 3 (RGB).
    Pixels,
    /// The model works on latents of the named autoencoder, multiplied by `scale`.
    Latents { autoencoder: String, scale: f64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub preset: String,
    pub data_space: DataSpace,
    pub model: ModelConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
}

/// The names `RunConfig::preset` knows.
pub const PRESETS: [&str; 2] = ["tiny-cpu", "paper"];

impl RunConfig {
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            // Grey 32x32 images, patch 4 (64 tokens), 4 blocks of width 128: a few steps per second on
            // two CPU cores, enough to learn the phantom classes in minutes.
            "tiny-cpu" => Ok(RunConfig {
                preset: name.into(),
                data_space: DataSpace::Pixels,
                model: ModelConfig {
                    input_size: 32,
                    in_channels: 1,
                    patch_size: 4,
                    hidden_size: 128,
                    depth: 4,
                    num_heads: 4,
                    mlp_ratio: 4.0,
                    learn_sigma: true,
                    conditioning: Conditioning::Class { num_classes: 2, dropout_prob: 0.1 },
                },
                diffusion: DiffusionConfig::default(),
                train: TrainConfig {
                    batch_size: 16,
                    steps: 2000,
                    learning_rate: 1e-3,
                    weight_decay: 0.0,
                    adam_beta1: 0.9,
                    adam_beta2: 0.999,
                    adam_eps: 1e-8,
                    grad_clip_norm: Some(1.0),
                    ema_decay: 0.999,
                    ema_warmup: true,
                    checkpoint_every: 500,
                    seed: 0,
                    hflip: true,
                    matmul_precision: MatmulPrecision::Highest,
                },
            }),
            // The paper's Table 4: DiT-B/2 on 32x32x4 SD-VAE latents, batch 16, lr 1e-4, AdamW without weight
            // decay, EMA 0.9999, 1,000 epochs of the 10,313 pre-training slices (~645k steps). For a GPU.
            "paper" => Ok(RunConfig {
                preset: name.into(),
                data_space: DataSpace::Latents { autoencoder: "sd-vae-ft-ema".into(), scale: 0.18215 },
                model: ModelConfig::dit("DiT-B/2", 32, 4, Conditioning::Class { num_classes: 2, dropout_prob: 0.1 })?,
                diffusion: DiffusionConfig::default(),
                train: TrainConfig {
                    batch_size: 16,
                    steps: 645_000,
                    learning_rate: 1e-4,
                    weight_decay: 0.0,
                    adam_beta1: 0.9,
                    adam_beta2: 0.999,
                    adam_eps: 1e-8,
                    grad_clip_norm: None,
                    ema_decay: 0.9999,
                    ema_warmup: false,
                    checkpoint_every: 10_000,
                    seed: 0,
                    hflip: true,
                    matmul_precision: MatmulPrecision::Highest,
                },
            }),
            _ => Err(Error::UnknownPreset(name.to_string())),
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: RunConfig = serde_json::from_str(text).map_err(|e| Error::Config(format!("config file: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting against its meaning and against bounds that keep sizes computed from them
    /// finite (a batch of 10^12 must be refused here, not by an allocator that aborts the process). How
    /// much memory the run needs is [`RunConfig::training_memory`]'s, for the caller to compare with what
    /// its machine has.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let t = &self.train;
        let fail = |msg: String| Err(Error::Config(msg));
        for (name, value, max) in [
            ("batch_size", t.batch_size, MAX_BATCH),
            ("steps", t.steps, MAX_STEPS),
            ("checkpoint_every", t.checkpoint_every, MAX_STEPS),
        ] {
            if !(1..=max).contains(&value) {
                return fail(format!("{name} is 1 to {max}, got {value}"));
            }
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0 && t.learning_rate <= 1.0) {
            return fail(format!("learning_rate must be in (0, 1], got {}", t.learning_rate));
        }
        if !(t.weight_decay.is_finite() && (0.0..=1.0).contains(&t.weight_decay)) {
            return fail(format!("weight_decay must be in [0, 1], got {}", t.weight_decay));
        }
        for (name, beta) in [("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return fail(format!("{name} must be in [0, 1), got {beta}"));
            }
        }
        if !(t.adam_eps.is_finite() && t.adam_eps > 0.0 && t.adam_eps <= 1.0) {
            return fail(format!("adam_eps must be in (0, 1], got {}", t.adam_eps));
        }
        if let Some(clip) = t.grad_clip_norm
            && !(clip.is_finite() && clip > 0.0)
        {
            return fail(format!("grad_clip_norm must be a positive number, got {clip}"));
        }
        if !(0.0..=1.0).contains(&t.ema_decay) {
            return fail(format!("ema_decay must be in [0, 1], got {}", t.ema_decay));
        }
        if !(2..=100_000).contains(&self.diffusion.num_timesteps) {
            return fail(format!("num_timesteps is 2 to 100,000, got {}", self.diffusion.num_timesteps));
        }
        let d = &self.diffusion;
        if !(d.beta_start.is_finite()
            && d.beta_end.is_finite()
            && 0.0 < d.beta_start
            && d.beta_start <= d.beta_end
            && d.beta_end < 1.0)
        {
            return fail(format!(
                "betas must satisfy 0 < beta_start <= beta_end < 1, got {} and {}",
                d.beta_start, d.beta_end
            ));
        }
        if let DataSpace::Latents { scale, .. } = &self.data_space
            && !(scale.is_finite() && *scale > 0.0)
        {
            return fail(format!("the latent scale must be a positive number, got {scale}"));
        }
        Ok(())
    }

    /// About how many parameters the model has (the DiT's blocks, the representation encoder's, the
    /// embeddings): for memory estimates.
    fn parameter_estimate(&self) -> u64 {
        let m = &self.model;
        let (d, depth) = (m.hidden_size as u64, m.depth as u64);
        let encoder = match m.conditioning {
            Conditioning::Representation { encoder_depth, .. } => encoder_depth as u64 * 12 * d * d + depth * d * d,
            _ => 0,
        };
        let embed = (m.in_channels * m.patch_size * m.patch_size) as u64 * d * 3 + 256 * d + 2 * d * d;
        depth * (12 + 6) * d * d + encoder + embed
    }

    fn tokens(&self) -> u64 {
        (self.model.input_size / self.model.patch_size.max(1)).pow(2) as u64
    }

    /// About how many bytes a training step of this run holds at once in f32: the weights, their
    /// gradients, AdamW's two moments and the EMA (five copies of the parameters), and the activations a
    /// step keeps for its backward (about 20 values per token, block and width, measured on the CPU
    /// build; the representation encoder's blocks count as blocks). An estimate for admission, within a
    /// factor of about 1.5 of what a run measures; it does not count the training data.
    pub fn training_memory(&self) -> u64 {
        let m = &self.model;
        let encoder_depth = match m.conditioning {
            Conditioning::Representation { encoder_depth, .. } => encoder_depth as u64,
            _ => 0,
        };
        let blocks = m.depth as u64 + encoder_depth;
        let activations = self.train.batch_size as u64 * self.tokens() * blocks * 20 * m.hidden_size as u64;
        4 * (5 * self.parameter_estimate() + activations)
    }

    /// About how many bytes a forward pass of `batch` inputs holds at once in f32 (sampling, the
    /// diffusion classifier): the weights twice (the model and the EMA it is loaded from) and one block's
    /// activations (about 16 values per token and width, and one head's attention scores).
    pub fn inference_memory(&self, batch: usize) -> u64 {
        let (d, tokens) = (self.model.hidden_size as u64, self.tokens());
        4 * (2 * self.parameter_estimate() + batch as u64 * tokens * (16 * d + tokens))
    }
}

/// The largest batch any run takes (the paper's is 16; DiT's 256).
pub const MAX_BATCH: usize = 65_536;
/// The most steps a run takes (the paper's pre-training is 645,000).
pub const MAX_STEPS: usize = 100_000_000;

/// Conditioning as a user names it; the class count comes from the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditioningKind {
    None,
    Class,
    /// The representation-conditional model, its encoder as deep and with as many heads as the DiT.
    Representation,
}

/// A run configuration as a user asks for it: a preset (or a whole config) and the usual overrides. The
/// CLI's flags and a training job's parameters are both this, so they resolve to the same run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    /// `tiny-cpu` (the default) or `paper`.
    pub preset: Option<String>,
    /// A complete configuration replacing the preset.
    pub config: Option<RunConfig>,
    /// A named architecture (DiT-S/2 ... DiT-XL/8) replacing the preset's.
    pub model: Option<String>,
    pub conditioning: Option<ConditioningKind>,
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<usize>,
    /// How the CPU's matrix products run (a speed setting: a resumed run may change it).
    pub matmul_precision: Option<MatmulPrecision>,
}

impl Overrides {
    /// Whether these would change what a run is (when resuming only its length and checkpoint cadence may
    /// change).
    pub fn changes_run(&self) -> bool {
        self.config.is_some()
            || self.model.is_some()
            || self.conditioning.is_some()
            || self.preset.as_deref().is_some_and(|p| p != "tiny-cpu")
            || self.batch_size.is_some()
            || self.learning_rate.is_some()
            || self.seed.is_some()
    }

    /// The run configuration, for data of `num_classes` classes (0: unknown or unlabelled).
    pub fn resolve(&self, num_classes: usize) -> Result<RunConfig> {
        let mut config = match &self.config {
            Some(config) => config.clone(),
            None => RunConfig::preset(self.preset.as_deref().unwrap_or("tiny-cpu"))?,
        };
        if let Some(name) = &self.model {
            let m = &config.model;
            config.model = ModelConfig::dit(name, m.input_size, m.in_channels, m.conditioning.clone())?;
        }
        match self.conditioning {
            Some(ConditioningKind::None) => config.model.conditioning = Conditioning::None,
            Some(ConditioningKind::Class) if config.model.num_classes().is_none() => {
                config.model.conditioning = Conditioning::Class { num_classes: num_classes.max(1), dropout_prob: 0.1 }
            }
            Some(ConditioningKind::Representation) if !config.model.is_representation() => {
                let m = &config.model;
                config.model.conditioning =
                    Conditioning::Representation { encoder_depth: m.depth, encoder_heads: m.num_heads }
            }
            _ => {}
        }
        if let (Conditioning::Class { num_classes: n, .. }, true) = (&mut config.model.conditioning, num_classes > 0) {
            *n = num_classes;
        }
        let t = &mut config.train;
        if let Some(v) = self.steps {
            t.steps = v;
        }
        if let Some(v) = self.batch_size {
            t.batch_size = v;
        }
        if let Some(v) = self.learning_rate {
            t.learning_rate = v;
        }
        if let Some(v) = self.seed {
            t.seed = v;
        }
        if let Some(v) = self.checkpoint_every {
            t.checkpoint_every = v;
        }
        if let Some(v) = self.matmul_precision {
            t.matmul_precision = v;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_models_match_the_dit_table() {
        let b2 = ModelConfig::dit("DiT-B/2", 32, 4, Conditioning::None).unwrap();
        assert_eq!((b2.depth, b2.hidden_size, b2.num_heads, b2.patch_size), (12, 768, 12, 2));
        assert_eq!(b2.num_patches(), 256);
        assert_eq!(b2.out_channels(), 8);
        let xl8 = ModelConfig::dit("DiT-XL/8", 32, 4, Conditioning::None).unwrap();
        assert_eq!((xl8.depth, xl8.hidden_size, xl8.num_heads, xl8.grid_size()), (28, 1152, 16, 4));
    }

    #[test]
    fn bad_names_and_configs_are_refused_with_the_reason() {
        for bad in ["DiT-M/2", "DiT-B/3", "ViT-B/2", "DiT-B", ""] {
            let err = ModelConfig::dit(bad, 32, 4, Conditioning::None).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = ModelConfig::dit("DiT-S/8", 36, 4, Conditioning::None).unwrap_err();
        assert!(err.to_string().contains("not a multiple of patch_size 8"), "{err}");
        assert!(RunConfig::preset("huge").is_err());
    }

    #[test]
    fn absurd_settings_are_refused_before_anything_is_allocated() {
        let refused = |edit: &dyn Fn(&mut RunConfig), needle: &str| {
            let mut config = RunConfig::preset("tiny-cpu").unwrap();
            edit(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        };
        refused(&|c| c.train.batch_size = 1_000_000_000_000, "batch_size is 1 to 65536");
        refused(&|c| c.train.steps = 1_000_000_000_000, "steps is 1 to 100000000");
        refused(&|c| c.train.checkpoint_every = 0, "checkpoint_every is 1 to");
        refused(&|c| c.train.learning_rate = 1e308, "learning_rate must be in (0, 1]");
        refused(&|c| c.train.learning_rate = f64::NAN, "learning_rate");
        refused(&|c| c.train.grad_clip_norm = Some(f64::INFINITY), "grad_clip_norm");
        refused(&|c| c.model.hidden_size = 1 << 20, "hidden_size is at most 16384");
        refused(&|c| c.diffusion.beta_end = 2.0, "betas");
    }

    #[test]
    fn the_memory_estimate_grows_with_the_batch_and_the_model() {
        let tiny = RunConfig::preset("tiny-cpu").unwrap();
        let mut paper = RunConfig::preset("paper").unwrap();
        // DiT-B/2 at batch 16: 130M parameters (2.6 GB for five copies) and ~2.4 GB of activations.
        let gib = paper.training_memory() as f64 / (1u64 << 30) as f64;
        assert!((3.0..8.0).contains(&gib), "{gib} GiB");
        assert!(tiny.training_memory() < paper.training_memory() / 20);
        let at_16 = paper.training_memory();
        paper.train.batch_size = 256;
        assert!(paper.training_memory() > 10 * at_16 / 2);
        // A forward pass holds much less than a training step.
        assert!(paper.inference_memory(256) < paper.training_memory() / 4);
        assert!(paper.inference_memory(1024) > paper.inference_memory(16));
    }

    #[test]
    fn presets_roundtrip_through_json() {
        for name in PRESETS {
            let config = RunConfig::preset(name).unwrap();
            let text = serde_json::to_string(&config).unwrap();
            assert_eq!(RunConfig::from_json(&text).unwrap(), config);
        }
    }
}
