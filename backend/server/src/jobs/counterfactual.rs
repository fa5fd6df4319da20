//! `counterfactual`: scans of a data source noised to t and denoised under each class of a
//! class-conditional model, with the difference between the classes (the paper's Fig. 10). Publishes the
//! figure (`counterfactuals.png`, kind `grid`: a row per scan), each scan's row (kind `figure`) and the
//! report (`counterfactuals.json`, kind `report`).

use repdiff_api::jobs::{CounterfactualParams, Invalid};
use repdiff_engine::device::best_device;
use repdiff_engine::explain::{CounterfactualOptions, counterfactuals, write_counterfactuals};
use repdiff_engine::sample::{Weights, load_model};

use super::inputs::{check_data, checkpoint_input, checkpoint_origin, data_inputs, load_data};
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Counterfactual {
    pub weights_dir: std::path::PathBuf,
}

impl Task for Counterfactual {
    type Spec = CounterfactualParams;

    fn check(&self, p: &CounterfactualParams) -> Result<(), Invalid> {
        check_data("data", &p.data)
    }

    fn reads(&self, p: &CounterfactualParams) -> Vec<Input> {
        [vec![checkpoint_input(&p.checkpoint)], data_inputs(&p.data)].concat()
    }

    fn run(&self, p: CounterfactualParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
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
