//! `probe`: the linear-probe baseline of the paper's Table 6 as a job. Logistic regression on a
//! representation model's mean-pooled encoder tokens, fitted on `train`, its L2 strength chosen on
//! `validation` (best F1), the `test` metrics with bootstrap 95% intervals in the result.

use repdiff_engine::classify::{bootstrap, metrics};
use repdiff_engine::device::best_device;
use repdiff_engine::probe::{LAMBDAS, choose, encoder_features};
use repdiff_engine::sample::{Weights, load_model};
use serde::{Deserialize, Serialize};

use super::sample::CheckpointRef;
use super::train::{DataSource, data_inputs, load_data, validate_data};
use crate::worker::{Handler, Input, JobContext, JobError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeParams {
    /// A representation-conditional checkpoint (a `pretrain` job with `"conditioning": "representation"`).
    pub checkpoint: CheckpointRef,
    pub train: DataSource,
    pub validation: DataSource,
    #[serde(default)]
    pub test: Option<DataSource>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub raw_weights: bool,
}

pub struct Probe {
    pub weights_dir: std::path::PathBuf,
}

impl Handler for Probe {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: ProbeParams = super::parse("probe", params)?;
        validate_data(&p.train)?;
        validate_data(&p.validation)?;
        p.test.as_ref().map_or(Ok(()), validate_data)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        match serde_json::from_value::<ProbeParams>(params.clone()) {
            Ok(p) => {
                let mut inputs = vec![Input::Artifact(p.checkpoint.key())];
                for source in [Some(&p.train), Some(&p.validation), p.test.as_ref()].into_iter().flatten() {
                    inputs.extend(data_inputs(source));
                }
                inputs
            }
            Err(_) => Vec::new(),
        }
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: ProbeParams = ctx.params()?;
        let (device, device_note) = best_device();
        let local = ctx.fetch(&p.checkpoint.key(), "checkpoint.safetensors")?;
        let weights = if p.raw_weights { Weights::Raw } else { Weights::Ema };
        let (model, config) = load_model(&local, weights, &device)?;
        if !config.model.is_representation() {
            return Err(JobError::Permanent(
                "the probe reads a representation encoder: give a representation-conditional pre-training".into(),
            ));
        }
        let features = |ctx: &mut JobContext, source: &DataSource, what: &str| -> Result<_, JobError> {
            let data = load_data(ctx, source, &config, &self.weights_dir, &device)?;
            let labels =
                data.labels.clone().ok_or_else(|| JobError::Permanent(format!("the {what} data has no labels")))?;
            Ok((encoder_features(&model, &data.samples, 64)?, labels))
        };
        let train = features(ctx, &p.train, "training")?;
        let validation = features(ctx, &p.validation, "validation")?;
        let classes = train.1.iter().chain(&validation.1).max().map_or(0, |&m| m as usize + 1).max(2);
        ctx.log(
            "info",
            &format!(
                "probing {} encoder features on {} training and {} validation images, {device_note}",
                train.0.first().map_or(0, Vec::len),
                train.1.len(),
                validation.1.len()
            ),
        );
        let (probe, val) = choose((&train.0, &train.1), (&validation.0, &validation.1), classes, &LAMBDAS)?;
        ctx.log("info", &format!("lambda {} chosen on validation (F1 {:.3})", probe.lambda, val.f1));
        let test = match &p.test {
            Some(source) => {
                let (x, y) = features(ctx, source, "test")?;
                let predicted = probe.predict(&x);
                let m = metrics(&y, &predicted, classes)?;
                let intervals = bootstrap(&y, &predicted, classes, 1000, 0.95, p.seed)?;
                ctx.log("info", &format!("test: accuracy {:.3}, F1 {:.3}", m.accuracy, m.f1));
                Some(serde_json::json!({ "metrics": m, "intervals": intervals, "predicted": predicted }))
            }
            None => None,
        };
        Ok(serde_json::json!({ "lambda": probe.lambda, "validation": val, "test": test }))
    }
}
