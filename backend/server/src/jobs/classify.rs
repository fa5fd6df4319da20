//! `classify`: the zero-shot diffusion classifier as a job. A timestep sweep on the validation data
//! (metrics `val_accuracy`, `val_precision`, `val_recall`, `val_f1` with the timestep as their step, so
//! the run page charts them over t), the best-F1 timestep chosen there, and the test data classified at
//! that timestep (`test_*` metrics, one point at the chosen t) with bootstrap 95% intervals. With
//! `stopping`, each image stops drawing noise once its class is decided; `measure_agreement` runs the
//! test data at the fixed budget instead, replays the sequential decisions from its draws, and reports how
//! often the two decide alike, the forward passes saved, and the same for other rules and error rates. The result holds every row with its confusion matrix and each test image's prediction.

use repdiff_api::jobs::{ClassifyParams, DataSource, Invalid};
use repdiff_engine::classify::{SweepOptions, choose_timestep, sweep, test_at};
use repdiff_engine::device::best_device;
use repdiff_engine::diffusion::GaussianDiffusion;
use repdiff_engine::sample::{Weights, load_model};

use super::inputs::{check_data, checkpoint_input, labelled_inputs, load_data, no_labels};
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Classify {
    pub weights_dir: std::path::PathBuf,
    /// The memory one job may use (see `jobs::job_memory_limit`).
    pub memory_limit: u64,
}

impl Task for Classify {
    type Spec = ClassifyParams;

    fn check(&self, p: &ClassifyParams) -> Result<(), Invalid> {
        check_data("validation", &p.validation)?;
        p.test.as_ref().map_or(Ok(()), |test| check_data("test", test))
    }

    fn admit(
        &self,
        p: &ClassifyParams,
        metas: &std::collections::HashMap<String, serde_json::Value>,
    ) -> Result<(), String> {
        let Some(config) = metas.get(&p.checkpoint.key()).and_then(|m| m.get("config")) else { return Ok(()) };
        let Ok(config) = serde_json::from_value::<repdiff_engine::config::RunConfig>(config.clone()) else {
            return Ok(());
        };
        let what = format!("classifying at batch {}", p.batch_size);
        super::admit(&what, config.inference_memory(p.batch_size), self.memory_limit)
    }

    fn reads(&self, p: &ClassifyParams) -> Vec<Input> {
        let mut inputs = vec![checkpoint_input(&p.checkpoint)];
        inputs.extend(labelled_inputs(&p.validation));
        inputs.extend(p.test.as_ref().map(labelled_inputs).unwrap_or_default());
        inputs.extend(p.timestep_of.map(Input::JobResult));
        inputs
    }

