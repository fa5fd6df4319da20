//! Command-line interface: argument definitions and dispatch. Each command lives in its own module and is
//! a thin layer over `repdiff-engine`.

mod bench;
mod bench_imaging;
mod bench_queue;
mod classify;
mod encode;
mod evaluate;
mod explain;
mod import;
mod interrupt;
mod local;
mod phantoms;
mod probe;
mod progress;
mod reproduce;
mod run;
mod sample;
mod serve;
mod split;
mod supervised;
mod train;
mod worker;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use repdiff_engine::config::{ConditioningKind, Overrides, RunConfig};
use repdiff_engine::device::best_device;
use repdiff_engine::ops::MatmulPrecision;

pub use interrupt::interrupted;

/// `--split-unit`'s values: `patient` or `slice`.
fn split_unit(value: &str) -> Result<repdiff_api::jobs::SplitUnit, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|_| format!("{value:?} is not a split unit: patient or slice"))
}
pub use progress::progress_bar;

#[derive(Parser)]
#[command(
    name = "repdiff",
    version,
    about = "Representation-conditional latent diffusion for CT: train, sample, benchmark"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a DiT (from a folder of images, a latent file, or the toy set); resumes with --resume.
    Train(train::TrainArgs),
    /// Pre-train without labels: --mode uncond (unconditional) or rep (representation-conditional).
    Pretrain(train::PretrainArgs),
    /// Fine-tune a class-conditional DiT from a pre-trained checkpoint (prints what it transfers).
    Finetune(train::FinetuneArgs),
    /// Classify zero-shot with the diffusion classifier: a timestep sweep on validation, the chosen t on test.
    Classify(classify::ClassifyArgs),
    /// Draw samples from a checkpoint: PNG files, a grid, and the raw tensors.
    Sample(sample::SampleArgs),
    /// Generation metrics (FID, sFID, IS, precision/recall, density/coverage) and feature histograms of
    /// generated images (folders, or samples drawn from checkpoints) against real ones.
    Evaluate(evaluate::EvaluateArgs),
    /// The linear-probe baseline: logistic regression on a representation model's encoder features.
    Probe(probe::ProbeArgs),
    /// The supervised baseline: a ViT trained from scratch on the labelled data, its epoch chosen on
    /// validation.
    Supervised(supervised::SupervisedArgs),
    /// Denoise scans under each class from the same noisy latent and map the difference (Fig. 10).
    Counterfactual(explain::CounterfactualArgs),
    /// Draw samples and show the x0 predictions along the way (Fig. 11).
    Trajectory(explain::TrajectoryArgs),
    /// The paper's whole pipeline on a dataset (phantoms by default) as the server runs it, a graph of
    /// jobs on a queue of its own: pre-train, fine-tune, classify, the baselines, counterfactuals; writes
    /// the Table 6 analogue.
    Reproduce(reproduce::ReproduceArgs),
    /// Run one job of any kind from its spec (`{"kind": ..., "params": {...}}`, the body of POST
    /// /api/v1/jobs) on a data folder's queue, with a worker in this process: as the server would run it.
    Run(run::RunArgs),
    /// Measure DiT training/forward throughput, or with --imaging the data pipeline (import, encode).
    Bench(bench::BenchArgs),
    /// Train the tiny-cpu preset on the toy set and sample each class: the whole engine in a few minutes.
    Demo(DemoArgs),
    /// Generate synthetic brain-CT slices with the four hematoma markers and 12 sites.
    Phantoms(phantoms::PhantomArgs),
    /// Import scans (DICOM, NIfTI, PNG/JPEG) into a dataset folder: de-identified, with a manifest.
    Import(import::ImportArgs),
    /// Encode a dataset (or a part of its split) into a latent file for training; reused while unchanged.
    Encode(encode::EncodeArgs),
    /// Split a manifest as the paper does: pre-training sites vs a downstream site split 8:1:1 by label.
    Split(split::SplitArgs),
    /// Run the web application: REST API, frontend, and an in-process worker (embedded PostgreSQL when
    /// DATABASE_URL is unset).
    Serve(serve::ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    Admin(serve::AdminCommand),
    /// Run jobs from the queue (any number of workers, on any machine, sharing one database and store).
    Worker(worker::WorkerArgs),
    /// Print a preset's full configuration as JSON (a starting point for --config files).
    Config {
        #[arg(long, default_value = "tiny-cpu")]
        preset: String,
    },
}

