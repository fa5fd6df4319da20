//! `pretrain`: trains a DiT (unconditional unless asked otherwise, as the paper pre-trains) on a toy set or
//! a latent file from the store. Checkpoints go to the store every `checkpoint_every` steps under
//! `jobs/<id>/checkpoint.safetensors`; an attempt that finds one there resumes from it, so a job whose
//! worker died loses at most the steps since that checkpoint.

use repdiff_api::jobs::{Invalid, PretrainParams};
use repdiff_engine::config::{ConditioningKind, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::device::best_device;
use repdiff_engine::train::{StopReason, Trainer};

use super::checkpoint_eval::CheckpointEvaluator;
use super::inputs::{check_data, data_inputs, labelled_inputs, load_data, no_labels};
use crate::worker::{Input, JobContext, JobError, Task};

/// The run configuration of a pretrain spec for data of `num_classes` classes: unconditional unless the
/// spec asks for class conditioning.
fn config(spec: &PretrainParams, num_classes: usize) -> Result<RunConfig, String> {
    let mut run = super::inputs::overrides(&spec.run)?;
    run.conditioning.get_or_insert(ConditioningKind::None);
    run.resolve(num_classes).map_err(|e| e.to_string())
}

pub struct Train {
    pub weights_dir: std::path::PathBuf,
    /// The memory one job may use (see `jobs::job_memory_limit`).
    pub memory_limit: u64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

impl Task for Train {
    type Spec = PretrainParams;

    fn check(&self, p: &PretrainParams) -> Result<(), Invalid> {
        let config = config(p, 2).map_err(|e| Invalid::new("run", e))?;
        if matches!(p.data, repdiff_api::jobs::DataSource::Toy { .. }) && config.model.in_channels != 1 {
            return Err(Invalid::new(
                "data.toy",
                format!("the toy set is grey (1 channel) but the model takes {}", config.model.in_channels),
            ));
        }
        check_data("data", &p.data)?;
        if let Some(eval) = &p.eval {
            super::inputs::check_extractor("eval.extractor", eval.extractor, &self.weights_dir)?;
        }
        // Before what it reads is looked up: a run this deployment cannot hold is refused whatever its data.
        let data_bytes = match p.data {
            repdiff_api::jobs::DataSource::Toy { n, .. } => {
                (n * config.model.input_size * config.model.input_size * 4) as u64
            }
            _ => 0,
        };
        let batch = config.train.batch_size;
        let what = format!("training this model at batch {batch}");
        super::admit(&what, config.training_memory() + data_bytes, self.memory_limit)
            .map_err(|e| Invalid::new("run", e))
    }

    fn reads(&self, p: &PretrainParams) -> Vec<Input> {
        if p.run.conditioning == Some(repdiff_api::jobs::ConditioningKind::Class) {
            labelled_inputs(&p.data)
        } else {
            data_inputs(&p.data)
        }
    }

    fn run(&self, p: PretrainParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let (device, device_note) = best_device();
        let data = load_data(ctx, &p.data, &config(&p, 2).map_err(JobError::Permanent)?, &self.weights_dir, &device)?;
        let checkpoint_key = ctx.key(CHECKPOINT);
        let local = ctx.scratch.join(CHECKPOINT);
        let mut trainer = if ctx.exists(&checkpoint_key)? {
            ctx.fetch(&checkpoint_key, CHECKPOINT)?;
            let mut trainer = Trainer::resume(&local, &device)?;
            let wanted = config(&p, data.num_classes()).map_err(JobError::Permanent)?;
            trainer.config.train.steps = wanted.train.steps;
            trainer.config.train.checkpoint_every = wanted.train.checkpoint_every;
            ctx.log("info", &format!("resumed from the checkpoint at step {}", trainer.step()));
            trainer
        } else {
            let config = config(&p, data.num_classes()).map_err(JobError::Permanent)?;
            if config.model.num_classes().is_some() && data.labels.is_none() {
                return Err(no_labels("class conditioning needs labelled data; this data"));
            }
            let trainer = Trainer::new(config, &device)?;
            let m = &trainer.config.model;
            ctx.log(
                "info",
                &format!(
                    "training {}x{}x{} inputs, depth {} width {} patch {} ({:.2}M parameters) on {} samples, {device_note}",
                    m.in_channels,
                    m.input_size,
                    m.input_size,
                    m.depth,
                    m.hidden_size,
                    m.patch_size,
                    trainer.vars().num_parameters() as f64 / 1e6,
                    data.len()
                ),
            );
            trainer
        };

        let mut evaluator =
            p.eval.as_ref().map(|e| CheckpointEvaluator::new(e, &self.weights_dir, &device)).transpose()?;
        train_and_publish(ctx, &mut trainer, &data, &local, &checkpoint_key, evaluator.as_mut(), &device)
    }
}

/// Trains to the run's step count, publishing the checkpoint (`local`, stored under `checkpoint_key`)
/// every `checkpoint_every` steps and on cancellation, with progress and metrics; the job's result. With an
/// evaluator, the checkpoints at its steps are also measured (generation metrics at that step).
pub(super) fn train_and_publish(
    ctx: &mut JobContext,
    trainer: &mut Trainer,
    data: &Dataset,
    local: &std::path::Path,
    checkpoint_key: &str,
    mut evaluator: Option<&mut CheckpointEvaluator>,
    device: &repdiff_engine::Device,
) -> Result<serde_json::Value, JobError> {
    let total = trainer.config.train.steps;
    let every = trainer.config.train.checkpoint_every.max(1);
    if let Some(note) = trainer.bf16_note() {
        ctx.log("info", &note);
    }
    let started = std::time::Instant::now();
    let (start_step, mut first_loss, mut last_loss) = (trainer.step(), None, None);
    // A worker that died while measuring the checkpoint this attempt resumes from left that step
    // unmeasured: measure it before training on.
    if let Some(e) = evaluator.as_deref_mut()
        && start_step > 0
        && e.spec().due(start_step, total)
        && !ctx.has_metric(super::checkpoint_eval::COMPLETION_METRIC, start_step as u64)?
    {
        ctx.log("info", &format!("step {start_step} was not measured before the last attempt stopped; measuring it"));
        e.evaluate(ctx, local, data, (start_step, total), device)?;
    }
    while trainer.step() < total {
        // Train to the next checkpoint (or evaluation) boundary, then publish the checkpoint to the store.
        let mut until = ((trainer.step() / every + 1) * every).min(total);
        if let Some(e) = &evaluator {
            until = until.min(e.spec().next(trainer.step(), total));
        }
        let mut metric_error = None;
        let cancel = ctx.cancel.clone();
        let summary = trainer.run(data, until, Some(local), &cancel, |s| {
            first_loss.get_or_insert(s.loss);
            last_loss = Some(s.loss);
            let step = s.step as u64;
            for (name, value) in
                [("loss", s.loss as f64), ("mse", s.mse as f64), ("vb", s.vb as f64), ("grad_norm", s.grad_norm)]
            {
                if let Err(e) = ctx.metric(name, step, value) {
                    metric_error.get_or_insert(e);
                }
            }
            ctx.progress(step, total as u64, &format!("loss {:.4}", s.loss));
        })?;
        if let Some(e) = metric_error {
            return Err(e);
        }
        if summary.steps_run > 0 || summary.stop == StopReason::Cancelled {
            ctx.publish(
                local,
                CHECKPOINT,
                "checkpoint",
                "application/octet-stream",
                // The run's configuration: what a fine-tune of it needs is estimated from it at submission.
                serde_json::json!({ "step": trainer.step(), "total": total, "config": trainer.config }),
            )?;
        }
        if summary.stop == StopReason::Cancelled {
            ctx.log("info", &format!("stopped at step {}; the checkpoint holds every finished step", trainer.step()));
            return Err(JobError::Cancelled);
        }
        if let Some(e) = evaluator.as_deref_mut()
            && e.spec().due(trainer.step(), total)
        {
            e.evaluate(ctx, local, data, (trainer.step(), total), device)?;
        }
    }
    ctx.progress(total as u64, total as u64, "done");
    let seconds = started.elapsed().as_secs_f64();
    let steps_run = trainer.step() - start_step;
    Ok(serde_json::json!({
        "step": trainer.step(),
        "resumed_from": (start_step > 0).then_some(start_step),
        "steps_run": steps_run,
        "steps_per_second": steps_run as f64 / seconds.max(1e-9),
        "first_loss": first_loss,
        "last_loss": last_loss,
        "checkpoint": checkpoint_key,
        "config": trainer.config,
        "eval": evaluator.map(|e| e.summary()),
    }))
}
