//! `repdiff encode`: a dataset (or one part of its split) to a latent file, reused while nothing changed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use repdiff_engine::autoencoder::{self, Posterior};
use repdiff_engine::device::best_device;
use repdiff_engine::imaging::{Channels, Window};
use repdiff_engine::latent_cache::{CacheOutcome, EncodeSpec, encode_dataset};
use repdiff_engine::manifest::Part;

use super::progress_bar;

#[derive(Clone, Copy, ValueEnum)]
enum PosteriorArg {
    Sample,
    Mean,
}

#[derive(Clone, Copy, ValueEnum)]
enum PartArg {
    Pretrain,
    Train,
    Validation,
    Test,
}

#[derive(Args)]
pub struct EncodeArgs {
    /// A dataset's manifest.csv (from `repdiff import`) or a split.csv (from `repdiff split`).
    #[arg(long)]
    manifest: PathBuf,
    /// The latent file to write (or reuse); default: latents[-PART].safetensors beside the manifest.
    #[arg(long)]
    out: Option<PathBuf>,
    /// pixels (no autoencoder, for CPU runs), sd-vae-ft-ema or sd-vae-ft-mse (from model-weights/).
    #[arg(long, default_value = "pixels")]
    autoencoder: String,
    /// Where pretrained weights live.
    #[arg(long, default_value = "model-weights")]
    weights_dir: PathBuf,
    /// CT window: brain, subdural, soft-tissue, bone or LEVEL/WIDTH. Three comma-separated windows stack
    /// as RGB channels (e.g. brain,subdural,bone).
    #[arg(long, default_value = "brain")]
    window: String,
    /// Image side before encoding; default 32 in pixel space, 256 for the SD VAE (32x32 latents, as the paper).
    #[arg(long)]
    size: Option<usize>,
    /// Pixel-space channels for a single window: 1 (grey) or 3 (replicated).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Encode to a posterior draw (as DiT does) or its mean.
    #[arg(long, value_enum, default_value = "sample")]
    posterior: PosteriorArg,
    /// Only this part of a split.
    #[arg(long, value_enum)]
    part: Option<PartArg>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
}

pub fn run(args: EncodeArgs) -> Result<()> {
    let windows = args.window.split(',').map(Window::parse).collect::<repdiff_engine::Result<Vec<_>>>()?;
    let vae = args.autoencoder != "pixels";
    let channels = match windows[..] {
        [window] => Channels::Window { window, copies: if vae { 3 } else { args.channels } },
        [a, b, c] => Channels::Stacked([a, b, c]),
        _ => bail!("--window takes one window or three (stacked as RGB), got {}", windows.len()),
    };
    let (device, device_note) = best_device();
    println!("Device: {device_note}");
    let model = autoencoder::by_name(&args.autoencoder, channels.count(), &args.weights_dir, &device)?;
    let spec = EncodeSpec {
        channels,
        size: args.size.unwrap_or(if vae { 256 } else { 32 }),
        posterior: match args.posterior {
            PosteriorArg::Sample => Posterior::Sample,
            PosteriorArg::Mean => Posterior::Mean,
        },
        seed: args.seed,
        part: args.part.map(|p| match p {
            PartArg::Pretrain => Part::Pretrain,
            PartArg::Train => Part::Train,
            PartArg::Validation => Part::Validation,
            PartArg::Test => Part::Test,
        }),
        batch_size: args.batch_size,
    };
    let default_name = match spec.part {
        Some(part) => format!("latents-{}.safetensors", part.name()),
        None => "latents.safetensors".into(),
    };
    let out = args.out.unwrap_or_else(|| args.manifest.with_file_name(default_name));
    let started = Instant::now();
    let bar = progress_bar(0, "encoding {bar:30} {pos}/{len} slices {per_sec} eta {eta}");
    let outcome = encode_dataset(
        &args.manifest,
        &spec,
        model.as_ref(),
        &out,
        &device,
        &super::interrupt::cancel_on_signal(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let (c, h, w) = model.latent_dims(spec.size);
    match outcome {
        CacheOutcome::Reused { slices } => {
            println!("{} is up to date: {slices} slices, same scans, labels, settings and weights", out.display());
        }
        CacheOutcome::Encoded { slices } => {
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "Encoded {slices} slices with {} to {} ({c}x{h}x{w} each) in {seconds:.1} s ({:.1} slices/s)",
                model.id(),
                out.display(),
                slices as f64 / seconds.max(1e-9)
            );
        }
    }
    println!("  train on  repdiff train --latents {}", out.display());
    Ok(())
}
