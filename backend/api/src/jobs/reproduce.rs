//! `reproduce`: the paper's whole pipeline (pre-trainings, fine-tunings, classifiers, probes, baselines,
//! evaluation, counterfactuals) on a dataset or on synthetic phantoms, submitted as a graph of jobs: as
//! many stages run at once as there are workers free.

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use super::inference::{MAX_SAMPLES, MIN_EVALUATED};
use super::shared::{
    Invalid, MAX_SITE, MAX_SLICES_PER_PATIENT, MAX_STEPS, MatmulPrecision, PRESETS, SplitUnit, within, within_if,
};

fn default_preset() -> String {
    "tiny-cpu".into()
}
fn default_site() -> Option<usize> {
    Some(1)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReproduceParams {
    /// `tiny-cpu` (under half an hour on 2 CPU cores) or `paper` (DiT-B/2 on SD-VAE latents: a GPU's days).
    #[serde(default = "default_preset")]
    pub preset: String,
    /// A dataset of the server (its scans, markers and sites); none: synthetic phantoms.
    #[serde(default)]
    pub dataset: Option<i64>,
    /// Phantom slices from random sites (more come from the downstream site in the preset's proportion).
    #[serde(default)]
    pub phantoms: Option<usize>,
    /// The phantoms as patients of this many neighbouring slices each (default 1: independent slices):
    /// what makes a per-slice split leak, to measure against the patient split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phantom_slices_per_patient: Option<usize>,
    /// The site whose slices form the downstream task; every other site pre-trains (default 1). `null`: a
    /// single-site design, every slice split into train, validation and test, pre-training on the
    /// training part.
    #[serde(default = "default_site")]
    pub downstream_site: Option<usize>,
    /// What the downstream split keeps together: `patient` (the default) or `slice` (the paper's).
    #[serde(default)]
    pub split_unit: SplitUnit,
    #[serde(default)]
    pub pretrain_steps: Option<usize>,
    #[serde(default)]
    pub finetune_steps: Option<usize>,
    #[serde(default)]
    pub supervised_epochs: Option<usize>,
    /// Noise draws per image (the most a sequentially stopped image takes).
    #[serde(default)]
    pub draws: Option<usize>,
    /// Samples per pre-trained model for Table 5 (0 leaves it out).
    #[serde(default)]
    pub eval_samples: Option<usize>,
    /// Samples per class of each fine-tuned model for the class-fidelity check (0 leaves it out).
    #[serde(default)]
    pub class_samples: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Seeds the pipeline runs for, from `seed` on: every method's result per seed and its spread.
    #[serde(default)]
    pub seeds: Option<usize>,
    /// Matrix products of the training steps: `highest` (f32, the default), `high` or `bf16`.
    #[serde(default)]
    pub matmul_precision: Option<MatmulPrecision>,
}

impl Default for ReproduceParams {
    fn default() -> Self {
        ReproduceParams {
            preset: default_preset(),
            dataset: None,
            phantoms: None,
            phantom_slices_per_patient: None,
            downstream_site: default_site(),
            split_unit: SplitUnit::default(),
            pretrain_steps: None,
            finetune_steps: None,
            supervised_epochs: None,
            draws: None,
            eval_samples: None,
            class_samples: None,
            seed: 0,
            seeds: None,
            matmul_precision: None,
        }
    }
}

impl ReproduceParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !PRESETS.contains(&self.preset.as_str()) {
            return Err(Invalid::new("preset", format!("is one of {}, got {:?}", PRESETS.join(", "), self.preset)));
        }
        if self.dataset.is_some() && self.phantoms.is_some() {
            return Err(Invalid::new("phantoms", "give a dataset or a number of phantoms, not both"));
        }
        within_if("phantoms", self.phantoms, 20, 200_000)?;
        within_if("pretrain_steps", self.pretrain_steps, 1, MAX_STEPS)?;
        within_if("finetune_steps", self.finetune_steps, 1, MAX_STEPS)?;
        within_if("supervised_epochs", self.supervised_epochs, 1, 10_000)?;
        within_if("draws", self.draws, 1, 4096)?;
        if let Some(n) = self.eval_samples.filter(|&n| n > 0) {
            within("eval_samples", n, MIN_EVALUATED, MAX_SAMPLES)
                .map_err(|e| Invalid::new(e.field, format!("{}; 0 leaves Table 5 out", e.message)))?;
        }
        // Each fine-tuned model draws this many of each class in one sample job.
        within_if("class_samples", self.class_samples, 0, MAX_SAMPLES / 2)?;
        within_if("seeds", self.seeds, 1, 100)?;
        within_if("phantom_slices_per_patient", self.phantom_slices_per_patient, 1, MAX_SLICES_PER_PATIENT)?;
        within_if("downstream_site", self.downstream_site, 0, MAX_SITE)
    }
}
