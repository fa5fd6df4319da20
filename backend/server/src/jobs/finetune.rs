//! `finetune`: a class-conditional DiT started from a pre-trained checkpoint (unconditional or
//! representation-conditional) by the engine's transfer rules, then trained on labelled data. The
//! transfer table is logged and kept as the artifact `transfer.txt`; checkpoints and resumption work as in
//! `pretrain` (an attempt that finds its own checkpoint continues from it).

use repdiff_api::jobs::{FinetuneParams, Invalid};
use repdiff_engine::config::Conditioning;
use repdiff_engine::device::best_device;
use repdiff_engine::finetune;
use repdiff_engine::train::Trainer;

use super::checkpoint_eval::CheckpointEvaluator;
use super::inputs::{check_data, checkpoint_input, labelled_inputs, load_data, no_labels};
use super::train::train_and_publish;
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Finetune {
    pub weights_dir: std::path::PathBuf,
    /// The memory one job may use (see `jobs::job_memory_limit`).
    pub memory_limit: u64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

impl Task for Finetune {
    type Spec = FinetuneParams;

    fn check(&self, p: &FinetuneParams) -> Result<(), Invalid> {
        if let Some(eval) = &p.eval {
            super::inputs::check_extractor("eval.extractor", eval.extractor, &self.weights_dir)?;
        }
        check_data("data", &p.data)
    }

    fn admit(
        &self,
        p: &FinetuneParams,
        metas: &std::collections::HashMap<String, serde_json::Value>,
    ) -> Result<(), String> {
        // Checkpoints from before their configuration was recorded are not estimated.
        let Some(config) = metas.get(&p.from.key()).and_then(|m| m.get("config")) else { return Ok(()) };
        let Ok(mut config) = serde_json::from_value::<repdiff_engine::config::RunConfig>(config.clone()) else {
            return Ok(());
        };
        config.train.batch_size = p.run.batch_size.unwrap_or(config.train.batch_size);
        let batch = config.train.batch_size;
        super::admit(&format!("fine-tuning this model at batch {batch}"), config.training_memory(), self.memory_limit)
    }

    fn reads(&self, p: &FinetuneParams) -> Vec<Input> {
        [vec![checkpoint_input(&p.from)], labelled_inputs(&p.data)].concat()
    }

    fn run(&self, p: FinetuneParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let (device, device_note) = best_device();
        let pretrained = ctx.fetch(&p.from.key(), "pretrained.safetensors")?;
        let source = repdiff_engine::checkpoint::Checkpoint::read(&pretrained, &device)?.config()?;
        let data = load_data(ctx, &p.data, &source, &self.weights_dir, &device)?;
        let num_classes = data.num_classes();
        if data.labels.is_none() || num_classes == 0 {
            return Err(no_labels("fine-tuning needs labelled data; this data"));
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
            t.matmul_precision = r.matmul_precision.map_or(t.matmul_precision, super::inputs::matmul_precision);
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
