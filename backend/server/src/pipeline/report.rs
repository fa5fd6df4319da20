//! The pipeline's report from its stages' results: Table 6 (the classifiers), the validation sweep, the
//! class fidelity of the fine-tuned models' samples, Table 5 (generation) and, over several seeds, the
//! spread of each. The same tables whether the stages ran as queue jobs or as `repdiff reproduce`'s steps.

use std::fmt::Write;

use anyhow::{Context, Result};
use repdiff_api::{
    AcrossSeeds, ClassMetrics, ClassifyReport, FidelityRow, PairedDifference, ProbeTest, ReproduceReport, SeedsRow,
    SeedsTable5Row, Spread, StepTiming, SweepRow, Table5Row, Table6Row,
};
use serde::Deserialize;

/// The two diffusion classifiers' rows of Table 6 (its first two).
pub const UNCOND_METHOD: &str = "Diffusion classifier, unconditional pre-training + fine-tuning";
pub const REP_METHOD: &str =
    "Diffusion classifier, representation-conditional pre-training + fine-tuning (the paper's)";

/// The classifier-free guidance scales of the class-fidelity samples: none, and a moderate one (DiT draws
/// its figures at 4; stronger guidance trades the samples' variety for their class).
pub const CLASS_GUIDANCE: [f64; 2] = [1.0, 3.0];

/// The models whose samples the class-fidelity check judges, each with the model whose classifier judges
/// them.
pub const FIDELITY_PAIRS: [(&str, &str); 2] = [("rep", "uncond"), ("uncond", "rep")];

/// The stage and folder name of one model's class-fidelity samples at one guidance scale.
pub fn fidelity_name(mode: &str, guidance: f64) -> String {
    format!("{mode}-g{guidance}")
}

/// A probe's or a supervised baseline's result (the job's, or `repdiff probe`'s and `repdiff supervised`'s
/// report), as far as Table 6 reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct Tested {
    #[serde(default)]
    pub lambda: Option<f64>,
    pub test: Option<ProbeTest>,
}

/// An evaluation's result (the job's, or `repdiff evaluate`'s metrics.json), as far as Table 5 reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct Evaluated {
    pub results: Vec<Table5Row>,
}

/// What kind of network a supervised baseline's architecture name is.
pub fn network(arch: &str) -> &'static str {
    if arch.starts_with("resnet") { "ResNet" } else { "ViT" }
}

/// Everything one seed's report is made from.
pub struct SeedResults {
    pub preset: String,
    pub seed: u64,
    pub downstream_site: Option<usize>,
    /// What the downstream split kept together (the report says what it means for the scores).
    pub split_unit: repdiff_api::jobs::SplitUnit,
    pub pretrain_steps: usize,
    pub finetune_steps: usize,
    /// The two diffusion classifiers.
    pub uncond: ClassifyReport,
    pub rep: ClassifyReport,
    /// The linear probe on the representation encoder, and on DINOv2 when it ran.
    pub probe: Tested,
    pub dino_probe: Option<Tested>,
    /// The supervised baselines by architecture name.
    pub supervised: Vec<(String, Tested)>,
    /// The judged class-fidelity samples in [`FIDELITY_PAIRS`] x [`CLASS_GUIDANCE`] order (empty: left out),
    /// and how the samples were drawn (`DDPM 100`).
    pub fidelity: Vec<ClassifyReport>,
    pub fidelity_sampler: String,
    pub table5: Option<Vec<Table5Row>>,
    pub timings: Vec<StepTiming>,
    pub total_s: f64,
}

