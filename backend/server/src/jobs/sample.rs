//! `sample`: draws samples from a checkpoint in the store and publishes them: a PNG per sample (kind
//! `sample_image`, with its index and class), `grid.png`, and `samples.safetensors`. With `frames`, also
//! the trajectory of every sample (kind `trajectory`): its x0 predictions at that many steps.

use repdiff_engine::device::best_device;
use repdiff_engine::diffusion::SamplerKind;
use repdiff_engine::explain::{trajectory, write_trajectory};
use repdiff_engine::sample::{SampleOptions, Weights, load_model, sample, write_samples};
use serde::{Deserialize, Serialize};

use crate::worker::{Handler, Input, JobContext, JobError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointRef {
    /// The checkpoint of a training job.
    Job(i64),
    /// Any checkpoint artifact by key.
    Key(String),
}

impl CheckpointRef {
    pub fn key(&self) -> String {
        match self {
            CheckpointRef::Job(id) => format!("jobs/{id}/checkpoint.safetensors"),
            CheckpointRef::Key(key) => key.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    Ddpm,
    #[default]
    Ddim,
}

impl Sampler {
    /// The engine's sampler and respacing for `steps` steps (`eta`: DDIM's noise scale).
    pub fn kind(self, steps: usize, eta: f64) -> (SamplerKind, String) {
        match self {
            Sampler::Ddpm => (SamplerKind::Ddpm, steps.to_string()),
            Sampler::Ddim => (SamplerKind::Ddim { eta }, format!("ddim{steps}")),
        }
    }
}

fn default_num() -> usize {
    16
}
/// The sampling defaults every job that samples shares: no guidance, 50 steps.
pub(super) fn default_guidance() -> f64 {
    1.0
}
pub(super) fn default_steps() -> usize {
    50
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleParams {
    pub checkpoint: CheckpointRef,
    #[serde(default = "default_num")]
    pub num: usize,
    /// Classes cycled over the samples; empty: every class in turn (class-conditional models).
    #[serde(default)]
    pub classes: Vec<u32>,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    #[serde(default)]
    pub sampler: Sampler,
    /// Denoising steps, respaced from the trained T.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// DDIM stochasticity (0: deterministic).
    #[serde(default)]
    pub eta: f64,
    #[serde(default)]
    pub seed: u64,
    /// Use the raw weights instead of their EMA.
    #[serde(default)]
    pub raw_weights: bool,
    /// Reference images for a representation-conditional model (sample i is a variation of reference
    /// i, cycled): a dataset or a latent file, as a pretrain job's `data`.
    #[serde(default)]
    pub references: Option<super::train::DataSource>,
    /// Also record each sample's x0 predictions at this many evenly spaced steps (the paper's Fig. 11).
    #[serde(default)]
    pub frames: Option<usize>,
}

pub struct Sample {
    pub weights_dir: std::path::PathBuf,
}

impl Handler for Sample {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: SampleParams = super::parse("sample", params)?;
        if p.num == 0 || p.num > 10_000 {
            return Err("num must be between 1 and 10000".into());
        }
        if p.steps == 0 || p.steps > 1000 {
            return Err("steps must be between 1 and 1000".into());
        }
        if !(p.guidance.is_finite() && p.guidance >= 0.0 && (0.0..=1.0).contains(&p.eta)) {
            return Err("guidance must be >= 0 and eta in [0, 1]".into());
        }
        if let Some(frames) = p.frames {
            if !(2..=64).contains(&frames) {
                return Err("frames is 2 to 64".into());
            }
            if p.references.is_some() {
                return Err(
                    "trajectories are drawn without references (unconditional or class-conditional models)".into()
                );
            }
        }
        p.references.as_ref().map_or(Ok(()), super::train::validate_data)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        match serde_json::from_value::<SampleParams>(params.clone()) {
            Ok(p) => {
                let refs = p.references.as_ref().map(super::train::data_inputs).unwrap_or_default();
                [vec![Input::Artifact(p.checkpoint.key())], refs].concat()
            }
            Err(_) => Vec::new(),
        }
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: SampleParams = ctx.params()?;
        let (device, _) = best_device();
        let key = p.checkpoint.key();
        let local = ctx.fetch(&key, "checkpoint.safetensors")?;
        let (from_job, step) = checkpoint_origin(ctx, &key)?;
        let weights = if p.raw_weights { Weights::Raw } else { Weights::Ema };
        let (model, config) = load_model(&local, weights, &device)?;
        if p.steps > config.diffusion.num_timesteps {
            return Err(JobError::Permanent(format!(
                "steps must be at most the model's {} diffusion steps",
                config.diffusion.num_timesteps
            )));
        }
        let (sampler, respacing) = p.sampler.kind(p.steps, p.eta);
        let options = SampleOptions {
            num_samples: p.num,
            labels: (!p.classes.is_empty()).then(|| p.classes.clone()),
            guidance_scale: p.guidance,
            sampler,
            respacing,
            seed: p.seed,
            batch_size: 16,
            clip_denoised: None,
            cancel: ctx.cancel.clone(),
            references: match &p.references {
                Some(source) => {
                    let data = super::train::load_data(ctx, source, &config, &self.weights_dir, &device)?;
                    Some(data.samples)
                }
                None if config.model.is_representation() => {
                    return Err(JobError::Permanent(
                        "a representation-conditional model samples variations of reference images: give references"
                            .into(),
                    ));
                }
                None => None,
            },
        };
        let (samples, labels, trajectory_grid) = match p.frames {
            None => {
                let (samples, labels) = sample(&model, &config, &options, &device, |done, total| {
                    ctx.progress(done as u64, total as u64, "denoising");
                })?;
                (samples, labels, None)
            }
            Some(frames) => {
                let traj = trajectory(&model, &config, &options, frames, &device, |done, total| {
                    ctx.progress(done as u64, total as u64, "denoising");
                })?;
                let (_, grid, _) =
                    write_trajectory(&traj, &config, &self.weights_dir, &ctx.scratch.join("trajectory"))?;
                let meta =
                    serde_json::json!({ "timesteps": traj.timesteps, "from_job": from_job, "checkpoint_step": step });
                let grid = ctx.publish(&grid, "trajectory.png", "trajectory", "image/png", meta)?;
                (traj.samples, traj.labels, Some(grid))
            }
        };
        let out = ctx.scratch.join("samples");
        let written = write_samples(&samples, labels.as_deref(), &config, &self.weights_dir, &out)?;
        if let Some(note) = &written.note {
            ctx.log("warn", note);
        }
        for (index, (path, class)) in written.images.iter().enumerate() {
            let name = format!("samples/{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("sample.png"));
            ctx.publish(
                path,
                &name,
                "sample_image",
                "image/png",
                serde_json::json!({ "index": index, "class": class, "from_job": from_job, "checkpoint_step": step }),
            )?;
        }
        let grid = match &written.grid {
            Some(path) => Some(ctx.publish(path, "grid.png", "grid", "image/png", serde_json::json!({}))?),
            None => None,
        };
        let tensors = ctx.publish(
            &written.tensors,
            "samples.safetensors",
            "samples",
            "application/octet-stream",
            serde_json::json!({ "num": p.num }),
        )?;
        Ok(serde_json::json!({
            "num": written.images.len(),
            "labels": labels,
            "grid": grid,
            "trajectory": trajectory_grid,
            "tensors": tensors,
            "decoded": written.note.is_none(),
        }))
    }
}

/// The training job that published checkpoint `key` and the step it was at, for the gallery's filters
/// (none for a checkpoint uploaded by other means).
pub(super) fn checkpoint_origin(ctx: &JobContext, key: &str) -> Result<(Option<i64>, Option<i64>), JobError> {
    let source = ctx.block_on(
        sqlx::query!(r#"SELECT job_id, (meta->>'step')::bigint AS step FROM artifacts WHERE key = $1"#, key)
            .fetch_optional(ctx.pool()),
    )?;
    Ok(source.map_or((None, None), |s| (s.job_id, s.step)))
}
