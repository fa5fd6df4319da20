//! `repdiff classify`: the zero-shot diffusion classifier over a timestep sweep. The operating timestep is
//! chosen on the validation data (best F1) and then applied to the test data, never chosen on test; the
//! test metrics come with bootstrap 95% intervals. `--sequential` stops drawing noise for an image once
//! its class is decided; `--agreement` measures that against the fixed budget.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use repdiff_engine::classify::{
    Intervals, Metrics, Rule, Score, Stopping, SweepOptions, SweepRow, TestReport, choose_timestep, sweep, test_at,
};
use repdiff_engine::data::Dataset;
use repdiff_engine::device::best_device;
use repdiff_engine::diffusion::GaussianDiffusion;
use repdiff_engine::sample::{Weights, load_model};

use super::progress_bar;

#[derive(Clone, Copy, ValueEnum)]
pub enum ScoreArg {
    /// Error of the predicted clean latent (the paper's).
    X0,
    /// Error of the predicted noise (Li et al.'s).
    Eps,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RuleArg {
    Predictive,
    Confidence,
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// A class-conditional checkpoint (`repdiff finetune` or `train --conditioning class`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Labelled validation data (a latent file with `labels`, or an image folder of class sub-folders):
    /// the sweep chooses the operating timestep here.
    #[arg(long)]
    validation: PathBuf,
    /// Labelled test data, classified at the chosen timestep.
    #[arg(long)]
    test: Option<PathBuf>,
    /// Timesteps to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,300,400,500,600,700,800,900")]
    timesteps: Vec<usize>,
    /// Instead of sweeping: the timestep an earlier `classify --out` report chose on its validation data,
    /// to classify new data at an operating point fixed elsewhere.
    #[arg(long, conflicts_with = "timesteps")]
    timestep_of: Option<PathBuf>,
    /// Noise draws per image and timestep (the paper uses 512).
    #[arg(long, default_value_t = 64)]
    draws: usize,
    #[arg(long, value_enum, default_value = "x0")]
    score: ScoreArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// (Image, noise) rows per model batch (each is one model row per class).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Stop drawing noise for an image once its class is decided (a sequential test); --draws is then
    /// the most an image gets.
    #[arg(long)]
    sequential: bool,
    /// What decides an image early: `predictive`, the remaining draws of the budget are unlikely to
    /// overturn its leading class; `confidence`, a t test says unlimited draws would not.
    #[arg(long, value_enum, default_value = "predictive", requires = "sequential")]
    stop_rule: RuleArg,
    /// The error rate of a sequential early decision.
    #[arg(long, default_value_t = 0.01, requires = "sequential")]
    alpha: f64,
    /// Draws before the first sequential look (then every as many draws for the predictive rule, at
    /// twice as many each time for the confidence rule).
    #[arg(long, default_value_t = 16, requires = "sequential")]
    min_draws: usize,
    /// With --sequential: classify the test data with every draw instead, replay the sequential decisions
    /// from those draws, and report how often the two agree and what fraction of the forward passes the
    /// sequential run would spend (and the same for both rules at other error rates).
    #[arg(long, requires = "sequential")]
    agreement: bool,
    /// Use the raw weights instead of their EMA.
    #[arg(long)]
    raw_weights: bool,
    /// Write the sweep and the test result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(super) fn load(
    path: &Path,
    size: usize,
    channels: usize,
    device: &repdiff_engine::Device,
) -> Result<(Dataset, Vec<u32>)> {
    let data = if path.is_dir() {
        Dataset::from_image_folder(path, size, channels, device)?
    } else {
        Dataset::from_latent_file(path, device)?
    };
    let labels = data.labels.clone().with_context(|| format!("{} has no class labels", path.display()))?;
    Ok((data, labels))
}

fn table(rows: &[SweepRow], chosen: Option<usize>) {
    println!("| t | accuracy | precision | recall | F1 | forwards/image |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let m = &r.metrics;
        let mark = if Some(r.t) == chosen { " *" } else { "" };
        println!(
            "| {}{mark} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |",
            r.t, m.accuracy, m.precision, m.recall, m.f1, r.forwards_per_image
        );
    }
}

/// Test metrics with their bootstrap intervals as a Markdown table, then the confusion matrix.
pub(super) fn print_metrics(m: &Metrics, i: &Intervals) {
    println!("| metric | value | {:.0}% interval ({} bootstrap resamples) |", 100.0 * i.level, i.resamples);
    println!("|---|---|---|");
    for (name, value, [lo, hi]) in [
        ("accuracy", m.accuracy, i.accuracy),
        ("precision", m.precision, i.precision),
        ("recall", m.recall, i.recall),
        ("F1", m.f1, i.f1),
    ] {
        println!("| {name} | {value:.3} | {lo:.3} - {hi:.3} |");
    }
    println!("Confusion (rows truth, columns predicted): {:?}", m.confusion);
}

fn print_test(report: &TestReport) {
    print_metrics(&report.metrics, &report.intervals);
    println!("Forward passes per image: {:.1}", report.forwards_per_image);
    if let Some(a) = &report.agreement {
        println!(
            "Sequential stopping against {} draws: the same decision on {:.1}% of the images, {:.1}% of the forward passes (fixed-budget accuracy {:.3})",
            a.fixed_draws,
            100.0 * a.agreement,
            100.0 * a.forwards_fraction,
            a.fixed_accuracy
        );
        println!("\nOther stopping rules on the same draws:");
        println!("| rule | alpha | same decision % | forward passes % | accuracy |");
        println!("|---|---|---|---|---|");
        for p in &a.alternatives {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.3} |",
                p.rule.name(),
                p.alpha,
                100.0 * p.agreement,
                100.0 * p.forwards_fraction,
                p.accuracy
            );
        }
    }
}

