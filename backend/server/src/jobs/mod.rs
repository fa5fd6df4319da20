//! Job kinds: one [`Task`](crate::worker::Task) per kind, a function of the kind's typed spec (defined in
//! `repdiff_api::jobs`, validated there) and the job's context. What several kinds share (data sources,
//! checkpoints, samplers, the conversions to the engine's types) is in `inputs`.

mod checkpoint_eval;
mod classify;
mod counterfactual;
mod encode;
mod evaluate;
mod finetune;
mod import;
mod inputs;
mod noop;
mod probe;
mod reproduce;
mod sample;
mod supervised;
mod train;

pub use inputs::{load_extractor, part, sampler_kind, split_unit};

use std::path::PathBuf;
use std::sync::Arc;

use repdiff_api::jobs::Invalid;
use repdiff_engine::imaging::deid::DeidKey;

use crate::worker::Registry;

/// Settings job handlers share.
#[derive(Clone)]
pub struct JobSettings {
    /// Where pretrained weights live (the SD VAE that decodes latent samples).
    pub weights_dir: PathBuf,
    /// Folders `import` jobs may read scans from; none: import jobs are refused.
    pub import_roots: Vec<PathBuf>,
    /// The DICOM de-identification key (the server's, so pseudonyms match those of uploads).
    pub deid_key: Arc<DeidKey>,
    /// The memory one job may use ([`job_memory_limit`]).
    pub memory_limit: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            weights_dir: PathBuf::from("model-weights"),
            import_roots: Vec::new(),
            deid_key: Arc::new(DeidKey::generate()),
            memory_limit: job_memory_limit(),
        }
    }
}

/// Every job kind this build can run.
pub fn registry(settings: &JobSettings) -> Registry {
    let mut registry = Registry::new();
    registry
        .task("noop", noop::Noop)
        .task("encode", encode::Encode { weights_dir: settings.weights_dir.clone() })
        .task("import", import::Import { roots: settings.import_roots.clone(), deid_key: settings.deid_key.clone() })
        .task(
            "pretrain",
            train::Train { weights_dir: settings.weights_dir.clone(), memory_limit: settings.memory_limit },
        )
        .task(
            "finetune",
            finetune::Finetune { weights_dir: settings.weights_dir.clone(), memory_limit: settings.memory_limit },
        )
        .task(
            "classify",
            classify::Classify { weights_dir: settings.weights_dir.clone(), memory_limit: settings.memory_limit },
        )
        .task("counterfactual", counterfactual::Counterfactual { weights_dir: settings.weights_dir.clone() })
        .task("probe", probe::Probe { weights_dir: settings.weights_dir.clone() })
        .task("evaluate", evaluate::Evaluate { weights_dir: settings.weights_dir.clone() })
        .task("supervised", supervised::Supervised { weights_dir: settings.weights_dir.clone() })
        .task("sample", sample::Sample { weights_dir: settings.weights_dir.clone() })
        .task("reproduce", reproduce::Reproduce);
    registry
}

/// Checks a job's parameters as `kind`'s handler would, before it is queued.
pub fn validate(registry: &Registry, kind: &str, params: &serde_json::Value) -> Result<(), Invalid> {
    match registry.get(kind) {
        Some(handler) => handler.validate(params),
        None => Err(Invalid::new(
            "kind",
            format!("{kind:?} is not a kind this deployment runs; it runs {}", registry.kinds().join(", ")),
        )),
    }
}

/// The memory a worker may give one job: `REPDIFF_JOB_MEMORY_GIB` (a deployment whose workers have more
/// than the server, a GPU worker's card, sets it), else this machine's physical memory less a quarter
/// for everything else. A job whose estimate exceeds it is refused at submission with both numbers,
/// before anything is allocated: an allocation that fails aborts the process that makes it.
pub fn job_memory_limit() -> u64 {
    if let Some(gib) = std::env::var("REPDIFF_JOB_MEMORY_GIB").ok().and_then(|v| v.trim().parse::<f64>().ok())
        && gib.is_finite()
        && gib > 0.0
    {
        return (gib * (1u64 << 30) as f64) as u64;
    }
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines().find_map(|l| {
            l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    });
    // Without /proc (not Linux): 16 GiB.
    total_kib.map(|kib| kib * 1024 / 4 * 3).unwrap_or(16 << 30)
}

/// Refuses `what` when its estimated `bytes` exceed the deployment's `limit`.
pub(crate) fn admit(what: &str, bytes: u64, limit: u64) -> Result<(), String> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if bytes <= limit {
        return Ok(());
    }
    Err(format!(
        "{what} needs about {:.1} GiB of memory, more than the {:.1} GiB a job may use here (REPDIFF_JOB_MEMORY_GIB); \
         use a smaller batch, model or data set",
        gib(bytes),
        gib(limit)
    ))
}
