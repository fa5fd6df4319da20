//! `finetune`: a class-conditional DiT started from a pre-trained checkpoint (unconditional or
//! representation-conditional) by the engine's transfer rules, then trained on labelled data. The
//! transfer table is logged and kept as the artifact `transfer.txt`; checkpoints and resumption work as in
//! `pretrain` (an attempt that finds its own checkpoint continues from it).

use repdiff_engine::config::Conditioning;
use repdiff_engine::device::best_device;
use repdiff_engine::finetune;
use repdiff_engine::train::Trainer;
use serde::{Deserialize, Serialize};

use super::checkpoint_eval::{CheckpointEval, CheckpointEvaluator};
use super::sample::CheckpointRef;
use super::train::{DataSource, data_inputs, load_data, train_and_publish, validate_data};
use crate::worker::{Handler, Input, JobContext, JobError};

/// The fine-tune's training settings; unset ones are the pre-training's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneRun {
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<usize>,
    /// `highest` (f32) or `bf16` CPU matrix products.
    pub matmul_precision: Option<repdiff_engine::ops::MatmulPrecision>,
}

fn default_dropout() -> f64 {
    0.1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
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

pub struct Finetune {
    pub weights_dir: std::path::PathBuf,
    /// The memory one job may use (see `jobs::job_memory_limit`).
    pub memory_limit: u64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

impl Handler for Finetune {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: FinetuneParams = super::parse("finetune", params)?;
        if !(0.0..1.0).contains(&p.label_dropout) {
            return Err("label_dropout must be in [0, 1)".into());
        }
        let r = &p.run;
        use repdiff_engine::config::{MAX_BATCH, MAX_STEPS};
        for (name, value, max) in [
            ("steps", r.steps, MAX_STEPS),
            ("batch_size", r.batch_size, MAX_BATCH),
            ("checkpoint_every", r.checkpoint_every, MAX_STEPS),
        ] {
            if let Some(v) = value {
                super::within(name, v, 1, max)?;
            }
        }
        if let Some(lr) = r.learning_rate {
            super::finite_within("learning_rate", lr, f64::MIN_POSITIVE, 1.0)?;
        }
        if let Some(eval) = &p.eval {
            eval.check(&self.weights_dir)?;
        }
        validate_data(&p.data)
    }

    fn admit(
        &self,
        params: &serde_json::Value,
        metas: &std::collections::HashMap<String, serde_json::Value>,
    ) -> Result<(), String> {
        let p: FinetuneParams = super::parse("finetune", params)?;
        // Checkpoints from before their configuration was recorded are not estimated.
        let Some(config) = metas.get(&p.from.key()).and_then(|m| m.get("config")) else { return Ok(()) };
        let Ok(mut config) = serde_json::from_value::<repdiff_engine::config::RunConfig>(config.clone()) else {
            return Ok(());
        };
        config.train.batch_size = p.run.batch_size.unwrap_or(config.train.batch_size);
        let batch = config.train.batch_size;
        super::admit(&format!("fine-tuning this model at batch {batch}"), config.training_memory(), self.memory_limit)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        match serde_json::from_value::<FinetuneParams>(params.clone()) {
            Ok(p) => [vec![Input::Artifact(p.from.key())], data_inputs(&p.data)].concat(),
            Err(_) => Vec::new(),
        }
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: FinetuneParams = ctx.params()?;
        let (device, device_note) = best_device();
        let pretrained = ctx.fetch(&p.from.key(), "pretrained.safetensors")?;
        let source = repdiff_engine::checkpoint::Checkpoint::read(&pretrained, &device)?.config()?;
        let data = load_data(ctx, &p.data, &source, &self.weights_dir, &device)?;
        let num_classes = data.num_classes();
        if data.labels.is_none() || num_classes == 0 {
            return Err(JobError::Permanent("fine-tuning needs labelled data; this data has no labels".into()));
        }
        let checkpoint_key = ctx.key(CHECKPOINT);
        let local = ctx.scratch.join(CHECKPOINT);
        let mut transfer_counts = None;
        let mut trainer = if ctx.exists(&checkpoint_key)? {
            ctx.fetch(&checkpoint_key, CHECKPOINT)?;
            let trainer = Trainer::resume(&local, &device)?;
            ctx.log("info", &format!("resumed from the checkpoint at step {}", trainer.step()));
            trainer
        } else {
            let mut config = source.clone();
            config.model.conditioning = Conditioning::Class { num_classes, dropout_prob: p.label_dropout };
            let (r, t) = (&p.run, &mut config.train);
            t.steps = r.steps.unwrap_or(t.steps);
            t.batch_size = r.batch_size.unwrap_or(t.batch_size);
            t.learning_rate = r.learning_rate.unwrap_or(t.learning_rate);
            t.seed = r.seed.unwrap_or(t.seed);
            t.checkpoint_every = r.checkpoint_every.unwrap_or(t.checkpoint_every);
            t.matmul_precision = r.matmul_precision.unwrap_or(t.matmul_precision);
            config.validate().map_err(|e| JobError::Permanent(e.to_string()))?;
            let (transfer, _) =
                finetune::from_checkpoint(&pretrained, &config.model, config.train.seed, p.raw_weights, &device)
                    .map_err(|e| JobError::Permanent(e.to_string()))?;
            let table = transfer.table.to_string();
            ctx.log(
                "info",
                &format!(
                    "fine-tuning a {num_classes}-class model from {:?} ({device_note}): {}",
                    source.model.conditioning,
                    table.lines().last().unwrap_or_default()
                ),
            );
            let report = ctx.scratch.join("transfer.txt");
            std::fs::write(&report, format!("{table}\n")).map_err(|e| JobError::Retryable(e.to_string()))?;
            let t = &transfer.table;
            let counts = serde_json::json!({
                "loaded": t.count("loaded"), "reshaped": t.count("reshaped"),
                "dropped": t.count("dropped"), "new": t.count("new"),
            });
            ctx.publish(&report, "transfer.txt", "report", "text/plain; charset=utf-8", counts.clone())?;
            transfer_counts = Some(counts);
            Trainer::from_weights(config, transfer.weights, &device)?
        };
        let mut evaluator =
            p.eval.as_ref().map(|e| CheckpointEvaluator::new(e, &self.weights_dir, &device)).transpose()?;
        let mut result =
            train_and_publish(ctx, &mut trainer, &data, &local, &checkpoint_key, evaluator.as_mut(), &device)?;
        result["from"] = serde_json::json!(p.from.key());
        if let Some(counts) = transfer_counts {
            result["transfer"] = counts;
        }
        Ok(result)
    }
}
