//! `reproduce`: the paper's whole pipeline. Submitted, it is a graph of ordinary jobs ([`crate::pipeline`]);
//! this job waits on all of them and then reads their results into the Table 6 and Table 5 analogues (the
//! result, a [`repdiff_api::ReproduceReport`]), with the Markdown report and the counterfactual figure as
//! artifacts. Each stage keeps its own checkpoints, curves and samples; a stage whose worker died resumes
//! on another from its last checkpoint, and the finished stages are never run again.

use std::collections::HashMap;

use repdiff_api::jobs::{Part, ReproduceParams, SplitSpec};
use repdiff_api::{ClassifyReport, EvaluateReport, StepTiming, Table5Row};

use crate::pipeline::report::{self, SeedResults, Tested};
use crate::pipeline::{self, Preset};
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Reproduce;

/// A finished stage as the report reads it.
struct Finished {
    id: i64,
    params: serde_json::Value,
    result: serde_json::Value,
    seconds: f64,
}

impl Task for Reproduce {
    type Spec = ReproduceParams;

    /// The dataset, whose downstream parts (each seed's train, validation and test) must be labelled; its
    /// pre-training sites may be unlabelled, as the paper's were.
    fn reads(&self, p: &ReproduceParams) -> Vec<Input> {
        let Some(dataset) = p.dataset else { return Vec::new() };
        let splits = crate::pipeline::seeds(p)
            .into_iter()
            .flat_map(|seed| {
                [Part::Train, Part::Validation, Part::Test].map(|part| SplitSpec {
                    downstream_site: p.downstream_site,
                    part,
                    seed,
                    unit: p.split_unit,
                })
            })
            .collect();
        vec![Input::LabelledDataset(dataset, splits)]
    }

