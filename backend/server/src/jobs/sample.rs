//! `sample`: draws samples from a checkpoint in the store and publishes them: a PNG per sample (kind
//! `sample_image`, with its index and class), `grid.png`, and `samples.safetensors`. With `frames`, also
//! the trajectory of every sample (kind `trajectory`): its x0 predictions at that many steps.

use repdiff_api::jobs::{Invalid, SampleParams};
use repdiff_engine::device::best_device;
use repdiff_engine::explain::{trajectory, write_trajectory};
use repdiff_engine::sample::{SampleOptions, Weights, load_model, sample, write_samples};

use super::inputs::{check_data, checkpoint_input, checkpoint_origin, data_inputs, load_data, sampler_kind};
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Sample {
    pub weights_dir: std::path::PathBuf,
}

impl Task for Sample {
    type Spec = SampleParams;

    fn check(&self, p: &SampleParams) -> Result<(), Invalid> {
        p.references.as_ref().map_or(Ok(()), |references| check_data("references", references))
    }

    fn reads(&self, p: &SampleParams) -> Vec<Input> {
        let references = p.references.as_ref().map(data_inputs).unwrap_or_default();
        [vec![checkpoint_input(&p.checkpoint)], references].concat()
    }

    fn run(&self, p: SampleParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
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
        let (sampler, respacing) = sampler_kind(p.sampler, p.steps, p.eta);
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
                    let data = load_data(ctx, source, &config, &self.weights_dir, &device)?;
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
