//! `repdiff reproduce`: the paper's whole pipeline in one command, as the server runs it. The flags (or
//! `--spec FILE.json`, a `reproduce` job's parameters as the API takes them) make the pipeline's typed
//! parameters; its stages (pre-trainings, fine-tunings, diffusion classifiers, class fidelity, generation
//! metrics, counterfactuals, probes, supervised baselines; per seed) are submitted as a graph of jobs to a
//! queue in OUT ([`super::local`]: an embedded PostgreSQL and artifact store, as `repdiff serve --data-dir
//! OUT` keeps them) and run by a worker in this process, `--jobs` at once, each as soon as the stages it
//! reads have finished. The same parameters again find the same pipeline: finished stages are kept,
//! interrupted ones go on from their last checkpoint, failed ones run again. The report is the pipeline
//! job's result, written as OUT/table6.md and table6.json, with every stage's result beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use repdiff_api::jobs::{ImportParams, JobSpec, MatmulPrecision, ReproduceParams, SplitUnit};
use repdiff_api::{JobState, ReproduceReport, SubmitJob};
use repdiff_server::queue;

use super::PrecisionArg;
use super::local::{Ended, Local, on_local_queue};
use super::worker::WorkerArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReproducePreset {
    /// The tiny-cpu model on 32x32 pixels, short schedules: under half an hour on 2 CPU cores.
    TinyCpu,
    /// The paper's: DiT-B/2 on SD-VAE latents of 256x256 slices (weights in model-weights/), 1,000 epochs,
    /// 512 noise draws: for a GPU.
    Paper,
}

/// The flags that set the pipeline's parameters (`--spec` gives them all at once instead).
const PARAMETER_FLAGS: [&str; 15] = [
    "preset",
    "phantoms",
    "phantom_slices_per_patient",
    "downstream_site",
    "single_site",
    "split_unit",
    "pretrain_steps",
    "finetune_steps",
    "supervised_epochs",
    "draws",
    "eval_samples",
    "class_samples",
    "matmul_precision",
    "seed",
    "seeds",
];

#[derive(Args)]
pub struct ReproduceArgs {
    #[arg(long, value_enum, default_value = "tiny-cpu")]
    preset: ReproducePreset,
    /// A dataset folder holding manifest.csv (`repdiff import`'s output), imported into OUT's store once;
    /// default: synthetic phantoms, some from random sites and more from the downstream site.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Phantom slices from random sites, and more from the downstream site in the preset's proportion
    /// (tiny-cpu 600 and 1,500, paper 2,400 and 1,200; default: the preset's).
    #[arg(long, conflicts_with = "data")]
    phantoms: Option<usize>,
    /// The phantoms as patients of this many neighbouring, nearly identical slices: with
    /// `--split-unit slice` a patient's slices land in train and test, which measures the leak.
    #[arg(long, conflicts_with = "data")]
    phantom_slices_per_patient: Option<usize>,
    /// The site whose slices form the downstream task; every other site pre-trains.
    #[arg(long, default_value_t = 1)]
    downstream_site: usize,
    /// A single-site design: every slice is split into train, validation and test, and pre-training reads
    /// the training part.
    #[arg(long, conflicts_with = "downstream_site")]
    single_site: bool,
    /// What the downstream split keeps together: `patient` (no patient in two parts) or `slice` (the paper's).
    #[arg(long, default_value = "patient", value_parser = super::split_unit)]
    split_unit: SplitUnit,
    /// Pre-training steps (default: the preset's).
    #[arg(long)]
    pretrain_steps: Option<usize>,
    /// Fine-tuning steps (default: the preset's).
    #[arg(long)]
    finetune_steps: Option<usize>,
    /// Epochs of both supervised baselines, the ViT and the ResNet (default: the preset's for each).
    #[arg(long)]
    supervised_epochs: Option<usize>,
    /// Noise draws per image, the most a sequentially stopped image takes (default: the preset's).
    #[arg(long)]
    draws: Option<usize>,
    /// Samples drawn from each pre-trained model for the Table 5 analogue (generation metrics against
    /// the pre-training images; default: the preset's; 0 leaves Table 5 out).
    #[arg(long)]
    eval_samples: Option<usize>,
    /// Samples per class drawn from each fine-tuned model and classified by the other fine-tuned model's
    /// diffusion classifier: do its class-1 samples show what makes a slice class 1? (default: the
    /// preset's; 0 leaves it out)
    #[arg(long)]
    class_samples: Option<usize>,
    /// Matrix products of the training stages (pre-training and fine-tuning, two thirds of tiny-cpu's CPU
    /// time): highest (f32, the default: the same tables on every CPU) or bf16 (bf16 operands, f32 sums:
    /// tiny-cpu training about 1.3x faster with AVX512-BF16, more with AMX; f32 on other CPUs). The
    /// classifier, the samplers and the metrics stay in f32.
    #[arg(long, value_enum)]
    matmul_precision: Option<PrecisionArg>,
    /// Seeds the phantoms, the split, the training runs and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Runs the pipeline for N seeds, SEED to SEED + N - 1, and reports every method's test accuracy and
    /// F1 per seed with their mean and spread, and the two diffusion classifiers' paired difference. At
    /// tiny-cpu's scale one seed's ordering of the methods is within the training noise.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
    seeds: Option<u16>,
    /// The pipeline's parameters as JSON: a `reproduce` job's `params`, as `POST /api/v1/jobs` takes them
    /// (no `dataset`: give --data), instead of the flags that set them.
    #[arg(long, conflicts_with_all = PARAMETER_FLAGS)]
    spec: Option<PathBuf>,
    /// How many stages run at once, each on its share of the cores, each the next whose inputs have
    /// finished. Side by side suits small models: a tiny-cpu training stage hardly uses a second core.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    #[arg(long, default_value = "model-weights")]
    weights_dir: PathBuf,
    /// The pipeline's folder: its queue and artifacts, the report, each stage's result.
    #[arg(long, default_value = "runs/reproduce")]
    out: PathBuf,
}