    fn run(&self, p: ClassifyParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let (device, device_note) = best_device();
        let local = ctx.fetch(&p.checkpoint.key(), "checkpoint.safetensors")?;
        let weights = if p.raw_weights { Weights::Raw } else { Weights::Ema };
        let (model, config) = load_model(&local, weights, &device)?;
        let Some(num_classes) = config.model.num_classes() else {
            return Err(JobError::Permanent("the diffusion classifier needs a class-conditional model".into()));
        };
        let timesteps = match p.timestep_of {
            Some(job) => vec![chosen_timestep_of(ctx, job)?],
            None => p.timesteps.clone(),
        };
        if let Some(&bad) = timesteps.iter().find(|&&t| t >= config.diffusion.num_timesteps) {
            return Err(JobError::Permanent(format!(
                "timestep {bad} is outside the model's 0..{}",
                config.diffusion.num_timesteps
            )));
        }
        let diffusion = GaussianDiffusion::new(&config.diffusion, config.model.learn_sigma);
        let options = SweepOptions {
            timesteps,
            draws: p.draws,
            seed: p.seed,
            batch_size: p.batch_size,
            score: super::inputs::score(p.score),
            stopping: p.stopping.as_ref().map(super::inputs::stopping),
        };
        let labelled = |ctx: &mut JobContext, source: &DataSource, what: &str| -> Result<_, JobError> {
            let data = load_data(ctx, source, &config, &self.weights_dir, &device)?;
            let labels = data.labels.clone().ok_or_else(|| no_labels(&format!("the {what} data")))?;
            Ok((data, labels))
        };
        let (validation, labels) = labelled(ctx, &p.validation, "validation")?;
        ctx.log(
            "info",
            &format!(
                "sweeping {} timesteps over {} validation images, {} draws x {num_classes} classes each, {device_note}",
                options.timesteps.len(),
                labels.len(),
                options.draws
            ),
        );
        let cancel = ctx.cancel.clone();
        let rows = sweep(&model, &diffusion, &validation.samples, &labels, &options, &cancel, |done, total| {
            ctx.progress(done as u64, total as u64, "validation sweep");
        })?;
        for r in &rows {
            let m = &r.metrics;
            for (name, value) in [
                ("val_accuracy", m.accuracy),
                ("val_precision", m.precision),
                ("val_recall", m.recall),
                ("val_f1", m.f1),
            ] {
                ctx.metric(name, r.t as u64, value)?;
            }
        }
        let chosen = choose_timestep(&rows).expect("a sweep has rows");
        let test = match &p.test {
            Some(source) => {
                let (data, labels) = labelled(ctx, source, "test")?;
                let report = test_at(
                    &model,
                    &diffusion,
                    &data.samples,
                    &labels,
                    chosen,
                    &options,
                    p.measure_agreement,
                    &cancel,
                    |done, total| ctx.progress(done as u64, total as u64, "test at the chosen timestep"),
                )?;
                let m = &report.metrics;
                for (name, value) in [
                    ("test_accuracy", m.accuracy),
                    ("test_precision", m.precision),
                    ("test_recall", m.recall),
                    ("test_f1", m.f1),
                ] {
                    ctx.metric(name, chosen as u64, value)?;
                }
                let [lo, hi] = report.intervals.accuracy;
                ctx.log(
                    "info",
                    &format!(
                        "test at t = {chosen}: accuracy {:.3} (95% CI {lo:.3}-{hi:.3}), F1 {:.3}, {:.0} forwards per image",
                        m.accuracy, m.f1, report.forwards_per_image
                    ),
                );
                if let Some(a) = &report.agreement {
                    ctx.log(
                        "info",
                        &format!(
                            "sequential stopping agrees with {} draws on {:.1}% of the test images at {:.1}% of the forwards",
                            a.fixed_draws,
                            100.0 * a.agreement,
                            100.0 * a.forwards_fraction
                        ),
                    );
                }
                Some(report)
            }
            None => None,
        };
        ctx.flush()?;
        let report = repdiff_api::ClassifyReport {
            chosen_t: chosen,
            validation: rows.into_iter().map(api_row).collect(),
            test: test.map(api_test),
        };
        let mut result = serde_json::to_value(report).map_err(|e| JobError::Permanent(e.to_string()))?;
        result["options"] = serde_json::json!(options);
        Ok(result)
    }
}

/// The engine's metrics as the API's (the wire contract the frontend reads).
fn api_metrics(m: repdiff_engine::classify::Metrics) -> repdiff_api::ClassMetrics {
    repdiff_api::ClassMetrics {
        accuracy: m.accuracy,
        precision: m.precision,
        recall: m.recall,
        f1: m.f1,
        confusion: m.confusion,
    }
}

fn api_row(row: repdiff_engine::classify::SweepRow) -> repdiff_api::SweepRow {
    repdiff_api::SweepRow { t: row.t, metrics: api_metrics(row.metrics), forwards_per_image: row.forwards_per_image }
}

fn api_test(report: repdiff_engine::classify::TestReport) -> repdiff_api::TestResult {
    let i = report.intervals;
    repdiff_api::TestResult {
        t: report.t,
        metrics: api_metrics(report.metrics),
        forwards_per_image: report.forwards_per_image,
        intervals: Some(repdiff_api::Intervals {
            level: i.level,
            resamples: i.resamples,
            accuracy: i.accuracy,
            precision: i.precision,
            recall: i.recall,
            f1: i.f1,
        }),
        predicted: report.predicted,
        draws: report.draws,
        agreement: report.agreement.map(|a| repdiff_api::Agreement {
            fixed_draws: a.fixed_draws,
            agreement: a.agreement,
            forwards_fraction: a.forwards_fraction,
            fixed_accuracy: a.fixed_accuracy,
            alternatives: a
                .alternatives
                .into_iter()
                .map(|p| repdiff_api::StoppingAlternative {
                    rule: p.rule.name().into(),
                    alpha: p.alpha,
                    agreement: p.agreement,
                    forwards_fraction: p.forwards_fraction,
                    accuracy: p.accuracy,
                })
                .collect(),
        }),
    }
}

/// The timestep classify job `job` chose on its validation data.
fn chosen_timestep_of(ctx: &mut JobContext, job: i64) -> Result<usize, JobError> {
    let found = ctx.block_on(
        sqlx::query_scalar!(
            r#"SELECT (result->>'chosen_t')::bigint AS "t" FROM jobs
               WHERE id = $1 AND kind = 'classify' AND state = 'succeeded'"#,
            job
        )
        .fetch_optional(ctx.pool()),
    )?;
    match found.flatten() {
        Some(t) if t >= 0 => Ok(t as usize),
        _ => Err(JobError::Permanent(format!("timestep_of: job {job} is no finished classify job"))),
    }
}
