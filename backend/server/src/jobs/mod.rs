//! Job kinds: thin adapters from a job's JSON parameters to the engine. Each kind's parameters are a serde
//! type with `deny_unknown_fields`, so a misspelt field is an error at submission, not a silent default.

mod checkpoint_eval;
mod classify;
mod counterfactual;
mod encode;
mod evaluate;
mod finetune;
mod import;
mod noop;
mod probe;
mod reproduce;
mod sample;
mod supervised;
mod train;

pub use checkpoint_eval::CheckpointEval;
pub use encode::{EncodeParams, SplitSpec};
pub use evaluate::ExtractorChoice;
pub use import::ImportParams;
pub use noop::NoopParams;
pub use reproduce::ReproduceParams;
pub use sample::{CheckpointRef, SampleParams};
pub use train::{DataSource, TrainParams};

use std::path::PathBuf;
use std::sync::Arc;

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
    /// The `repdiff` binary that `reproduce` jobs run the pipeline with (this process's own by default).
    pub exe: PathBuf,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            weights_dir: PathBuf::from("model-weights"),
            import_roots: Vec::new(),
            deid_key: Arc::new(DeidKey::generate()),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("repdiff")),
        }
    }
}

/// Every job kind this build can run.
pub fn registry(settings: &JobSettings) -> Registry {
    let mut registry = Registry::new();
    registry
        .register("noop", noop::Noop)
        .register("encode", encode::Encode { weights_dir: settings.weights_dir.clone() })
        .register(
            "import",
            import::Import { roots: settings.import_roots.clone(), deid_key: settings.deid_key.clone() },
        )
        .register("pretrain", train::Train { weights_dir: settings.weights_dir.clone() })
        .register("finetune", finetune::Finetune { weights_dir: settings.weights_dir.clone() })
        .register("classify", classify::Classify { weights_dir: settings.weights_dir.clone() })
        .register("counterfactual", counterfactual::Counterfactual { weights_dir: settings.weights_dir.clone() })
        .register("probe", probe::Probe { weights_dir: settings.weights_dir.clone() })
        .register("evaluate", evaluate::Evaluate { weights_dir: settings.weights_dir.clone() })
        .register("supervised", supervised::Supervised { weights_dir: settings.weights_dir.clone() })
        .register("sample", sample::Sample { weights_dir: settings.weights_dir.clone() })
        .register(
            "reproduce",
            reproduce::Reproduce { weights_dir: settings.weights_dir.clone(), exe: settings.exe.clone() },
        );
    registry
}

/// Checks a job's parameters as `kind`'s handler would, before it is queued.
pub fn validate(registry: &Registry, kind: &str, params: &serde_json::Value) -> Result<(), String> {
    match registry.get(kind) {
        Some(handler) => handler.validate(params),
        None => Err(format!("unknown job kind {kind:?}; expected one of {}", registry.kinds().join(", "))),
    }
}

/// Parses parameters into `T`, with the message the API returns.
fn parse<T: serde::de::DeserializeOwned>(kind: &str, params: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(params.clone()).map_err(|e| format!("invalid parameters for a {kind} job: {e}"))
}
