//! Every job kind's parameters as a type: what `POST /api/v1/jobs` accepts, what the browser's launch
//! forms build and the CLI's flags map onto, with the checks of each field beside it (one place for the
//! server, the CLI and the browser). The OpenAPI document shows every kind's parameters.
//!
//! A spec's `validate` checks what can be known from the spec alone (ranges, names, combinations) and
//! names the field at fault; the server adds what depends on the deployment (weights present, memory,
//! what the caller may read).

mod data;
mod inference;
mod reproduce;
mod shared;
mod training;

pub use data::{AUTOENCODERS, EncodeParams, ImportParams, PosteriorArg};
pub use inference::{
    ARCHITECTURES, ClassifyParams, CounterfactualParams, DINO_PATCH, EvaluateParams, Features, ModelToEvaluate,
    NoopParams, ProbeParams, Rule, SampleParams, Score, Stopping, SupervisedParams,
};
pub use reproduce::ReproduceParams;
pub use shared::{
    CheckpointRef, ConditioningKind, DataSource, ExtractorChoice, Invalid, MAX_BATCH, MAX_SITE, MAX_STEPS,
    MatmulPrecision, PRESETS, Part, RunOverrides, Sampler, SplitSpec, SplitUnit, check_model_name,
    default_sampling_steps,
};
pub use training::{CheckpointEval, FinetuneParams, FinetuneRun, PretrainParams};

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// A job: its kind and that kind's parameters (`{"kind": "sample", "params": {...}}`; `params` may be left
/// out where every field has a default).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(tag = "kind", content = "params", rename_all = "snake_case")]
pub enum JobSpec {
    Noop(NoopParams),
    Import(ImportParams),
    Encode(EncodeParams),
    Pretrain(PretrainParams),
    Finetune(FinetuneParams),
    Sample(SampleParams),
    Counterfactual(CounterfactualParams),
    Classify(ClassifyParams),
    Evaluate(EvaluateParams),
    Probe(ProbeParams),
    Supervised(SupervisedParams),
    Reproduce(ReproduceParams),
}

/// Every kind, in the order of a pipeline.
pub const JOB_KINDS: [&str; 12] = [
    "import",
    "encode",
    "pretrain",
    "finetune",
    "sample",
    "counterfactual",
    "classify",
    "evaluate",
    "probe",
    "supervised",
    "reproduce",
    "noop",
];

impl JobSpec {
    /// The spec of a job of `kind` with `params` (a JSON object; `null` reads as `{}`), or why not: an
    /// unknown kind, or parameters that do not parse (a misspelt field included).
    pub fn from_parts(kind: &str, params: serde_json::Value) -> Result<JobSpec, String> {
        let params = if params.is_null() { serde_json::Value::Object(Default::default()) } else { params };
        fn parse<T: serde::de::DeserializeOwned>(
            kind: &str,
            params: serde_json::Value,
            wrap: fn(T) -> JobSpec,
        ) -> Result<JobSpec, String> {
            serde_json::from_value(params).map(wrap).map_err(|e| format!("invalid parameters for a {kind} job: {e}"))
        }
        match kind {
            "noop" => parse(kind, params, JobSpec::Noop),
            "import" => parse(kind, params, JobSpec::Import),
            "encode" => parse(kind, params, JobSpec::Encode),
            "pretrain" => parse(kind, params, JobSpec::Pretrain),
            "finetune" => parse(kind, params, JobSpec::Finetune),
            "sample" => parse(kind, params, JobSpec::Sample),
            "counterfactual" => parse(kind, params, JobSpec::Counterfactual),
            "classify" => parse(kind, params, JobSpec::Classify),
            "evaluate" => parse(kind, params, JobSpec::Evaluate),
            "probe" => parse(kind, params, JobSpec::Probe),
            "supervised" => parse(kind, params, JobSpec::Supervised),
            "reproduce" => parse(kind, params, JobSpec::Reproduce),
            other => Err(format!("unknown job kind {other:?}; expected one of {}", JOB_KINDS.join(", "))),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Noop(_) => "noop",
            JobSpec::Import(_) => "import",
            JobSpec::Encode(_) => "encode",
            JobSpec::Pretrain(_) => "pretrain",
            JobSpec::Finetune(_) => "finetune",
            JobSpec::Sample(_) => "sample",
            JobSpec::Counterfactual(_) => "counterfactual",
            JobSpec::Classify(_) => "classify",
            JobSpec::Evaluate(_) => "evaluate",
            JobSpec::Probe(_) => "probe",
            JobSpec::Supervised(_) => "supervised",
            JobSpec::Reproduce(_) => "reproduce",
        }
    }

    /// The parameters as the job stores them: every field, defaults filled in, absent options left out.
    pub fn params(&self) -> serde_json::Value {
        let mut value = match self {
            JobSpec::Noop(p) => serde_json::to_value(p),
            JobSpec::Import(p) => serde_json::to_value(p),
            JobSpec::Encode(p) => serde_json::to_value(p),
            JobSpec::Pretrain(p) => serde_json::to_value(p),
            JobSpec::Finetune(p) => serde_json::to_value(p),
            JobSpec::Sample(p) => serde_json::to_value(p),
            JobSpec::Counterfactual(p) => serde_json::to_value(p),
            JobSpec::Classify(p) => serde_json::to_value(p),
            JobSpec::Evaluate(p) => serde_json::to_value(p),
            JobSpec::Probe(p) => serde_json::to_value(p),
            JobSpec::Supervised(p) => serde_json::to_value(p),
            JobSpec::Reproduce(p) => serde_json::to_value(p),
        }
        // Plain data with string keys and finite numbers (validated) always serializes.
        .unwrap_or_default();
        drop_nulls(&mut value);
        value
    }

    /// Checks every field of the spec; the first problem names its field.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            JobSpec::Noop(p) => p.validate(),
            JobSpec::Import(p) => p.validate(),
            JobSpec::Encode(p) => p.validate(),
            JobSpec::Pretrain(p) => p.validate(),
            JobSpec::Finetune(p) => p.validate(),
            JobSpec::Sample(p) => p.validate(),
            JobSpec::Counterfactual(p) => p.validate(),
            JobSpec::Classify(p) => p.validate(),
            JobSpec::Evaluate(p) => p.validate(),
            JobSpec::Probe(p) => p.validate(),
            JobSpec::Supervised(p) => p.validate(),
            JobSpec::Reproduce(p) => p.validate(),
        }
    }
}

/// Drops `null` members of objects, recursively: an absent option is left out rather than stored as null.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

impl<'de> Deserialize<'de> for JobSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // By hand rather than derived: `params` may be left out, and an unknown kind or a misspelt field
        // gets a message that names the kind.
        #[derive(Deserialize)]
        struct Parts {
            kind: String,
            #[serde(default)]
            params: serde_json::Value,
        }
        let parts = Parts::deserialize(deserializer)?;
        JobSpec::from_parts(&parts.kind, parts.params).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