/// One seed's report: its tables as data and as Markdown.
pub fn seed_report(r: SeedResults) -> Result<ReproduceReport> {
    let mut rows = vec![
        table_row(UNCOND_METHOD, &r.uncond)?,
        table_row(REP_METHOD, &r.rep)?,
        probe_row("Linear probe on the representation encoder (mean-pooled tokens)", &r.probe)?,
    ];
    if let Some(dino) = &r.dino_probe {
        rows.push(probe_row("Linear probe on DINOv2 ViT-S/14 features", dino)?);
    }
    for (arch, tested) in &r.supervised {
        let name = format!("{} ({arch}) trained from scratch on the training part", network(arch));
        rows.push(probe_row(&name, tested)?);
    }
    let test = r.uncond.test.as_ref().map_or(0, |t| t.metrics.confusion.iter().flatten().sum::<usize>());
    let mut markdown = table6_markdown(&rows, &r, test);
    markdown.push_str(&sweep_markdown(&r.uncond, &r.rep));
    let class_fidelity =
        if r.fidelity.is_empty() { Vec::new() } else { class_fidelity(&r.fidelity, &r.uncond, &r.rep)? };
    if !class_fidelity.is_empty() {
        markdown.push_str(&fidelity_markdown(&class_fidelity, &r.fidelity_sampler));
    }
    if let Some(rows) = &r.table5 {
        markdown.push_str(&table5_markdown(rows));
    }
    Ok(ReproduceReport {
        preset: r.preset,
        seed: r.seed,
        pretrain_steps: r.pretrain_steps,
        finetune_steps: r.finetune_steps,
        table6: rows,
        class_fidelity,
        table5: r.table5,
        timings_s: r.timings,
        total_s: r.total_s,
        markdown,
        across_seeds: None,
    })
}

/// The report of several seeds' (in the seeds' order): the spread first, then the first seed's in full.
pub fn seeds_report(mut reports: Vec<ReproduceReport>, total_s: f64) -> ReproduceReport {
    if reports.len() < 2 {
        let mut report = reports.remove(0);
        report.total_s = total_s;
        return report;
    }
    let across = across_seeds(&reports);
    let mut report = reports.remove(0);
    report.markdown = format!(
        "{}\n# Seed {} in full\n\n{}",
        seeds_markdown(&across, &report),
        report.seed,
        report.markdown.replacen("# ", "## ", 1)
    );
    report.across_seeds = Some(across);
    report.total_s = total_s;
    report
}

/// A diffusion classifier's test result as a row: metrics, intervals, forward passes per image.
fn table_row(name: &str, report: &ClassifyReport) -> Result<Table6Row> {
    let test = report.test.as_ref().with_context(|| format!("{name}: the classifier's report has no test result"))?;
    Ok(Table6Row {
        method: name.to_string(),
        chosen_t: Some(report.chosen_t),
        metrics: test.metrics.clone(),
        intervals: test.intervals.clone(),
        forwards_per_image: Some(test.forwards_per_image),
        agreement: test.agreement.clone(),
        lambda: None,
    })
}

/// A probe's or a supervised baseline's test result as a row.
fn probe_row(name: &str, report: &Tested) -> Result<Table6Row> {
    let test = report.test.clone().with_context(|| format!("{name}: the report has no test result"))?;
    Ok(Table6Row {
        method: name.to_string(),
        chosen_t: None,
        metrics: test.metrics,
        intervals: Some(test.intervals),
        forwards_per_image: None,
        agreement: None,
        lambda: report.lambda,
    })
}

/// The two validation sweeps side by side (the paper's Fig. 12: accuracy and F1 over the timestep).
fn sweep_markdown(uncond: &ClassifyReport, rep: &ClassifyReport) -> String {
    let pct = |row: Option<&SweepRow>, value: fn(&ClassMetrics) -> f64| {
        row.map_or("-".to_string(), |row| format!("{:.1}", value(&row.metrics) * 100.0))
    };
    let mut md = String::from(
        "\n## Validation sweep (Fig. 12 analogue)\n\n| t | accuracy %, unconditional | F1 %, unconditional | accuracy %, representation | F1 %, representation |\n|---|---|---|---|---|\n",
    );
    for (i, row) in uncond.validation.iter().enumerate() {
        let other = rep.validation.get(i);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.t,
            pct(Some(row), |m| m.accuracy),
            pct(Some(row), |m| m.f1),
            pct(other, |m| m.accuracy),
            pct(other, |m| m.f1)
        ));
    }
    md
}