impl ReproduceArgs {
    /// The pipeline's parameters (its dataset, for --data, is set once the data is imported).
    fn params(&self) -> Result<ReproduceParams> {
        if let Some(path) = &self.spec {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let p: ReproduceParams =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            if p.dataset.is_some() {
                bail!(
                    "{}: `dataset` names a server's dataset; here the data is a folder: give --data DIR",
                    path.display()
                );
            }
            return Ok(p);
        }
        Ok(ReproduceParams {
            preset: self.preset.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
            dataset: None,
            phantoms: self.phantoms,
            phantom_slices_per_patient: self.phantom_slices_per_patient,
            downstream_site: (!self.single_site).then_some(self.downstream_site),
            split_unit: self.split_unit,
            pretrain_steps: self.pretrain_steps,
            finetune_steps: self.finetune_steps,
            supervised_epochs: self.supervised_epochs,
            draws: self.draws,
            eval_samples: self.eval_samples,
            class_samples: self.class_samples,
            seed: self.seed,
            seeds: self.seeds.map(usize::from),
            matmul_precision: self.matmul_precision.map(|p| match p {
                PrecisionArg::Highest => MatmulPrecision::Highest,
                PrecisionArg::High => MatmulPrecision::High,
                PrecisionArg::Bf16 => MatmulPrecision::Bf16,
            }),
        })
    }

    /// The queue's settings: OUT is its data folder; the data folder, if any, the only one it imports from.
    fn queue(&self, data: Option<PathBuf>) -> WorkerArgs {
        WorkerArgs {
            database_url: None,
            data_dir: self.out.clone(),
            store: None,
            concurrency: usize::from(self.jobs),
            kinds: Vec::new(),
            lease_secs: 120.0,
            poll_secs: 5.0,
            rescue_secs: 30.0,
            weights_dir: self.weights_dir.clone(),
            import_root: data.into_iter().collect(),
            deid_key: None,
        }
    }
}

