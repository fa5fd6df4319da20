//! `repdiff train`, `repdiff pretrain --mode uncond|rep` and `repdiff finetune --from CKPT`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_engine::config::Conditioning;
use repdiff_engine::config::{DataSpace, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::device::best_device;
use repdiff_engine::finetune;
use repdiff_engine::train::{StopReason, Trainer};

use super::{CondArg, ConfigArgs, ScheduleArgs, progress_bar};

/// What to train on.
#[derive(Args, Clone)]
pub struct DataArgs {
    /// A folder of PNG/JPEG images; sub-folders are classes.
    #[arg(long, group = "source")]
    images: Option<PathBuf>,
    /// A safetensors file with `latents` [N, C, H, W] and optional `labels` [N].
    #[arg(long, group = "source")]
    latents: Option<PathBuf>,
    /// Generate N toy images (two classes: horizontal and vertical bars) at the model's input size.
    #[arg(long, group = "source")]
    toy: Option<usize>,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Run folder: checkpoint.safetensors, config.json, metrics.csv.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue the run in --out from its checkpoint (same data required).
    #[arg(long)]
    resume: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Mode {
    /// The unconditional model (no label; the paper's Fig. 2).
    Uncond,
    /// The representation-conditional model (a ViT encodes the clean latent; the paper's Fig. 3).
    Rep,
}

/// `repdiff pretrain`: `train` without labels, unconditional or representation-conditional.
#[derive(Args)]
pub struct PretrainArgs {
    #[arg(long, value_enum)]
    mode: Mode,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// The pre-trained checkpoint (unconditional or representation-conditional) to start from.
    #[arg(long)]
    from: PathBuf,
    /// Start from its raw weights instead of their EMA.
    #[arg(long)]
    raw_weights: bool,
    /// Label dropout probability (a null class for classifier-free guidance; 0 for none).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f64,
    #[command(flatten)]
    schedule: ScheduleArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Run folder: checkpoint.safetensors, config.json, metrics.csv, transfer.txt.
    #[arg(long, default_value = "runs/finetune")]
    out: PathBuf,
    /// Continue the fine-tune in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
}

impl TrainArgs {
    pub fn toy_demo(out: &Path, steps: usize) -> Self {
        TrainArgs {
            config: ConfigArgs {
                preset: "tiny-cpu".into(),
                config: None,
                model: None,
                conditioning: None,
                schedule: ScheduleArgs { steps: Some(steps), ..ScheduleArgs::default() },
            },
            data: DataArgs { images: None, latents: None, toy: Some(256) },
            out: out.to_path_buf(),
            resume: false,
        }
    }
}

fn load_data(args: &DataArgs, config: &RunConfig, device: &repdiff_engine::Device) -> Result<Dataset> {
    let (c, size, _) = config.model.sample_dims();
    if let Some(dir) = &args.images {
        if config.data_space != DataSpace::Pixels {
            bail!(
                "--images trains in pixel space, but this config expects {:?} latents: encode them first, or use --preset tiny-cpu",
                config.data_space
            );
        }
        return Ok(Dataset::from_image_folder(dir, size, c, device)?);
    }
    if let Some(path) = &args.latents {
        return Ok(Dataset::from_latent_file(path, device)?);
    }
    if let Some(n) = args.toy {
        if c != 1 {
            bail!("the toy set is grey (1 channel) but the model takes {c} channels");
        }
        return Ok(Dataset::toy_bars(n, size, 1234, device)?);
    }
    bail!("say what to train on: --images DIR, --latents FILE or --toy N")
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (device, device_note) = best_device();
    let ckpt = args.out.join("checkpoint.safetensors");
    let trainer = if args.resume {
        let mut trainer =
            Trainer::resume(&ckpt, &device).with_context(|| format!("resuming from {}", ckpt.display()))?;
        if args.config.overrides()?.changes_run() {
            bail!(
                "--resume continues the run as configured; only --steps, --checkpoint-every and --matmul-precision may change"
            );
        }
        // The run's length and checkpoint cadence may change; everything else is the checkpoint's.
        if let Some(steps) = args.config.schedule.steps {
            trainer.config.train.steps = steps;
        }
        if let Some(every) = args.config.schedule.checkpoint_every {
            trainer.config.train.checkpoint_every = every;
        }
        if let Some(precision) = args.config.schedule.precision() {
            trainer.config.train.matmul_precision = precision;
        }
        println!("Resuming {} at step {}", args.out.display(), trainer.step());
        trainer
    } else {
        if ckpt.exists() {
            bail!("{} already holds a run: pass --resume to continue it, or choose another --out", args.out.display());
        }
        // Resolve once without data to learn the input size, then again with the data's class count.
        let probe = args.config.resolve(0)?;
        let data = load_data(&args.data, &probe, &device)?;
        let config = args.config.resolve(data.num_classes())?;
        if config.model.num_classes().is_some() && data.labels.is_none() {
            bail!(
                "the data has no class labels (no class sub-folders, or no `labels` tensor) but the model is \
                 class-conditional: add labels, or pre-train unconditionally with --conditioning none"
            );
        }
        Trainer::new(config, &device)?
    };
    let data = load_data(&args.data, &trainer.config, &device)?;
    fit(trainer, &data, &args.out, args.resume, &device_note)
}

pub fn pretrain(mut args: PretrainArgs) -> Result<()> {
    if args.train.config.conditioning.is_some() {
        bail!("pretrain sets the conditioning from --mode; leave --conditioning out");
    }
    if args.train.resume {
        // The checkpoint holds the conditioning: check that it is the mode asked for.
        let ckpt = args.train.out.join("checkpoint.safetensors");
        let (device, _) = best_device();
        let config = repdiff_engine::checkpoint::Checkpoint::read(&ckpt, &device)
            .with_context(|| format!("resuming from {}", ckpt.display()))?
            .config()?;
        let is_rep = config.model.is_representation();
        if is_rep != matches!(args.mode, Mode::Rep) || config.model.num_classes().is_some() {
            bail!("{} is not a {:?} pre-training run: {:?}", ckpt.display(), args.mode, config.model.conditioning);
        }
        return run(args.train);
    }
    args.train.config.conditioning = Some(match args.mode {
        Mode::Uncond => CondArg::None,
        Mode::Rep => CondArg::Representation,
    });
    run(args.train)
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    let (device, device_note) = best_device();
    let ckpt = args.out.join("checkpoint.safetensors");
    if args.resume {
        let trainer = Trainer::resume(&ckpt, &device).with_context(|| format!("resuming from {}", ckpt.display()))?;
        println!("Resuming {} at step {}", args.out.display(), trainer.step());
        let data = load_data(&args.data, &trainer.config, &device)?;
        return fit(trainer, &data, &args.out, true, &device_note);
    }
    if ckpt.exists() {
        bail!("{} already holds a run: pass --resume to continue it, or choose another --out", args.out.display());
    }
    let source = repdiff_engine::checkpoint::Checkpoint::read(&args.from, &device)
        .with_context(|| format!("reading {}", args.from.display()))?
        .config()?;
    let data = load_data(&args.data, &source, &device)?;
    let num_classes = data.num_classes();
    if data.labels.is_none() || num_classes == 0 {
        bail!("fine-tuning needs class labels: class sub-folders of --images, or a `labels` tensor in --latents");
    }
    // The pre-training's run, made class-conditional, with the flags' training settings.
    let mut config = source.clone();
    config.model.conditioning = Conditioning::Class { num_classes, dropout_prob: args.label_dropout };
    args.schedule.apply(&mut config.train);
    config.validate()?;
    let (transfer, _) =
        finetune::from_checkpoint(&args.from, &config.model, config.train.seed, args.raw_weights, &device)?;
    println!("Fine-tuning from {} ({:?}):\n{}", args.from.display(), source.model.conditioning, transfer.table);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("transfer.txt"), format!("{}\n", transfer.table))?;
    let trainer = Trainer::from_weights(config, transfer.weights, &device)?;
    fit(trainer, &data, &args.out, false, &device_note)
}

/// Trains `trainer` on `data` to its configured step count, writing the run folder `out`.
fn fit(mut trainer: Trainer, data: &Dataset, out: &Path, resume: bool, device_note: &str) -> Result<()> {
    let config = trainer.config.clone();
    let ckpt = out.join("checkpoint.safetensors");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config)?)?;

    let m = &config.model;
    println!(
        "Training {}x{}x{} inputs, DiT depth {} width {} heads {} patch {} ({:.2}M parameters), {:?}",
        m.in_channels,
        m.input_size,
        m.input_size,
        m.depth,
        m.hidden_size,
        m.num_heads,
        m.patch_size,
        trainer.vars().num_parameters() as f64 / 1e6,
        m.conditioning
    );
    println!(
        "Data: {} samples{}; device: {device_note}",
        data.len(),
        if data.class_names.is_empty() { String::new() } else { format!(", classes {:?}", data.class_names) }
    );
    if let Some(note) = trainer.bf16_note() {
        println!("{note}");
    }

    let total = config.train.steps;
    if trainer.step() >= total {
        println!("Nothing to do: the run is at step {} of {total}. Raise --steps to train further.", trainer.step());
        return Ok(());
    }
    let metrics_path = out.join("metrics.csv");
    let new_file = !metrics_path.exists() || !resume;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(resume)
        .write(true)
        .truncate(!resume)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    if new_file {
        writeln!(metrics, "step,loss,mse,vb,grad_norm")?;
    }

    let cancel = super::interrupt::cancel_on_signal();
    let bar = progress_bar(total as u64, "{bar:40} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}");
    bar.set_position(trainer.step() as u64);
    let mut smoothed: Option<f32> = None;
    let started = Instant::now();
    let mut io_error = None;
    let summary = trainer.run(data, total, Some(&ckpt), &cancel, |s| {
        if let Err(e) = writeln!(metrics, "{},{},{},{},{}", s.step, s.loss, s.mse, s.vb, s.grad_norm) {
            io_error.get_or_insert(e);
        }
        let ema = smoothed.map_or(s.loss, |v| 0.98 * v + 0.02 * s.loss);
        smoothed = Some(ema);
        bar.set_position(s.step as u64);
        bar.set_message(format!("loss {ema:.4} (mse {:.4}, vb {:.4})", s.mse, s.vb));
    })?;
    match summary.stop {
        StopReason::Finished => bar.finish(),
        // Where it stopped, not a full bar.
        StopReason::Cancelled => bar.abandon(),
    }
    if let Some(e) = io_error {
        return Err(e).context("writing metrics.csv");
    }
    let rate = summary.steps_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "\n{}",
        match summary.stop {
            StopReason::Finished => "Finished.",
            StopReason::Cancelled => "Cancelled: the checkpoint holds every finished step; continue with --resume.",
        }
    );
    println!("  steps        {} (this session {}, {rate:.2} steps/s)", summary.step, summary.steps_run);
    if let (Some(first), Some(last)) = (summary.first_loss, summary.last_loss) {
        println!(
            "  loss         {first:.4} at the first step, {last:.4} at the last (smoothed {:.4})",
            smoothed.unwrap_or(last)
        );
    }
    println!("  checkpoint   {}", ckpt.display());
    println!("  metrics      {}", metrics_path.display());
    Ok(())
}