    fn run(&self, p: ReproduceParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let rows = ctx.block_on(
            sqlx::query!(
                r#"SELECT id, stage AS "stage!", state, params, result, started_at, finished_at
                   FROM jobs WHERE pipeline_id = $1 ORDER BY id"#,
                ctx.job.id
            )
            .fetch_all(ctx.pool()),
        )?;
        if rows.is_empty() {
            return Err(JobError::Permanent(
                "this pipeline has no stages: a `reproduce` job is submitted through the API (`POST /api/v1/jobs`), which queues its stages with it".into(),
            ));
        }
        let mut stages = HashMap::new();
        for row in rows {
            if row.state != "succeeded" {
                return Err(JobError::Permanent(format!("stage {} (job {}) is {}", row.stage, row.id, row.state)));
            }
            let seconds = match (row.started_at, row.finished_at) {
                (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
                _ => 0.0,
            };
            let finished = Finished { id: row.id, params: row.params, result: row.result.unwrap_or_default(), seconds };
            stages.insert(row.stage, finished);
        }
        let preset = pipeline::preset(&p.preset).ok_or_else(|| JobError::Permanent("unknown preset".into()))?;
        let seeds = pipeline::seeds(&p);
        let mut reports = Vec::new();
        for (i, &seed) in seeds.iter().enumerate() {
            ctx.progress(i as u64, seeds.len() as u64, "reading the stages' results");
            let results =
                seed_results(&p, &preset, seed, &stages).map_err(|e| JobError::Permanent(format!("{e:#}")))?;
            reports.push(report::seed_report(results).map_err(|e| JobError::Permanent(format!("{e:#}")))?);
        }
        let total_s = (chrono::Utc::now() - ctx.job.created_at).num_milliseconds() as f64 / 1000.0;
        let report = report::seeds_report(reports, total_s);
        let markdown = ctx.scratch.join("table6.md");
        let json = ctx.scratch.join("table6.json");
        let encoded = serde_json::to_string_pretty(&report).map_err(|e| JobError::Permanent(e.to_string()))?;
        for (path, text) in [(&markdown, &report.markdown), (&json, &encoded)] {
            std::fs::write(path, text).map_err(|e| JobError::Retryable(format!("{}: {e}", path.display())))?;
        }
        ctx.publish(&markdown, "table6.md", "report", "text/markdown", serde_json::json!({}))?;
        ctx.publish(&json, "table6.json", "report_data", "application/json", serde_json::json!({}))?;
        // The first seed's counterfactuals, on the pipeline's page.
        if let Some(stage) = stages.get(&format!("seed-{}/counterfactuals", seeds[0])) {
            let key = format!("jobs/{}/counterfactuals.png", stage.id);
            let local = ctx.fetch(&key, "counterfactuals.png")?;
            let title = "Counterfactuals of test scans: original | class 0 | class 1 | difference";
            ctx.publish(&local, "counterfactuals.png", "figure", "image/png", serde_json::json!({ "title": title }))?;
        }
        ctx.progress(seeds.len() as u64, seeds.len() as u64, "the report is written");
        serde_json::to_value(report).map_err(|e| JobError::Permanent(format!("the report: {e}")))
    }
}

/// One seed's stages' results as the report reads them.
fn seed_results(
    p: &ReproduceParams,
    preset: &Preset,
    seed: u64,
    stages: &HashMap<String, Finished>,
) -> anyhow::Result<SeedResults> {
    use anyhow::Context;
    let stage = |name: &str| stages.get(&format!("seed-{seed}/{name}"));
    let result = |name: &str| -> anyhow::Result<&serde_json::Value> {
        Ok(&stage(name).with_context(|| format!("seed {seed} has no stage {name}"))?.result)
    };
    fn parse<T: serde::de::DeserializeOwned>(name: &str, value: &serde_json::Value) -> anyhow::Result<T> {
        serde_json::from_value(value.clone()).with_context(|| format!("the result of stage {name}"))
    }
    let classified = |name: &str| -> anyhow::Result<ClassifyReport> { parse(name, result(name)?) };
    let tested = |name: &str| -> anyhow::Result<Tested> { parse(name, result(name)?) };
    let steps = |name: &str| -> anyhow::Result<usize> {
        let params = &stage(name).with_context(|| format!("seed {seed} has no stage {name}"))?.params;
        params["run"]["steps"].as_u64().map(|s| s as usize).with_context(|| format!("stage {name} names no steps"))
    };
    let mut fidelity = Vec::new();
    if p.class_samples.unwrap_or(preset.class_samples) > 0 {
        for (mode, _) in report::FIDELITY_PAIRS {
            for guidance in report::CLASS_GUIDANCE {
                fidelity.push(classified(&format!("class-fidelity-{}", report::fidelity_name(mode, guidance)))?);
            }
        }
    }
    let table5 = match stage("evaluate") {
        Some(evaluate) => {
            let e: EvaluateReport = parse("evaluate", &evaluate.result)?;
            Some(table5_rows(&e))
        }
        None => None,
    };
    let mut timings: Vec<(i64, StepTiming)> = stages
        .iter()
        .filter_map(|(name, s)| {
            let step = name.strip_prefix(&format!("seed-{seed}/"))?;
            Some((s.id, StepTiming { step: step.to_string(), seconds: s.seconds }))
        })
        .collect();
    timings.sort_by_key(|(id, _)| *id);
    Ok(SeedResults {
        preset: p.preset.clone(),
        seed,
        downstream_site: p.downstream_site,
        split_unit: p.split_unit,
        pretrain_steps: steps("pretrain-rep")?,
        finetune_steps: steps("finetune-rep")?,
        uncond: classified("classify-uncond")?,
        rep: classified("classify-rep")?,
        probe: tested("probe")?,
        dino_probe: stage("probe-dinov2").map(|_| tested("probe-dinov2")).transpose()?,
        supervised: preset
            .supervised
            .iter()
            .map(|(arch, _)| Ok((arch.to_string(), tested(&format!("supervised-{arch}"))?)))
            .collect::<anyhow::Result<_>>()?,
        fidelity,
        fidelity_sampler: format!("{} {}", preset.class_sampler.to_uppercase(), preset.class_steps),
        table5,
        timings: timings.into_iter().map(|(_, t)| t).collect(),
        total_s: 0.0,
    })
}

/// An evaluation's models as Table 5's rows (unconditional first, as the paper's table).
fn table5_rows(e: &EvaluateReport) -> Vec<Table5Row> {
    let mut rows: Vec<Table5Row> = e
        .results
        .iter()
        .map(|r| Table5Row {
            name: r.name.clone(),
            extractor: e.extractor.clone(),
            real: e.real,
            generated: r.generated,
            fid: r.fid,
            sfid: r.sfid,
            inception_score: r.inception_score,
            precision: r.precision,
            recall: r.recall,
            density: r.density,
            coverage: r.coverage,
        })
        .collect();
    rows.sort_by_key(|r| !r.name.ends_with("uncond"));
    rows
}