/// The labelled parts a baseline reads: it fits on train, chooses on validation, reports on test.
#[derive(Args)]
pub struct PartsArgs {
    /// Labelled training data (a latent file with `labels`, or an image folder of class sub-folders).
    #[arg(long)]
    pub train: PathBuf,
    /// Labelled validation data: what the baseline keeps is chosen here (best F1).
    #[arg(long)]
    pub validation: PathBuf,
    /// Labelled test data, reported with bootstrap 95% intervals.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Seeds the baseline and the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CondArg {
    None,
    Class,
    /// The representation-conditional model (`repdiff pretrain --mode rep`).
    #[value(alias = "rep")]
    Representation,
}

/// Options shared by commands that build a run configuration.
#[derive(Args, Clone)]
pub struct ConfigArgs {
    /// Configuration preset: tiny-cpu (minutes on a CPU) or paper (DiT-B/2 on SD-VAE latents, for a GPU).
    #[arg(long, default_value = "tiny-cpu")]
    preset: String,
    /// A JSON run configuration (see `repdiff config`); overrides --preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A named model (DiT-S/2 ... DiT-XL/8) replacing the preset's architecture.
    #[arg(long)]
    model: Option<String>,
    /// Conditioning: none (unconditional), class (with a null class for guidance) or representation.
    #[arg(long, value_enum)]
    conditioning: Option<CondArg>,
    #[command(flatten)]
    schedule: ScheduleArgs,
}

/// Training settings a run may change (unset: the preset's, or the pre-training's for a fine-tune).
#[derive(Args, Clone, Default)]
pub struct ScheduleArgs {
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Training's matrix products: highest (f32), high (TF32 on a GPU, f32 on a CPU) or bf16 (bf16
    /// operands, f32 sums and weights: autocast on a GPU; faster on CPUs with AVX512-BF16 or AMX, f32 on
    /// other CPUs).
    #[arg(long, value_enum)]
    matmul_precision: Option<PrecisionArg>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PrecisionArg {
    Highest,
    High,
    Bf16,
}

impl From<PrecisionArg> for MatmulPrecision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Highest => MatmulPrecision::Highest,
            PrecisionArg::High => MatmulPrecision::High,
            PrecisionArg::Bf16 => MatmulPrecision::Bf16,
        }
    }
}

impl ScheduleArgs {
    /// Sets the given settings in `train`.
    pub fn apply(&self, train: &mut repdiff_engine::config::TrainConfig) {
        train.steps = self.steps.unwrap_or(train.steps);
        train.batch_size = self.batch_size.unwrap_or(train.batch_size);
        train.learning_rate = self.lr.unwrap_or(train.learning_rate);
        train.seed = self.seed.unwrap_or(train.seed);
        train.checkpoint_every = self.checkpoint_every.unwrap_or(train.checkpoint_every);
        if let Some(precision) = self.precision() {
            train.matmul_precision = precision;
        }
    }

    pub fn precision(&self) -> Option<MatmulPrecision> {
        self.matmul_precision.map(MatmulPrecision::from)
    }
}