pub fn run(args: ReproduceArgs) -> Result<()> {
    super::init_logging_from(tracing_subscriber::filter::LevelFilter::WARN);
    let mut params = args.params()?;
    params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = match &args.data {
        Some(dir) => {
            if !dir.join("manifest.csv").is_file() {
                bail!(
                    "{} has no manifest.csv: give a folder written by `repdiff import` (or leave --data out)",
                    dir.display()
                );
            }
            Some(dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?)
        }
        None => None,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    on_local_queue(args.queue(data.clone()), async |local| {
        if let Some(dir) = &data {
            match import(local, dir).await? {
                Some(dataset) => params.dataset = Some(dataset),
                None => return Ok(true),
            }
        }
        reproduce(local, &args, &params).await
    })
}

/// Imports the dataset folder `dir` into the queue's store (once: the same folder again finds it); returns
/// its dataset, or `None` when interrupted.
async fn import(local: &Local, dir: &Path) -> Result<Option<i64>> {
    let user = local.user(None).await?;
    let path = dir.display().to_string();
    let existing =
        sqlx::query_scalar!("SELECT id FROM datasets WHERE owner_id = $1 AND description = $2", user.id, path)
            .fetch_optional(&local.pool)
            .await?;
    let dataset = match existing {
        Some(id) => id,
        None => {
            let name = dir.file_name().map_or("data".into(), |n| n.to_string_lossy().into_owned());
            sqlx::query_scalar!(
                "INSERT INTO datasets (owner_id, name, description) VALUES ($1, $2, $3) RETURNING id",
                user.id,
                name,
                path
            )
            .fetch_one(&local.pool)
            .await?
        }
    };
    let labels = dir.join("manifest.csv").display().to_string();
    let spec = JobSpec::Import(ImportParams { labels: Some(labels), ..ImportParams::new(dataset, path.clone()) });
    let (job, created) = local.submit(&user, &submission(spec), &format!("import:{dataset}")).await?;
    match job.state {
        JobState::Succeeded => return Ok(Some(dataset)),
        JobState::Failed | JobState::Cancelled => {
            queue::retry(&local.pool, job.id).await?;
        }
        _ => {}
    }
    if created {
        println!("Importing {path} (job {})", job.id);
    }
    match local.follow(job.id).await? {
        Ended::Interrupted => Ok(None),
        Ended::Finished(job) if job.state == JobState::Succeeded => {
            let result = job.result.unwrap_or_default();
            println!("Imported {} slices of {} files", result["slices"], result["files"]);
            Ok(Some(dataset))
        }
        Ended::Finished(job) => bail!("importing {path} {}: {}", job.state.as_str(), job.error.unwrap_or_default()),
    }
}

/// Submits the pipeline (or finds it, submitted before with the same parameters), runs it and writes its
/// report; returns whether it was interrupted.
async fn reproduce(local: &Local, args: &ReproduceArgs, params: &ReproduceParams) -> Result<bool> {
    let dino = args.weights_dir.join(repdiff_engine::dino::WEIGHTS_FILE).exists();
    let spec = JobSpec::Reproduce(params.clone());
    let key = format!("reproduce:{}", spec.params());
    let user = local.user(None).await?;
    let (job, created) = local.submit(&user, &submission(spec), &key).await?;
    let stages = queue::followed(&local.pool, job.id).await?.len() - 1;
    if created {
        println!("Pipeline {} in {}: {stages} stages, {} at a time", job.id, args.out.display(), args.jobs);
        if !dino {
            println!(
                "(no {} in {}: the DINOv2 probe is left out of Table 6; see model-weights/README.md)",
                repdiff_engine::dino::WEIGHTS_FILE,
                args.weights_dir.display()
            );
        }
    } else {
        println!(
            "Pipeline {} in {}, submitted before with these parameters: {stages} stages",
            job.id,
            args.out.display()
        );
        if matches!(job.state, JobState::Failed | JobState::Cancelled) {
            println!("It {}: its stages that did not finish run again", job.state.as_str());
            queue::retry(&local.pool, job.id).await?;
        }
    }
    let job = match local.follow(job.id).await? {
        Ended::Interrupted => return Ok(true),
        Ended::Finished(job) => job,
    };
    write_stage_results(local, job.id, &args.out).await?;
    if job.state != JobState::Succeeded {
        bail!(
            "the pipeline {}: {} (fix the cause and run the same command again: finished stages are kept)",
            job.state.as_str(),
            job.error.unwrap_or_default()
        );
    }
    let report: ReproduceReport =
        serde_json::from_value(job.result.unwrap_or_default()).context("the pipeline's result is not a report")?;
    let out = &args.out;
    std::fs::write(out.join("table6.md"), &report.markdown)?;
    std::fs::write(out.join("table6.json"), serde_json::to_string_pretty(&report)?)?;
    let figure = format!("jobs/{}/counterfactuals.png", job.id);
    if local.storage.size(&figure).await?.is_some() {
        local.storage.download(&figure, &out.join("counterfactuals.png")).await?;
    }
    println!("\n{}", report.markdown);
    println!(
        "Wrote {} and table6.json ({:.1} minutes in all). Each stage's checkpoints, samples and curves: \
         `repdiff serve --data-dir {}`",
        out.join("table6.md").display(),
        report.total_s / 60.0,
        out.display()
    );
    Ok(false)
}

/// `spec` as the API takes it, with no experiment, tags or dependencies.
fn submission(spec: JobSpec) -> SubmitJob {
    SubmitJob {
        spec,
        experiment_id: None,
        priority: 0,
        max_attempts: None,
        tags: Vec::new(),
        publish_private: false,
        depends_on: Vec::new(),
    }
}

/// Each finished stage's result as OUT/seed-S/NAME.json (`seed-0/classify-rep.json`).
async fn write_stage_results(local: &Local, pipeline: i64, out: &Path) -> Result<()> {
    for stage in queue::followed(&local.pool, pipeline).await? {
        if stage.id == pipeline || stage.state != JobState::Succeeded {
            continue;
        }
        let Some(result) = queue::get(&local.pool, stage.id).await?.and_then(|j| j.result) else { continue };
        let path = out.join(format!("{}.json", stage.name));
        std::fs::create_dir_all(path.parent().expect("in OUT"))?;
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
}
