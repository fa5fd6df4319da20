//! `repdiff counterfactual` and `repdiff trajectory`: where a class-conditional model puts the haematoma
//! (the paper's Figs. 10 and 11).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use repdiff_engine::data::Dataset;
use repdiff_engine::device::best_device;
use repdiff_engine::explain::{
    CounterfactualOptions, counterfactuals, trajectory, write_counterfactuals, write_trajectory,
};
use repdiff_engine::sample::{Weights, load_model};

use super::progress_bar;
use super::sample::{Prepared, SampleArgs, prepare};

#[derive(Args)]
pub struct CounterfactualArgs {
    /// A class-conditional checkpoint (`repdiff finetune`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The scans: a latent file (`repdiff encode`) or a folder of images at the model's size.
    #[arg(long)]
    data: PathBuf,
    /// How many of the scans (the first ones).
    #[arg(long, short = 'n', default_value_t = 8)]
    num: usize,
    /// The noise level to go up to, of the model's T steps (the nearest DDIM step at or below is used).
    #[arg(long, default_value_t = 500)]
    t: usize,
    /// DDIM steps over the whole process (those below t are run).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (1 = none); larger makes the classes' differences stronger.
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Use the raw weights instead of their EMA.
    #[arg(long)]
    raw_weights: bool,
    /// Where pretrained weights live (the SD VAE that decodes latents).
    #[arg(long, default_value = "model-weights")]
    weights_dir: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "runs/counterfactuals")]
    out: PathBuf,
}

pub fn counterfactual(args: CounterfactualArgs) -> Result<()> {
    let (device, device_note) = best_device();
    let weights = if args.raw_weights { Weights::Raw } else { Weights::Ema };
    let (model, config) = load_model(&args.checkpoint, weights, &device)?;
    let (c, size, _) = config.model.sample_dims();
    let data = if args.data.is_dir() {
        Dataset::from_image_folder(&args.data, size, c, &device)?
    } else {
        Dataset::from_latent_file(&args.data, &device)?
    };
    let n = args.num.min(data.len());
    anyhow::ensure!(n > 0, "{} holds no images", args.data.display());
    let options = CounterfactualOptions {
        t: args.t,
        steps: args.steps,
        guidance_scale: args.guidance,
        seed: args.seed,
        batch_size: args.batch_size,
        clip_denoised: None,
        cancel: super::interrupt::cancel_on_signal(),
    };
    println!("Counterfactuals of {n} scans at t = {} (guidance {}) on {device_note}", args.t, args.guidance);
    let bar = progress_bar(1, "{bar:40} {pos}/{len} denoising steps [{elapsed_precise}<{eta_precise}]");
    let cf = counterfactuals(&model, &config, &data.samples.narrow(0, 0, n)?, &options, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let report = write_counterfactuals(&cf, &config, &args.weights_dir, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let labels = data.labels.as_ref();
    println!(
        "Noised to t = {}; each row: original | under each class | last class - class 0 (red: brighter)",
        report.t
    );
    println!("| scan | label | mean abs difference |");
    println!("|---|---|---|");
    for (i, d) in report.mean_abs_difference.iter().enumerate() {
        let label = labels.map_or("-".to_string(), |l| l[i].to_string());
        println!("| {i} | {label} | {d:.4} |");
    }
    println!("\nWrote {} rows, {} and counterfactuals.json", report.rows.len(), report.grid.display());
    if let Some(note) = report.note {
        println!("  note  {note}");
    }
    Ok(())
}

#[derive(Args)]
pub struct TrajectoryArgs {
    #[command(flatten)]
    sample: SampleArgs,
    /// x0 predictions to show per sample, evenly spaced from the first step to the last.
    #[arg(long, default_value_t = 8)]
    frames: usize,
}

pub fn run_trajectory(args: TrajectoryArgs) -> Result<()> {
    let Prepared { model, config, options, device, device_note, sampler } = prepare(&args.sample)?;
    println!(
        "Trajectories of {} samples with {sampler:?}, {} frames each, on {device_note}",
        options.num_samples, args.frames
    );
    let bar = progress_bar(1, "{bar:40} {pos}/{len} denoising steps [{elapsed_precise}<{eta_precise}]");
    let traj = trajectory(&model, &config, &options, args.frames, &device, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let (rows, grid, note) = write_trajectory(&traj, &config, &args.sample.weights_dir, &args.sample.out)?;
    println!("Frames at t = {:?} (x0 predictions, noisiest first)", traj.timesteps);
    println!("Wrote {} rows and {}", rows.len(), grid.display());
    if let Some(note) = note {
        println!("  note  {note}");
    }
    Ok(())
}