/// The timestep a `classify --out` report chose.
fn chosen_timestep_of(report: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", report.display()))?;
    value["chosen_t"]
        .as_u64()
        .map(|t| t as usize)
        .with_context(|| format!("{} has no chosen_t: is it a `repdiff classify --out` report?", report.display()))
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    let (device, device_note) = best_device();
    let weights = if args.raw_weights { Weights::Raw } else { Weights::Ema };
    let (model, config) = load_model(&args.checkpoint, weights, &device)?;
    if config.model.num_classes().is_none() {
        bail!("{} is not class-conditional: fine-tune it first (repdiff finetune)", args.checkpoint.display());
    }
    let timesteps = match &args.timestep_of {
        Some(report) => vec![chosen_timestep_of(report)?],
        None => args.timesteps.clone(),
    };
    if let Some(&bad) = timesteps.iter().find(|&&t| t >= config.diffusion.num_timesteps) {
        bail!("timestep {bad} is outside the model's 0..{}", config.diffusion.num_timesteps);
    }
    let diffusion = GaussianDiffusion::new(&config.diffusion, config.model.learn_sigma);
    let (c, size, _) = config.model.sample_dims();
    let options = SweepOptions {
        timesteps,
        draws: args.draws,
        seed: args.seed,
        batch_size: args.batch_size,
        score: match args.score {
            ScoreArg::X0 => Score::X0Mse,
            ScoreArg::Eps => Score::EpsMse,
        },
        stopping: args.sequential.then_some(Stopping {
            alpha: args.alpha,
            min_draws: args.min_draws,
            rule: match args.stop_rule {
                RuleArg::Predictive => Rule::Predictive,
                RuleArg::Confidence => Rule::Confidence,
            },
        }),
    };
    options.check()?;
    let cancel = super::interrupt::cancel_on_signal();
    let (validation, labels) = load(&args.validation, size, c, &device)?;
    println!(
        "Sweeping {} timesteps over {} validation images, {} draws x {} classes per image, on {device_note}",
        options.timesteps.len(),
        labels.len(),
        options.draws,
        config.model.num_classes().unwrap_or(0)
    );
    let bar = progress_bar(1, "{bar:40} {percent}% [{elapsed_precise}<{eta_precise}]");
    let rows = sweep(&model, &diffusion, &validation.samples, &labels, &options, &cancel, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let chosen = choose_timestep(&rows).expect("a sweep has rows");
    println!("\nValidation (* = the chosen timestep, best F1):");
    table(&rows, Some(chosen));

    let test = match &args.test {
        Some(path) => {
            let (data, labels) = load(path, size, c, &device)?;
            println!("\nTest at t = {chosen} ({} images):", labels.len());
            let bar = progress_bar(1000, "{bar:40} {percent}% [{elapsed_precise}<{eta_precise}]");
            let report = test_at(
                &model,
                &diffusion,
                &data.samples,
                &labels,
                chosen,
                &options,
                args.agreement,
                &cancel,
                |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )?;
            bar.finish_and_clear();
            print_test(&report);
            Some(report)
        }
        None => None,
    };
    if let Some(out) = &args.out {
        let report = serde_json::json!({
            "checkpoint": args.checkpoint, "options": options, "validation": rows,
            "chosen_t": chosen, "test": test,
        });
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("Report: {}", out.display());
    }
    Ok(())
}
