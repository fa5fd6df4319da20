//! `repdiff probe`: the linear-probe baseline of the paper's Table 6 on a pre-trained representation
//! model's encoder: logistic regression on its mean-pooled tokens, the L2 strength chosen on validation,
//! the test metrics with bootstrap 95% intervals.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_engine::classify::{bootstrap, metrics};
use repdiff_engine::device::best_device;
use repdiff_engine::probe::{LAMBDAS, choose, encoder_features};
use repdiff_engine::sample::{Weights, load_model};

use super::classify::{load, print_metrics};

#[derive(Args)]
pub struct ProbeArgs {
    /// A representation-conditional checkpoint (`repdiff pretrain --mode rep`): its encoder is probed.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    parts: super::PartsArgs,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Use the raw weights instead of their EMA.
    #[arg(long)]
    raw_weights: bool,
}

pub fn run(args: ProbeArgs) -> Result<()> {
    let (device, device_note) = best_device();
    let weights = if args.raw_weights { Weights::Raw } else { Weights::Ema };
    let (model, config) = load_model(&args.checkpoint, weights, &device)?;
    if !config.model.is_representation() {
        bail!("{} has no representation encoder: probe a `pretrain --mode rep` checkpoint", args.checkpoint.display());
    }
    let (c, size, _) = config.model.sample_dims();
    let features = |path: &PathBuf| -> Result<(Vec<Vec<f32>>, Vec<u32>)> {
        let (data, labels) = load(path, size, c, &device)?;
        Ok((encoder_features(&model, &data.samples, args.batch_size)?, labels))
    };
    let train = features(&args.parts.train)?;
    let validation = features(&args.parts.validation)?;
    let classes = train.1.iter().chain(&validation.1).max().map_or(0, |&m| m as usize + 1).max(2);
    println!(
        "Probing the encoder ({} features) of {} on {} training and {} validation images, {device_note}",
        train.0.first().map_or(0, Vec::len),
        args.checkpoint.display(),
        train.1.len(),
        validation.1.len()
    );
    let (probe, val) = choose((&train.0, &train.1), (&validation.0, &validation.1), classes, &LAMBDAS)?;
    println!(
        "Chosen on validation: lambda {} (accuracy {:.3}, F1 {:.3}; {} Newton steps)",
        probe.lambda, val.accuracy, val.f1, probe.iterations
    );
    let test = match &args.parts.test {
        Some(path) => {
            let (x, y) = features(path)?;
            let predicted = probe.predict(&x);
            let m = metrics(&y, &predicted, classes)?;
            let intervals = bootstrap(&y, &predicted, classes, 1000, 0.95, args.parts.seed)?;
            println!("\nTest ({} images):", y.len());
            print_metrics(&m, &intervals);
            Some(serde_json::json!({ "metrics": m, "intervals": intervals, "predicted": predicted }))
        }
        None => None,
    };
    if let Some(out) = &args.parts.out {
        let report = serde_json::json!({
            "checkpoint": args.checkpoint, "lambda": probe.lambda, "validation": val, "test": test,
        });
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("Report: {}", out.display());
    }
    Ok(())
}