impl ConfigArgs {
    /// The flags as the engine's [`Overrides`] (a config file is read here).
    pub fn overrides(&self) -> Result<Overrides> {
        let config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                Some(RunConfig::from_json(&text)?)
            }
            None => None,
        };
        Ok(Overrides {
            preset: Some(self.preset.clone()),
            config,
            model: self.model.clone(),
            conditioning: self.conditioning.map(|c| match c {
                CondArg::None => ConditioningKind::None,
                CondArg::Class => ConditioningKind::Class,
                CondArg::Representation => ConditioningKind::Representation,
            }),
            steps: self.schedule.steps,
            batch_size: self.schedule.batch_size,
            learning_rate: self.schedule.lr,
            seed: self.schedule.seed,
            checkpoint_every: self.schedule.checkpoint_every,
            matmul_precision: self.schedule.precision(),
        })
    }

    pub fn resolve(&self, num_classes: usize) -> Result<RunConfig> {
        Ok(self.overrides()?.resolve(num_classes)?)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    // Not where this thread waits on an async runtime whose threads do the work (the server, its workers,
    // the queue benchmark, `reproduce`'s in-process worker: a rayon loop of theirs would wait for this
    // thread, with one rayon thread forever).
    let async_or_waiting = match &cli.command {
        Command::Worker(_) | Command::Serve(_) | Command::Admin(_) | Command::Reproduce(_) | Command::Run(_) => true,
        Command::Bench(args) => args.queue.is_some(),
        _ => false,
    };
    if !async_or_waiting {
        compute_on_this_thread();
    }
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Pretrain(args) => train::pretrain(args),
        Command::Finetune(args) => train::finetune(args),
        Command::Classify(args) => classify::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Supervised(args) => supervised::run(args),
        Command::Counterfactual(args) => explain::counterfactual(args),
        Command::Trajectory(args) => explain::run_trajectory(args),
        Command::Sample(args) => sample::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Reproduce(args) => reproduce::run(args),
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo(args),
        Command::Phantoms(args) => phantoms::run(args),
        Command::Import(args) => import::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Split(args) => split::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Admin(command) => serve::admin(command),
        Command::Config { preset } => {
            println!("{}", serde_json::to_string_pretty(&RunConfig::preset(&preset)?)?);
            Ok(())
        }
    }
}

/// Makes this thread (the one that runs the command) worker 0 of rayon's global pool. The engine's parallel
/// loops and matrix products called from it then split between it and the pool's other threads; from
/// outside the pool each of them was handed to a pool thread while this one slept: two context switches
/// per loop (about 14,000 in 80 tiny-cpu training steps), and with one thread (`RAYON_NUM_THREADS=1`)
/// every loop of the model crossed to another thread and back.
fn compute_on_this_thread() {
    // Once per process: `demo` runs two commands in one, and the second finds the pool built.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
}

fn demo(args: DemoArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be positive");
    }
    let (_, device_note) = best_device();
    println!(
        "RepDiff demo: tiny-cpu DiT on 256 toy images (horizontal vs vertical bars), {} steps, on {device_note}",
        args.steps
    );
    let train_args = train::TrainArgs::toy_demo(&args.out, args.steps);
    train::run(train_args)?;
    let sample_args = sample::SampleArgs::demo(&args.out);
    sample::run(sample_args)?;
    println!(
        "\nOpen {} to see 8 samples of each class (top rows: horizontal, bottom rows: vertical).",
        args.out.join("samples/grid.png").display()
    );
    Ok(())
}

/// A password of 20 random letters and digits (a first admin's, or one nobody is to know).
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Logs to stderr; the level from `REPDIFF_LOG` (error, warn, info, debug, trace; default info).
pub fn init_logging() {
    init_logging_from(tracing_subscriber::filter::LevelFilter::INFO);
}

/// [`init_logging`] with `default` when `REPDIFF_LOG` is unset.
pub fn init_logging_from(default: tracing_subscriber::filter::LevelFilter) {
    let level = std::env::var("REPDIFF_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(default);
    let _ = tracing_subscriber::fmt().with_max_level(level).with_target(false).with_writer(std::io::stderr).try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
