//! `counterfactual`: scans of a data source noised to t and denoised under each class of a
//! class-conditional model, with the difference between the classes (the paper's Fig. 10). Publishes the
//! figure (`counterfactuals.png`, kind `grid`: a row per scan), each scan's row (kind `figure`) and the
//! report (`counterfactuals.json`, kind `report`).

use repdiff_engine::device::best_device;
use repdiff_engine::explain::{CounterfactualOptions, counterfactuals, write_counterfactuals};
use repdiff_engine::sample::{Weights, load_model};
use serde::{Deserialize, Serialize};

use super::sample::{CheckpointRef, checkpoint_origin, default_guidance, default_steps};
use super::train::{DataSource, data_inputs, load_data, validate_data};
use crate::worker::{Handler, Input, JobContext, JobError};

fn default_num() -> usize {
    8
}
fn default_t() -> usize {
    500
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterfactualParams {
    /// A class-conditional checkpoint (a finetune job's: `{"job": ID}`).
    pub checkpoint: CheckpointRef,
    /// The scans (their first `num`).
    pub data: DataSource,
    #[serde(default = "default_num")]
    pub num: usize,
    /// The noise level to go up to (the nearest DDIM step at or below is used).
    #[serde(default = "default_t")]
    pub t: usize,
    /// DDIM steps over the whole process.
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub raw_weights: bool,
}

pub struct Counterfactual {
    pub weights_dir: std::path::PathBuf,
}

impl Handler for Counterfactual {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: CounterfactualParams = super::parse("counterfactual", params)?;
        if !(1..=256).contains(&p.num) || !(1..=1000).contains(&p.steps) {
            return Err("num is 1 to 256 and steps 1 to 1000".into());
        }
        if p.t == 0 || !(p.guidance.is_finite() && p.guidance >= 0.0) {
            return Err("t must be positive and guidance >= 0".into());
        }
        validate_data(&p.data)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        match serde_json::from_value::<CounterfactualParams>(params.clone()) {
            Ok(p) => [vec![Input::Artifact(p.checkpoint.key())], data_inputs(&p.data)].concat(),
            Err(_) => Vec::new(),
        }
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: CounterfactualParams = ctx.params()?;
        let (device, device_note) = best_device();
        let local = ctx.fetch(&p.checkpoint.key(), "checkpoint.safetensors")?;
        let weights = if p.raw_weights { Weights::Raw } else { Weights::Ema };
        let (model, config) = load_model(&local, weights, &device)?;
        if config.model.num_classes().is_none() {
            return Err(JobError::Permanent("counterfactuals need a class-conditional model".into()));
        }
        let data = load_data(ctx, &p.data, &config, &self.weights_dir, &device)?;
        let n = p.num.min(data.len());
        if n == 0 {
            return Err(JobError::Permanent("the data holds no scans".into()));
        }
        let options = CounterfactualOptions {
            t: p.t,
            steps: p.steps,
            guidance_scale: p.guidance,
            seed: p.seed,
            batch_size: 16,
            clip_denoised: None,
            cancel: ctx.cancel.clone(),
        };
        ctx.log("info", &format!("counterfactuals of {n} scans at t = {}, {device_note}", p.t));
        let cf = counterfactuals(
            &model,
            &config,
            &data.samples.narrow(0, 0, n).map_err(repdiff_engine::Error::from)?,
            &options,
            |done, total| {
                ctx.progress(done as u64, total as u64, "denoising under each class");
            },
        )?;
        let report = write_counterfactuals(&cf, &config, &self.weights_dir, &ctx.scratch.join("counterfactuals"))?;
        if let Some(note) = &report.note {
            ctx.log("warn", note);
        }
        let labels = data.labels.as_ref().map(|l| l[..n].to_vec());
        let (from_job, step) = checkpoint_origin(ctx, &p.checkpoint.key())?;
        for (i, path) in report.rows.iter().enumerate() {
            let meta = serde_json::json!({
                "index": i,
                "label": labels.as_ref().map(|l| l[i]),
                "mean_abs_difference": report.mean_abs_difference[i],
                "t": report.t,
                "from_job": from_job,
                "checkpoint_step": step,
            });
            ctx.publish(path, &format!("counterfactuals/{i:04}.png"), "figure", "image/png", meta)?;
        }
        let grid = ctx.publish(&report.grid, "counterfactuals.png", "grid", "image/png", serde_json::json!({}))?;
        let json = report.grid.with_file_name("counterfactuals.json");
        ctx.publish(&json, "counterfactuals.json", "report", "application/json", serde_json::json!({}))?;
        Ok(serde_json::json!({
            "t": report.t,
            "num": n,
            "labels": labels,
            "mean_abs_difference": report.mean_abs_difference,
            "scale": report.scale,
            "grid": grid,
            "decoded": report.note.is_none(),
        }))
    }
}
