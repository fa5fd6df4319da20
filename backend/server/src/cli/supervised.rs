//! `repdiff supervised`: the supervised baselines of the paper's Table 6 (a ViT or a ResNet), trained from
//! scratch on the downstream training data, the best epoch chosen on validation, the test metrics with
//! bootstrap 95% intervals.

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_engine::classify::{bootstrap, metrics};
use repdiff_engine::data::Dataset;
use repdiff_engine::device::best_device;
use repdiff_engine::supervised::{Architecture, SupervisedOptions, predict, train_supervised};

use super::progress_bar;

#[derive(Args)]
pub struct SupervisedArgs {
    /// Architecture: vit-b (12 blocks, width 768, 12 heads: the paper's ViT-B), vit-s (12, 384, 6), tiny
    /// (4, 128, 4: the tiny-cpu DiT's size); --depth/--width/--heads override a ViT's. resnet-50 (the
    /// paper's) or resnet-tiny (bottleneck blocks [1, 1, 1, 1] from width 16).
    #[arg(long, default_value = "vit-b")]
    arch: String,
    #[arg(long)]
    depth: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    /// Patch size over the input (2 on 32x32 latents, as DiT-B/2).
    #[arg(long, default_value_t = 2)]
    patch: usize,
    #[command(flatten)]
    parts: super::PartsArgs,
    /// Image side when reading an image folder.
    #[arg(long, default_value_t = 32)]
    size: usize,
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
}

fn load(path: &std::path::Path, size: usize, device: &repdiff_engine::Device) -> Result<Dataset> {
    let data = if path.is_dir() {
        Dataset::from_image_folder(path, size, 1, device)?
    } else {
        Dataset::from_latent_file(path, device)?
    };
    if data.labels.is_none() {
        bail!("{} has no class labels", path.display());
    }
    Ok(data)
}

pub fn run(args: SupervisedArgs) -> Result<()> {
    let (device, device_note) = best_device();
    let train = load(&args.parts.train, args.size, &device)?;
    let validation = load(&args.parts.validation, args.size, &device)?;
    let (_, c, h, w) = train.samples.dims4()?;
    if h != w {
        bail!("square inputs only, not {h}x{w}");
    }
    let mut architecture = Architecture::named(&args.arch, h, c, args.patch)?;
    if let Architecture::Vit(m) = &mut architecture {
        m.depth = args.depth.unwrap_or(m.depth);
        m.hidden_size = args.width.unwrap_or(m.hidden_size);
        m.num_heads = args.heads.unwrap_or(m.num_heads);
    }
    let options = SupervisedOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        seed: args.parts.seed,
        ..Default::default()
    };
    let shape = architecture.describe();
    println!(
        "Training {shape} from scratch on {} images of {c}x{h}x{w}, {} epochs, on {device_note}",
        train.len(),
        options.epochs
    );
    let bar =
        progress_bar(options.epochs as u64, "{bar:40} {pos}/{len} epochs [{elapsed_precise}<{eta_precise}] {msg}");
    let cancel = super::interrupt::cancel_on_signal();
    let run = train_supervised(&architecture, &train, &validation, &options, &cancel, |e| {
        bar.set_position(e.epoch as u64);
        bar.set_message(format!("loss {:.4}, validation F1 {:.3}", e.loss, e.validation.f1));
    })?;
    bar.finish_and_clear();
    let best = &run.history[run.best_epoch - 1];
    println!(
        "Best validation epoch {} of {} (accuracy {:.3}, F1 {:.3}; training loss {:.4})",
        run.best_epoch, options.epochs, best.validation.accuracy, best.validation.f1, best.loss
    );
    let classes = train.num_classes().max(validation.num_classes()).max(2);
    let test = match &args.parts.test {
        Some(path) => {
            let data = load(path, args.size, &device)?;
            let truth = data.labels.clone().expect("checked in load");
            let predicted = predict(run.model.as_ref(), &data.samples, 64)?;
            let m = metrics(&truth, &predicted, classes)?;
            let intervals = bootstrap(&truth, &predicted, classes, 1000, 0.95, args.parts.seed)?;
            println!("\nTest ({} images):", truth.len());
            super::classify::print_metrics(&m, &intervals);
            Some(serde_json::json!({ "metrics": m, "intervals": intervals, "predicted": predicted }))
        }
        None => None,
    };
    if let Some(out) = &args.parts.out {
        let report = serde_json::json!({
            "architecture": architecture,
            "parameters": run.vars.num_parameters(),
            "options": options, "best_epoch": run.best_epoch, "history": run.history, "test": test,
        });
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("Report: {}", out.display());
    }
    Ok(())
}
