//! `repdiff sample`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use repdiff_api::jobs::Sampler;
use repdiff_engine::device::best_device;
use repdiff_engine::diffusion::SamplerKind;
use repdiff_engine::sample::{SampleOptions, Weights, load_model, sample, write_samples};
use repdiff_server::jobs::sampler_kind;

use super::progress_bar;

#[derive(Args)]
pub struct SampleArgs {
    /// A checkpoint written by `repdiff train`.
    #[arg(long)]
    pub(super) checkpoint: PathBuf,
    /// Number of samples.
    #[arg(long, short = 'n', default_value_t = 16)]
    pub(super) num: usize,
    /// Classes, comma-separated (cycled over the samples); default: all classes in turn.
    #[arg(long, value_delimiter = ',')]
    pub(super) class: Vec<u32>,
    /// Classifier-free guidance scale (1 = none).
    #[arg(long, default_value_t = 1.0)]
    pub(super) guidance: f64,
    /// ddim (the default, as a sample job's) or ddpm (ancestral; the paper samples 250 steps of it).
    #[arg(long, default_value = "ddim", value_parser = str::parse::<Sampler>)]
    pub(super) sampler: Sampler,
    /// Denoising steps (respaced from the trained T); 50 as a sample job's.
    #[arg(long, default_value_t = repdiff_api::jobs::default_sampling_steps())]
    pub(super) steps: usize,
    /// DDIM stochasticity (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub(super) eta: f64,
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    #[arg(long, default_value_t = 16)]
    pub(super) batch_size: usize,
    /// Do not clamp x0 predictions to [-1, 1] while sampling (clamping is on for pixel-space models).
    #[arg(long)]
    pub(super) no_clip: bool,
    /// Use the raw weights instead of their EMA.
    #[arg(long)]
    pub(super) raw_weights: bool,
    /// Reference images for a representation-conditional model (sample i is a variation of reference i,
    /// cycled): a latent file (`latents` [M, C, H, W]) or a folder of images at the model's size.
    #[arg(long)]
    pub(super) references: Option<PathBuf>,
    /// Where pretrained weights live (the SD VAE that decodes latent-space samples).
    #[arg(long, default_value = "model-weights")]
    pub(super) weights_dir: PathBuf,
    /// Output folder (PNG per sample, grid.png, samples.safetensors).
    #[arg(long, default_value = "runs/samples")]
    pub(super) out: PathBuf,
}

impl SampleArgs {
    pub fn demo(run: &Path) -> Self {
        SampleArgs {
            checkpoint: run.join("checkpoint.safetensors"),
            num: 16,
            class: vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
            guidance: 2.0,
            sampler: Sampler::Ddim,
            steps: 50,
            eta: 0.0,
            seed: 0,
            batch_size: 16,
            raw_weights: false,
            references: None,
            no_clip: false,
            weights_dir: "model-weights".into(),
            out: run.join("samples"),
        }
    }
}

/// The model, its configuration and the sampling options the arguments ask for, on the best device.
pub struct Prepared {
    pub model: repdiff_engine::dit::Dit,
    pub config: repdiff_engine::config::RunConfig,
    pub options: SampleOptions,
    pub device: repdiff_engine::Device,
    pub device_note: String,
    pub sampler: SamplerKind,
}

pub fn prepare(args: &SampleArgs) -> Result<Prepared> {
    let (device, device_note) = best_device();
    let weights = if args.raw_weights { Weights::Raw } else { Weights::Ema };
    let (model, config) = load_model(&args.checkpoint, weights, &device)?;
    let (sampler, respacing) = sampler_kind(args.sampler, args.steps, args.eta);
    if args.steps == 0 || args.steps > config.diffusion.num_timesteps {
        bail!("--steps must be between 1 and the model's {} diffusion steps", config.diffusion.num_timesteps);
    }
    if config.model.is_representation() && args.references.is_none() {
        bail!(
            "{} is a representation-conditional model: it samples variations of reference images, pass --references FILE|DIR",
            args.checkpoint.display()
        );
    }
    let options = SampleOptions {
        num_samples: args.num,
        labels: (!args.class.is_empty()).then(|| args.class.clone()),
        guidance_scale: args.guidance,
        sampler,
        respacing,
        seed: args.seed,
        batch_size: args.batch_size,
        clip_denoised: args.no_clip.then_some(false),
        cancel: super::interrupt::cancel_on_signal(),
        references: match &args.references {
            None => None,
            Some(path) => {
                let (c, size, _) = config.model.sample_dims();
                let data = if path.is_dir() {
                    repdiff_engine::data::Dataset::from_image_folder(path, size, c, &device)?
                } else {
                    repdiff_engine::data::Dataset::from_latent_file(path, &device)?
                };
                Some(data.samples)
            }
        },
    };
    Ok(Prepared { model, config, options, device, device_note, sampler })
}

pub fn run(args: SampleArgs) -> Result<()> {
    let Prepared { model, config, options, device, device_note, sampler } = prepare(&args)?;
    println!(
        "Sampling {} images with {:?} over {} steps (guidance {}) on {device_note}",
        args.num, sampler, args.steps, args.guidance
    );
    let bar = progress_bar(1, "{bar:40} {pos}/{len} denoising steps [{elapsed_precise}<{eta_precise}]");
    let (samples, labels) = sample(&model, &config, &options, &device, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();

    let written = write_samples(&samples, labels.as_deref(), &config, &args.weights_dir, &args.out)?;
    println!("\nWrote {} samples to {}", written.images.len(), args.out.display());
    if let Some(grid) = &written.grid {
        println!("  grid     {}", grid.display());
    }
    println!("  tensors  {}", written.tensors.display());
    if let Some(note) = written.note {
        println!("  note     {note}");
    }
    Ok(())
}
