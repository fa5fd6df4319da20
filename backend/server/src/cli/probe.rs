//! `repdiff probe`: the linear-probe baseline of the paper's Table 6: logistic regression on frozen
//! features, the L2 strength chosen on validation, the test metrics with bootstrap 95% intervals. The
//! features are a pre-trained representation model's encoder's (its mean-pooled tokens) or DINOv2's
//! (ViT-S/14, class token and mean patch token, from model-weights/).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use repdiff_engine::classify::{bootstrap, metrics};
use repdiff_engine::device::best_device;
use repdiff_engine::dino::Dino;
use repdiff_engine::probe::{LAMBDAS, choose, encoder_features};
use repdiff_engine::sample::{Weights, load_model};

use super::classify::{load, print_metrics};

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum FeaturesArg {
    /// The representation encoder of --checkpoint.
    Encoder,
    /// DINOv2 ViT-S/14 (model-weights/dinov2_vits14.safetensors) on the images.
    Dinov2,
}

#[derive(Args)]
pub struct ProbeArgs {
    #[arg(long, value_enum, default_value = "encoder")]
    features: FeaturesArg,
    /// A representation-conditional checkpoint (`repdiff pretrain --mode rep`): its encoder is probed.
    #[arg(long, required_if_eq("features", "encoder"))]
    checkpoint: Option<PathBuf>,
    /// DINOv2's input size (a multiple of 14): 224, or 518 for its native position embedding.
    #[arg(long, default_value_t = 224)]
    dino_size: usize,
    /// Where DINOv2's weights live.
    #[arg(long, default_value = "model-weights")]
    weights_dir: PathBuf,
    #[command(flatten)]
    parts: super::PartsArgs,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Use the raw weights instead of their EMA.
    #[arg(long)]
    raw_weights: bool,
}

/// Labelled features of a data part: (features per image, labels).
type Labelled = (Vec<Vec<f32>>, Vec<u32>);
type Extractor = dyn Fn(&PathBuf) -> Result<Labelled>;

pub fn run(args: ProbeArgs) -> Result<()> {
    let (device, device_note) = best_device();
    let (extract, source): (Box<Extractor>, String) = match args.features {
        FeaturesArg::Encoder => {
            let checkpoint = args.checkpoint.clone().context("--checkpoint names the representation model")?;
            let weights = if args.raw_weights { Weights::Raw } else { Weights::Ema };
            let (model, config) = load_model(&checkpoint, weights, &device)?;
            if !config.model.is_representation() {
                bail!(
                    "{} has no representation encoder: probe a `pretrain --mode rep` checkpoint",
                    checkpoint.display()
                );
            }
            let (c, size, _) = config.model.sample_dims();
            let (device, batch_size) = (device.clone(), args.batch_size);
            let extract = move |path: &PathBuf| -> Result<Labelled> {
                let (data, labels) = load(path, size, c, &device)?;
                Ok((encoder_features(&model, &data.samples, batch_size)?, labels))
            };
            (Box::new(extract), format!("the encoder of {}", checkpoint.display()))
        }
        FeaturesArg::Dinov2 => {
            let dino = Dino::pretrained(&args.weights_dir, args.dino_size, &device)?;
            let (device, batch_size, size) = (device.clone(), args.batch_size, args.dino_size);
            // Image folders are read at DINOv2's size in RGB; latent files hold pixel-space images.
            let extract = move |path: &PathBuf| -> Result<Labelled> {
                let (data, labels) = load(path, size, 3, &device)?;
                let features = dino.features(&data.samples, batch_size).with_context(|| {
                    format!("{}: DINOv2 reads images (an image folder or a pixel-space latent file)", path.display())
                })?;
                Ok((features, labels))
            };
            (Box::new(extract), format!("DINOv2 ViT-S/14 at {size}x{size}"))
        }
    };
    let train = extract(&args.parts.train)?;
    let validation = extract(&args.parts.validation)?;
    let classes = train.1.iter().chain(&validation.1).max().map_or(0, |&m| m as usize + 1).max(2);
    println!(
        "Probing {source} ({} features) on {} training and {} validation images, {device_note}",
        train.0.first().map_or(0, Vec::len),
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
            let (x, y) = extract(path)?;
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
            "features": source, "checkpoint": args.checkpoint, "lambda": probe.lambda, "validation": val, "test": test,
        });
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("Report: {}", out.display());
    }
    Ok(())
}