/// Table 6 of one seed (`test` slices in its test part).
fn table6_markdown(rows: &[Table6Row], r: &SeedResults, test: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Table 6 analogue: haematoma classification on the test part ({test} slices of {})\n",
        r.downstream_site.map_or("the dataset".to_string(), |s| format!("site {s}"))
    );
    let _ = writeln!(
        md,
        "Preset {}, seed {}, pre-training {} steps, fine-tuning {} steps. Percentages \
         with percentile bootstrap 95% intervals; the diffusion classifier's timestep was chosen on validation; \
         {}.\n",
        r.preset,
        r.seed,
        r.pretrain_steps,
        r.finetune_steps,
        crate::jobs::split_unit(r.split_unit).caveat()
    );
    let _ = writeln!(md, "| method | t | accuracy % | precision % | recall % | F1 % | forwards/image |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let cell = |v: f64, interval: Option<[f64; 2]>| match interval {
        Some([lo, hi]) => format!("{:.1} [{:.1}, {:.1}]", v * 100.0, lo * 100.0, hi * 100.0),
        None => format!("{:.1}", v * 100.0),
    };
    for row in rows {
        let (m, i) = (&row.metrics, row.intervals.as_ref());
        let t = row.chosen_t.map_or("-".to_string(), |t| t.to_string());
        let forwards = row.forwards_per_image.map_or("-".to_string(), |f| format!("{f:.0}"));
        let _ = writeln!(
            md,
            "| {} | {t} | {} | {} | {} | {} | {forwards} |",
            row.method,
            cell(m.accuracy, i.map(|i| i.accuracy)),
            cell(m.precision, i.map(|i| i.precision)),
            cell(m.recall, i.map(|i| i.recall)),
            cell(m.f1, i.map(|i| i.f1))
        );
    }
    for row in rows {
        if let Some(a) = &row.agreement {
            let _ = writeln!(
                md,
                "\n{}: sequential stopping took the decision of all {} draws on {:.1}% of the test slices with {:.1}% of the forward passes.",
                row.method,
                a.fixed_draws,
                a.agreement * 100.0,
                a.forwards_fraction * 100.0
            );
        }
    }
    md
}

/// Per class, the fraction of its items called that class (`confusion[truth][predicted]`): [specificity,
/// recall] for two classes.
fn per_class(confusion: &[Vec<usize>]) -> Vec<f64> {
    confusion
        .iter()
        .enumerate()
        .map(|(c, row)| row.get(c).copied().unwrap_or(0) as f64 / row.iter().sum::<usize>().max(1) as f64)
        .collect()
}

/// Each fine-tuned model's class-conditional samples as the other model's classifier sorts them, at the
/// timestep that classifier chose on real validation slices, beside how it sorts the real test slices
/// (the classifiers' reports `uncond` and `rep`).
fn class_fidelity(
    judged: &[ClassifyReport],
    uncond: &ClassifyReport,
    rep: &ClassifyReport,
) -> Result<Vec<FidelityRow>> {
    let mut rows = Vec::new();
    let mut judged = judged.iter();
    for (mode, judge) in FIDELITY_PAIRS {
        let real = if judge == "uncond" { uncond } else { rep };
        let real_test = real.test.as_ref().context("the judging classifier's report has no test result")?;
        for guidance in CLASS_GUIDANCE {
            let name = fidelity_name(mode, guidance);
            let report = judged.next().with_context(|| format!("no judged samples {name}"))?;
            let row = report.validation.first().with_context(|| format!("the judged samples {name} have no result"))?;
            rows.push(FidelityRow {
                samples_of: mode.to_string(),
                guidance,
                judge: judge.to_string(),
                t: report.chosen_t,
                samples_per_class: per_class(&row.metrics.confusion),
                samples_confusion: row.metrics.confusion.clone(),
                real_test_per_class: per_class(&real_test.metrics.confusion),
            });
        }
    }
    Ok(rows)
}

