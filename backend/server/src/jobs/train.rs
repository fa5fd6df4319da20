//! `pretrain`: trains a DiT (unconditional unless asked otherwise, as the paper pre-trains) on a toy set or
//! a latent file from the store. Checkpoints go to the store every `checkpoint_every` steps under
//! `jobs/<id>/checkpoint.safetensors`; an attempt that finds one there resumes from it, so a job whose
//! worker died loses at most the steps since that checkpoint.

use repdiff_engine::autoencoder::{self, Posterior};
use repdiff_engine::config::{ConditioningKind, DataSpace, Overrides, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::device::best_device;
use repdiff_engine::imaging::{Channels, Window};
use repdiff_engine::latent_cache::EncodeSpec;
use repdiff_engine::train::{StopReason, Trainer};
use serde::{Deserialize, Serialize};

use super::checkpoint_eval::{CheckpointEval, CheckpointEvaluator};
use crate::worker::{Handler, Input, JobContext, JobError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// The run: a preset and overrides (`{"preset": "tiny-cpu", "steps": 500}`).
    #[serde(default)]
    pub run: Overrides,
    pub data: DataSource,
    /// Generation metrics of the checkpoints as the run trains (none by default).
    #[serde(default)]
    pub eval: Option<CheckpointEval>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// The two-class toy set (horizontal vs vertical bars), grey, at the model's input size.
    Toy {
        n: usize,
        #[serde(default)]
        seed: u64,
    },
    /// A latent file in the store (`latents` [N, C, H, W], optional `labels`), as `repdiff encode` writes.
    Latents { key: String },
    /// A dataset's slices (labels: hematoma or not), or one part of its split, through a CT window
    /// (default brain), at the model's input size; encoded by the run's autoencoder when it works on
    /// latents.
    Dataset {
        id: i64,
        #[serde(default)]
        window: Option<String>,
        /// One part of the paper's split of the dataset (pre-training, train, validation or test); all
        /// slices when absent.
        #[serde(default)]
        split: Option<super::encode::SplitSpec>,
    },
}

impl TrainParams {
    /// The run configuration for data of `num_classes` classes: unconditional unless the job asks for
    /// class conditioning.
    fn config(&self, num_classes: usize) -> repdiff_engine::Result<RunConfig> {
        let mut run = self.run.clone();
        run.conditioning.get_or_insert(ConditioningKind::None);
        run.resolve(num_classes)
    }
}

pub struct Train {
    pub weights_dir: std::path::PathBuf,
    /// The memory one job may use (see `jobs::job_memory_limit`).
    pub memory_limit: u64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

impl Handler for Train {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: TrainParams = super::parse("pretrain", params)?;
        let config = p.config(2).map_err(|e| e.to_string())?;
        if matches!(p.data, DataSource::Toy { .. }) && config.model.in_channels != 1 {
            return Err(format!("the toy set is grey (1 channel) but the model takes {}", config.model.in_channels));
        }
        validate_data(&p.data)?;
        let data_bytes = match p.data {
            DataSource::Toy { n, .. } => (n * config.model.input_size * config.model.input_size * 4) as u64,
            _ => 0,
        };
        let batch = config.train.batch_size;
        super::admit(
            &format!("training this model at batch {batch}"),
            config.training_memory() + data_bytes,
            self.memory_limit,
        )?;
        if let Some(eval) = &p.eval {
            eval.check(&self.weights_dir)?;
        }
        validate_data(&p.data)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        serde_json::from_value::<TrainParams>(params.clone()).map(|p| data_inputs(&p.data)).unwrap_or_default()
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: TrainParams = ctx.params()?;
        let (device, device_note) = best_device();
        let data = load_data(ctx, &p.data, &p.config(2)?, &self.weights_dir, &device)?;
        let checkpoint_key = ctx.key(CHECKPOINT);
        let local = ctx.scratch.join(CHECKPOINT);
        let mut trainer = if ctx.exists(&checkpoint_key)? {
            ctx.fetch(&checkpoint_key, CHECKPOINT)?;
            let mut trainer = Trainer::resume(&local, &device)?;
            let wanted = p.config(data.num_classes())?;
            trainer.config.train.steps = wanted.train.steps;
            trainer.config.train.checkpoint_every = wanted.train.checkpoint_every;
            ctx.log("info", &format!("resumed from the checkpoint at step {}", trainer.step()));
            trainer
        } else {
            let config = p.config(data.num_classes())?;
            if config.model.num_classes().is_some() && data.labels.is_none() {
                return Err(JobError::Permanent(
                    "class conditioning needs labelled data; this data has no labels".into(),
                ));
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

/// The training data a job names, in the space of `config`'s model (a dataset is windowed and encoded by
/// the run's autoencoder at the model's input size).
pub(super) fn load_data(
    ctx: &mut JobContext,
    source: &DataSource,
    config: &RunConfig,
    weights_dir: &std::path::Path,
    device: &repdiff_engine::Device,
) -> Result<Dataset, JobError> {
    Ok(match source {
        DataSource::Toy { n, seed } => Dataset::toy_bars(*n, config.model.input_size, *seed, device)?,
        DataSource::Latents { key } => {
            let local = ctx.fetch(key, "data.safetensors")?;
            Dataset::from_latent_file(&local, device)?
        }
        DataSource::Dataset { id, window, split } => {
            let window = Window::parse(window.as_deref().unwrap_or("brain"))?;
            let (name, copies) = match &config.data_space {
                DataSpace::Pixels => ("pixels".to_string(), config.model.in_channels),
                DataSpace::Latents { autoencoder, .. } => (autoencoder.clone(), 3),
            };
            let encoder = autoencoder::by_name(&name, copies, weights_dir, device)?;
            let spec = EncodeSpec {
                channels: Channels::Window { window, copies },
                // The image side whose latent is the model's input (x8 for the SD VAE, x1 in pixels).
                size: config.model.input_size * (64 / encoder.latent_dims(64).1.max(1)),
                posterior: Posterior::Mean,
                seed: config.train.seed,
                part: split.as_ref().map(|s| s.part),
                batch_size: 16,
            };
            let local = super::encode::encode_scans(ctx, *id, split.as_ref(), &spec, encoder.as_ref(), device)?;
            Dataset::from_latent_file(&local, device)?
        }
    })
}

/// Checks a data source's own parameters.
pub(super) fn validate_data(data: &DataSource) -> Result<(), String> {
    match data {
        DataSource::Toy { n, .. } => super::within("the toy set's n", *n, 1, 1_000_000),
        DataSource::Latents { key } if key.is_empty() => Err("data.latents.key is empty".into()),
        DataSource::Dataset { window: Some(w), .. } => Window::parse(w).map(|_| ()).map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

/// What a data source reads from the store or the datasets.
pub(super) fn data_inputs(data: &DataSource) -> Vec<Input> {
    match data {
        DataSource::Latents { key } => vec![Input::Artifact(key.clone())],
        DataSource::Dataset { id, .. } => vec![Input::Dataset(*id)],
        DataSource::Toy { .. } => Vec::new(),
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