/// The class-fidelity table; `sampler` says how the samples were drawn (`DDPM 100`).
fn fidelity_markdown(rows: &[FidelityRow], sampler: &str) -> String {
    let mut md = format!(
        "\n## Class fidelity of the fine-tuned models' samples\n\nEach fine-tuned model draws samples of both classes \
         ({sampler}, classifier-free guidance 1: none, and 3); the other model's diffusion classifier sorts them \
         at the timestep it chose on real validation slices. Beside it, how the same classifier sorts the real \
         test slices.\n\n\
         | samples of | guidance | judged by | t | class-0 samples called 0 % | class-1 samples called 1 % | real test: class 0 called 0 % | real test: class 1 called 1 % |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let name = |m: &str| if m == "rep" { "representation pre-training" } else { "unconditional pre-training" };
    let pct = |v: &[f64], c: usize| v.get(c).map_or("-".to_string(), |v| format!("{:.1}", v * 100.0));
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            name(&r.samples_of),
            r.guidance,
            name(&r.judge),
            r.t,
            pct(&r.samples_per_class, 0),
            pct(&r.samples_per_class, 1),
            pct(&r.real_test_per_class, 0),
            pct(&r.real_test_per_class, 1)
        ));
    }
    md
}

/// The generation metrics of the two pre-trained models (the paper's Table 5), named for the extractor
/// that measured them.
fn table5_markdown(results: &[Table5Row]) -> String {
    let pretrained = results.first().is_some_and(|r| r.extractor == "inception-v3");
    let (fid, sfid, is) = if pretrained { ("FID", "sFID", "IS") } else { ("FD", "sFD", "score") };
    let mut md = format!(
        "\n## Table 5 analogue: generation against {} pre-training images\n\n",
        results.first().map_or(0, |r| r.real)
    );
    if !pretrained {
        md.push_str(&format!(
            "Features of {} (no pretrained Inception weights in the weights folder): FD, sFD and the score \
             compare these models with each other, not with published FIDs.\n\n",
            results.first().map_or("a random network", |r| r.extractor.as_str())
        ));
    }
    md.push_str(&format!(
        "| pre-training | samples | {fid} | {sfid} | {is} | precision | recall | density | coverage |\n|---|---|---|---|---|---|---|---|---|\n"
    ));
    for (r, name) in results.iter().zip(["Unconditional", "Representation-conditional (the paper's)"]) {
        md.push_str(&format!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.generated, r.fid, r.sfid, r.inception_score, r.precision, r.recall, r.density, r.coverage
        ));
    }
    md
}

/// Every seed's Table 6 and Table 5 side by side: per method its test accuracy and F1 per seed, their mean
/// and spread, and the two diffusion classifiers' paired difference.
fn across_seeds(reports: &[ReproduceReport]) -> AcrossSeeds {
    let find = |report: &ReproduceReport, method: &str| report.table6.iter().find(|row| row.method == method).cloned();
    let table6 = reports[0]
        .table6
        .iter()
        .filter_map(|first| {
            let rows: Option<Vec<Table6Row>> = reports.iter().map(|r| find(r, &first.method)).collect();
            let rows = rows?;
            Some(SeedsRow {
                method: first.method.clone(),
                chosen_t: rows.iter().map(|row| row.chosen_t).collect(),
                accuracy: Spread::new(rows.iter().map(|row| row.metrics.accuracy).collect()),
                f1: Spread::new(rows.iter().map(|row| row.metrics.f1).collect()),
            })
        })
        .collect();
    let accuracy =
        |report: &ReproduceReport, method: &str| find(report, method).map_or(f64::NAN, |r| r.metrics.accuracy);
    let difference =
        Spread::new(reports.iter().map(|r| accuracy(r, REP_METHOD) - accuracy(r, UNCOND_METHOD)).collect());
    let n = difference.values.len();
    let interval = (n > 1).then(|| {
        let half = repdiff_engine::classify::stats::student_t_quantile(0.975, (n - 1) as f64) * difference.sd
            / (n as f64).sqrt();
        [difference.mean - half, difference.mean + half]
    });
    let ahead = difference.values.iter().filter(|&&d| d > 0.0).count();
    let table5 = match reports.iter().map(|r| r.table5.clone()).collect::<Option<Vec<_>>>() {
        Some(tables) if tables.iter().all(|t| t.len() == tables[0].len()) => (0..tables[0].len())
            .map(|m| {
                let metric = |value: fn(&Table5Row) -> f64| Spread::new(tables.iter().map(|t| value(&t[m])).collect());
                SeedsTable5Row {
                    name: tables[0][m].name.clone(),
                    extractor: tables[0][m].extractor.clone(),
                    metrics: vec![
                        metric(|r| r.fid),
                        metric(|r| r.sfid),
                        metric(|r| r.inception_score),
                        metric(|r| r.precision),
                        metric(|r| r.recall),
                        metric(|r| r.density),
                        metric(|r| r.coverage),
                    ],
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    AcrossSeeds {
        seeds: reports.iter().map(|r| r.seed).collect(),
        table6,
        classifier_difference: PairedDifference { difference, interval, ahead },
        table5,
    }
}

/// The spread over the seeds as Markdown; `first` is the first seed's report (its preset and budgets).
fn seeds_markdown(across: &AcrossSeeds, first: &ReproduceReport) -> String {
    let n = across.seeds.len();
    let seeds = across.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let mut md = format!(
        "# Table 6 analogue over {n} seeds ({seeds})\n\nPreset {}, pre-training {} steps, fine-tuning {} steps per \
         seed; each seed draws its own phantoms, split, initial weights and noise. Test accuracy and F1 in %: mean \
         ± sample standard deviation over the seeds, then each seed's value in the seeds' order.\n\n\
         | method | accuracy % | accuracy % per seed | F1 % | F1 % per seed | t per seed |\n|---|---|---|---|---|---|\n",
        first.preset, first.pretrain_steps, first.finetune_steps
    );
    for row in &across.table6 {
        let ts = row.chosen_t.iter().map(|t| t.map_or("-".to_string(), |t| t.to_string())).collect::<Vec<_>>();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            row.method,
            row.accuracy.percent(),
            row.accuracy.percent_each(false),
            row.f1.percent(),
            row.f1.percent_each(false),
            ts.join(" / ")
        );
    }
    let d = &across.classifier_difference;
    let interval = d.interval.map_or(String::new(), |[lo, hi]| {
        format!(" (95% t interval over the seeds [{:+.1}, {:+.1}])", lo * 100.0, hi * 100.0)
    });
    let _ = writeln!(
        md,
        "\nThe paper's comparison, seed by seed: the representation-pre-trained diffusion classifier's test accuracy \
         minus the unconditionally pre-trained one's is {} points, {:+.1} on average{interval}; ahead in {} of {n} \
         seeds.",
        d.difference.percent_each(true),
        d.difference.mean * 100.0,
        d.ahead
    );
    if !across.table5.is_empty() {
        let pretrained = across.table5[0].extractor == "inception-v3";
        let (fid, sfid, is) = if pretrained { ("FID", "sFID", "IS") } else { ("FD", "sFD", "score") };
        let _ = write!(
            md,
            "\n## Table 5 analogue over the seeds\n\nMean ± sample standard deviation over the seeds.\n\n\
             | pre-training | {fid} | {sfid} | {is} | precision | recall | density | coverage |\n|---|---|---|---|---|---|---|---|\n"
        );
        for (row, name) in across.table5.iter().zip(["Unconditional", "Representation-conditional (the paper's)"]) {
            let cells: Vec<String> = row.metrics.iter().map(Spread::plain).collect();
            let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
        }
    }
    md
}
