//! `repdiff reproduce`: the paper's whole pipeline in one command. On a dataset (synthetic phantoms by
//! default): the paper's split, encoding, unconditional and representation-conditional pre-training,
//! fine-tuning of both, the diffusion classifier's timestep sweep on validation and its test result, the
//! class fidelity of both fine-tuned models' samples (each sorted by the other's classifier), the
//! generation metrics of both pre-trained models, counterfactuals, the linear probe on the representation
//! encoder, a ViT and a ResNet trained from scratch; then the Table 6 and Table 5 analogues (Markdown and
//! JSON). Every step is the `repdiff` command it names (printed before it runs) writing into its own
//! folder of OUT, so a rerun continues where an interrupted one stopped: training resumes from its
//! checkpoint, and finished steps are kept. Steps whose prerequisites are done run side by side (`--jobs`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use repdiff_api::{
    AcrossSeeds, ClassMetrics, ClassifyReport, FidelityRow, PairedDifference, ProbeTest, ReproduceReport, SeedsRow,
    SeedsTable5Row, Spread, StepTiming, SweepRow, Table5Row, Table6Row,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

mod steps;

use super::PrecisionArg;
use repdiff_engine::ops::MatmulPrecision;
use steps::{Step, Tally, run_steps, step};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReproducePreset {
    /// The tiny-cpu model on 32x32 pixels, short schedules: under half an hour on 2 CPU cores.
    TinyCpu,
    /// The paper's: DiT-B/2 on SD-VAE latents of 256x256 slices (weights in model-weights/), 1,000 epochs,
    /// 512 noise draws: for a GPU.
    Paper,
}

impl ReproducePreset {
    /// The name it is given by (`tiny-cpu`).
    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

#[derive(Args)]
pub struct ReproduceArgs {
    #[arg(long, value_enum, default_value = "tiny-cpu")]
    preset: ReproducePreset,
    /// A dataset folder holding manifest.csv (`repdiff import`'s output); default: synthetic phantoms
    /// generated into OUT/data, some from random sites and more from the downstream site.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Phantom slices from random sites, and more from the downstream site in the preset's proportion
    /// (tiny-cpu 600 and 1,500, paper 2,400 and 1,200; default: the preset's).
    #[arg(long, conflicts_with = "data")]
    phantoms: Option<usize>,
    /// The site whose slices form the downstream task; every other site pre-trains.
    #[arg(long, default_value_t = 1)]
    downstream_site: usize,
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
    /// How many of the pipeline's steps run at once (as child processes sharing the cores), each the next
    /// whose prerequisites are done. Side by side suits small models: a tiny-cpu training step hardly uses
    /// a second core, so two steps on two cores take about half the time of one after the other.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Matrix products of the training steps (pre-training and fine-tuning, two thirds of tiny-cpu's CPU
    /// time): highest (f32, the default: the same tables on every CPU) or bf16 (bf16 operands, f32 sums:
    /// tiny-cpu training about 1.3x faster with AVX512-BF16, more with AMX; f32 on other CPUs). The
    /// classifier, the samplers and the metrics stay in f32.
    #[arg(long, value_enum)]
    matmul_precision: Option<PrecisionArg>,
    /// Seeds the phantoms, the split, the training runs and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Runs the pipeline for N seeds, SEED to SEED + N - 1 (the first in OUT, each other in OUT/seed-K),
    /// and reports every method's test accuracy and F1 per seed with their mean and spread, and the two
    /// diffusion classifiers' paired difference. At tiny-cpu's scale one seed's ordering of the methods is
    /// within the training noise; N seeds cost N runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    seeds: u16,
    #[arg(long, default_value = "model-weights")]
    weights_dir: PathBuf,
    #[arg(long, default_value = "runs/reproduce")]
    out: PathBuf,
}

/// What a preset runs.
struct Plan {
    phantoms: usize,
    downstream: usize,
    phantom_size: usize,
    autoencoder: &'static str,
    encode_size: usize,
    model_preset: &'static str,
    pretrain_steps: Option<usize>,
    finetune_steps: Option<usize>,
    /// Epochs when the steps are not given (the paper's 1,000), over the data of each stage.
    epochs: usize,
    timesteps: &'static str,
    draws: usize,
    /// The supervised baselines (`repdiff supervised --arch`) and the epochs of each.
    supervised: [(&'static str, usize); 2],
    vit_patch: usize,
    /// Samples per pre-trained model for the Table 5 analogue, how they are drawn, and at most how many
    /// pre-training images they are measured against.
    eval_samples: usize,
    eval_real: usize,
    eval_sampler: &'static str,
    eval_steps: usize,
    /// Samples per class from each fine-tuned model for the class-fidelity check, and how they are drawn:
    /// ancestral DDPM, not DDIM, whose samples of the unconditionally pre-trained tiny model the judges
    /// called positive far more often (docs/benchmarks.md, "Class fidelity and the sampler").
    class_samples: usize,
    class_sampler: &'static str,
    class_steps: usize,
}

fn plan(preset: ReproducePreset) -> Plan {
    match preset {
        ReproducePreset::TinyCpu => Plan {
            phantoms: 600,
            downstream: 1500,
            phantom_size: 64,
            autoencoder: "pixels",
            encode_size: 32,
            model_preset: "tiny-cpu",
            pretrain_steps: Some(2500),
            finetune_steps: Some(7000),
            epochs: 0,
            timesteps: "50,100,150,200,300,500",
            draws: 64,
            supervised: [("tiny", 15), ("resnet-tiny", 5)],
            vit_patch: 4,
            eval_samples: 200,
            eval_real: 300,
            eval_sampler: "ddim",
            eval_steps: 50,
            class_samples: 64,
            class_sampler: "ddpm",
            class_steps: 100,
        },
        ReproducePreset::Paper => Plan {
            phantoms: 2400,
            downstream: 1200,
            phantom_size: 256,
            autoencoder: "sd-vae-ft-ema",
            encode_size: 256,
            model_preset: "paper",
            pretrain_steps: None,
            finetune_steps: None,
            epochs: 1000,
            timesteps: "25,50,100,150,200,250,300,350,400,450,500,600,700,800,900",
            draws: 512,
            supervised: [("vit-b", 100), ("resnet-50", 100)],
            vit_patch: 2,
            eval_samples: 10_000,
            eval_real: 50_000,
            eval_sampler: "ddpm",
            eval_steps: 250,
            class_samples: 500,
            class_sampler: "ddpm",
            class_steps: 250,
        },
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Slices of `part` in a split CSV (its `part` column).
fn count_part(split: &Path, part: &str) -> Result<usize> {
    let text = std::fs::read_to_string(split).with_context(|| format!("reading {}", split.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let column = header.iter().position(|&h| h == "part").context("the split has no part column")?;
    Ok(lines.filter(|l| l.split(',').nth(column) == Some(part)).count())
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// The two diffusion classifiers' rows of Table 6 (its first two).
const UNCOND_METHOD: &str = "Diffusion classifier, unconditional pre-training + fine-tuning";
const REP_METHOD: &str = "Diffusion classifier, representation-conditional pre-training + fine-tuning (the paper's)";

pub fn run(args: ReproduceArgs) -> Result<()> {
    let started = Instant::now();
    let seeds: Vec<u64> = (0..u64::from(args.seeds)).map(|i| args.seed + i).collect();
    let mut tally = Tally { before: 0, later_seeds: seeds.len() - 1 };
    let mut reports = Vec::new();
    for &seed in &seeds {
        let out = if seed == args.seed { args.out.clone() } else { args.out.join(format!("seed-{seed}")) };
        if seeds.len() > 1 {
            println!("\n=== seed {seed} ({} of {}), in {}", reports.len() + 1, seeds.len(), out.display());
        }
        let (report, planned) = run_seed(&args, seed, &out, tally)?;
        reports.push(report);
        tally = Tally { before: tally.before + planned, later_seeds: tally.later_seeds.saturating_sub(1) };
    }
    if reports.len() < 2 {
        return Ok(());
    }
    // The report of several seeds: the spread first, then the first seed's in full.
    let across = across_seeds(&reports);
    let mut report = reports.remove(0);
    report.markdown = format!(
        "{}\n# Seed {} in full\n\n{}",
        seeds_markdown(&across, &report),
        report.seed,
        report.markdown.replacen("# ", "## ", 1)
    );
    report.across_seeds = Some(across);
    report.total_s = started.elapsed().as_secs_f64();
    let out = &args.out;
    std::fs::write(out.join("table6.md"), &report.markdown)?;
    std::fs::write(out.join("table6.json"), serde_json::to_string_pretty(&report)?)?;
    println!("\n{}", report.markdown);
    println!(
        "Wrote {} and table6.json: {} seeds ({:.1} minutes in all)",
        out.join("table6.md").display(),
        seeds.len(),
        report.total_s / 60.0
    );
    Ok(())
}

/// The pipeline for one seed in `out`; returns its report and how many steps it planned.
fn run_seed(args: &ReproduceArgs, seed_number: u64, out: &Path, tally: Tally) -> Result<(ReproduceReport, usize)> {
    let mut plan = plan(args.preset);
    if let Some(n) = args.phantoms {
        (plan.phantoms, plan.downstream) = (n, n * plan.downstream / plan.phantoms);
    }
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut timings = Vec::new();
    let seed = seed_number.to_string();

    // 1. Data and the paper's split.
    let data = match &args.data {
        Some(dir) => dir.clone(),
        None => {
            let dir = out.join("data");
            if !dir.join("manifest.csv").exists() {
                let a = [
                    "phantoms",
                    "--out",
                    &path(&dir),
                    "-n",
                    &plan.phantoms.to_string(),
                    "--downstream",
                    &plan.downstream.to_string(),
                    "--size",
                    &plan.phantom_size.to_string(),
                    "--seed",
                    &seed,
                ];
                step("synthetic phantoms", &strings(&a), &mut timings)?;
            }
            dir
        }
    };
    let manifest = data.join("manifest.csv");
    if !manifest.exists() {
        bail!(
            "{} has no manifest.csv: give a folder written by `repdiff import` (or leave --data out)",
            data.display()
        );
    }
    // Beside the manifest: the split names its slices relative to its own folder. Further seeds on a given
    // dataset each have their own.
    let split = if args.data.is_some() && seed_number != args.seed {
        data.join(format!("split-seed-{seed_number}.csv"))
    } else {
        data.join("split.csv")
    };
    let a = [
        "split",
        "--manifest",
        &path(&manifest),
        "--downstream-site",
        &args.downstream_site.to_string(),
        "--seed",
        &seed,
        "--out",
        &path(&split),
    ];
    step("the paper's split", &strings(&a), &mut timings)?;
    for part in ["validation", "test"] {
        if count_part(&split, part)? == 0 {
            bail!("the downstream site {} has no {part} slices: it needs at least ten per label", args.downstream_site);
        }
    }

    // 2. Latents of every part (reused while the data and settings are unchanged).
    let latents = |part: &str| out.join(format!("latents-{part}.safetensors"));
    for part in ["pretrain", "train", "validation", "test"] {
        let a = [
            "encode",
            "--manifest",
            &path(&split),
            "--part",
            part,
            "--autoencoder",
            plan.autoencoder,
            "--weights-dir",
            &path(&args.weights_dir),
            "--size",
            &plan.encode_size.to_string(),
            "--seed",
            &seed,
            "--out",
            &path(&latents(part)),
        ];
        step(&format!("encode the {part} part"), &strings(&a), &mut timings)?;
    }

    // A part's images as pixels in [-1, 1]: the pixel preset's latents are; for an autoencoder's, the part
    // is read again without it, at the encoder's input size, in RGB as the decoder gives.
    let pixel_images = |part: &str, timings: &mut Vec<(String, f64)>| -> Result<PathBuf> {
        if plan.autoencoder == "pixels" {
            return Ok(latents(part));
        }
        let images = out.join(format!("images-{part}.safetensors"));
        let (size, manifest, target) = (plan.encode_size.to_string(), path(&split), path(&images));
        let a =
            ["encode", "--manifest", &manifest, "--part", part, "--size", &size, "--channels", "3", "--seed", &seed];
        let a = [&a[..], &["--out", &target]].concat();
        step(&format!("the {part} images as pixels"), &strings(&a), timings)?;
        Ok(images)
    };

    // 3. Pre-training, unconditional and representation-conditional; 4. fine-tuning both.
    let epochs_steps =
        |part: &str| -> Result<usize> { Ok(plan.epochs.max(1) * count_part(&split, part)?.div_ceil(16).max(1)) };
    let pretrain_steps = match args.pretrain_steps.or(plan.pretrain_steps) {
        Some(s) => s,
        None => epochs_steps("pretrain")?,
    };
    let finetune_steps = match args.finetune_steps.or(plan.finetune_steps) {
        Some(s) => s,
        None => epochs_steps("train")?,
    };
    let every = (pretrain_steps / 10).max(1).to_string();
    let precision =
        args.matmul_precision.map(|p| ["--matmul-precision".to_string(), MatmulPrecision::from(p).name().to_string()]);
    // The DINOv2 probe and the generation metrics read images; for an autoencoder's latents they are
    // encoded again as pixels first.
    let dino = args.weights_dir.join(repdiff_engine::dino::WEIGHTS_FILE).exists();
    let dino_probe = out.join("probe-dinov2.json");
    let mut dino_images = Vec::new();
    if dino && !dino_probe.exists() {
        for part in ["train", "validation", "test"] {
            dino_images.extend([format!("--{part}"), path(&pixel_images(part, &mut timings)?)]);
        }
    }
    let eval_samples = args.eval_samples.unwrap_or(plan.eval_samples);
    let evaluation = out.join("evaluate");
    let evaluate = eval_samples > 0 && !evaluation.join("metrics.json").exists();
    let real_images = if evaluate { Some(pixel_images("pretrain", &mut timings)?) } else { None };

    // The rest, as steps with their prerequisites, in order of priority: the longest chain (the
    // representation model's) first, the baselines that need no diffusion model last, to fill the gaps.
    let draws = args.draws.unwrap_or(plan.draws).to_string();
    let modes = ["rep", "uncond"];
    let mut steps = Vec::new();
    // 3. Pre-training, unconditional and representation-conditional. A resumed run keeps its
    // configuration: only the step count goes with it.
    for mode in modes {
        let run = out.join(format!("pretrain-{mode}"));
        let mut a = strings(&[
            "pretrain",
            "--mode",
            mode,
            "--latents",
            &path(&latents("pretrain")),
            "--steps",
            &pretrain_steps.to_string(),
            "--checkpoint-every",
            &every,
            "--out",
            &path(&run),
        ]);
        a.extend(precision.iter().flatten().cloned());
        if run.join("checkpoint.safetensors").exists() {
            a.push("--resume".into());
        } else {
            a.extend(strings(&["--preset", plan.model_preset, "--seed", &seed]));
        }
        steps.push(Step::new(format!("pretrain-{mode}"), format!("pre-train ({mode})"), a, &[]));
    }
    // 4. Fine-tuning both.
    for mode in modes {
        let ft = out.join(format!("finetune-{mode}"));
        let mut a = strings(&[
            "finetune",
            "--latents",
            &path(&latents("train")),
            "--steps",
            &finetune_steps.to_string(),
            "--out",
            &path(&ft),
            "--from",
            &path(&out.join(format!("pretrain-{mode}/checkpoint.safetensors"))),
        ]);
        a.extend(precision.iter().flatten().cloned());
        if ft.join("checkpoint.safetensors").exists() {
            a.push("--resume".into());
        }
        let title = format!("fine-tune from the {mode} model");
        steps.push(Step::new(format!("finetune-{mode}"), title, a, &[&format!("pretrain-{mode}")]));
    }
    // 5. The diffusion classifier on both fine-tuned models.
    for mode in modes {
        let a = strings(&[
            "classify",
            "--checkpoint",
            &path(&out.join(format!("finetune-{mode}/checkpoint.safetensors"))),
            "--validation",
            &path(&latents("validation")),
            "--test",
            &path(&latents("test")),
            "--timesteps",
            plan.timesteps,
            "--draws",
            &draws,
            "--sequential",
            "--agreement",
            "--seed",
            &seed,
        ]);
        let title = format!("diffusion classifier ({mode} pre-training)");
        let report = out.join(format!("classify-{mode}.json"));
        steps.extend(Step::unless_done(&report, format!("classify-{mode}"), title, a, &[&format!("finetune-{mode}")]));
    }
    // 5b. Class fidelity: each fine-tuned model samples both classes, without guidance and with
    // classifier-free guidance, and the other model's diffusion classifier, which never saw those samples'
    // model, sorts them at the timestep it chose on real validation slices.
    let class_samples = args.class_samples.unwrap_or(plan.class_samples);
    for (mode, judge) in [("rep", "uncond"), ("uncond", "rep")].into_iter().filter(|_| class_samples > 0) {
        for guidance in CLASS_GUIDANCE {
            let name = fidelity_name(mode, guidance);
            let samples = out.join(format!("class-samples-{name}"));
            if !samples.join("samples.safetensors").exists() {
                let a = strings(&[
                    "sample",
                    "--checkpoint",
                    &path(&out.join(format!("finetune-{mode}/checkpoint.safetensors"))),
                    "-n",
                    &(2 * class_samples).to_string(),
                    "--class",
                    "0,1",
                    "--guidance",
                    &guidance.to_string(),
                    "--sampler",
                    plan.class_sampler,
                    "--steps",
                    &plan.class_steps.to_string(),
                    "--seed",
                    &seed,
                    "--weights-dir",
                    &path(&args.weights_dir),
                    "--out",
                    &path(&samples),
                ]);
                let title = format!("class-conditional samples of the {mode} fine-tuned model, guidance {guidance}");
                steps.push(Step::new(format!("class-samples-{name}"), title, a, &[&format!("finetune-{mode}")]));
            }
            let a = strings(&[
                "classify",
                "--checkpoint",
                &path(&out.join(format!("finetune-{judge}/checkpoint.safetensors"))),
                "--validation",
                &path(&samples.join("samples.safetensors")),
                "--timestep-of",
                &path(&out.join(format!("classify-{judge}.json"))),
                "--draws",
                &draws,
                "--sequential",
                "--seed",
                &seed,
            ]);
            let title = format!("the {judge} model's classifier on the {mode} model's samples, guidance {guidance}");
            let after = [format!("class-samples-{name}"), format!("classify-{judge}")];
            let report = out.join(format!("class-fidelity-{name}.json"));
            let tag = format!("class-fidelity-{name}");
            steps.extend(Step::unless_done(&report, tag, title, a, &[&after[0], &after[1]]));
        }
    }
    // 6. Generation metrics of both pre-trained models against the pre-training images (Table 5).
    let rep_checkpoint = path(&out.join("pretrain-rep/checkpoint.safetensors"));
    if let Some(real) = &real_images {
        let a = strings(&[
            "evaluate",
            "--real",
            &path(real),
            "--checkpoint",
            &path(&out.join("pretrain-uncond/checkpoint.safetensors")),
            "--checkpoint",
            &rep_checkpoint,
            "--references",
            &path(&latents("pretrain")),
            "-n",
            &eval_samples.to_string(),
            "--max-real",
            &plan.eval_real.to_string(),
            "--sampler",
            plan.eval_sampler,
            "--steps",
            &plan.eval_steps.to_string(),
            "--seed",
            &seed,
            "--weights-dir",
            &path(&args.weights_dir),
            "--cache-dir",
            &path(&out.join("feature-cache")),
            "--out",
            &path(&evaluation),
        ]);
        let title = "generation metrics of both pre-trained models";
        steps.push(Step::new("evaluate", title, a, &["pretrain-uncond", "pretrain-rep"]));
    }
    // 7. Counterfactuals of test scans under the representation-pre-trained classifier.
    let figures = out.join("counterfactuals");
    if !figures.join("counterfactuals.json").exists() {
        let a = strings(&[
            "counterfactual",
            "--checkpoint",
            &path(&out.join("finetune-rep/checkpoint.safetensors")),
            "--data",
            &path(&latents("test")),
            "-n",
            "8",
            "--t",
            "500",
            "--weights-dir",
            &path(&args.weights_dir),
            "--out",
            &path(&figures),
        ]);
        steps.push(Step::new("counterfactuals", "counterfactuals of test scans", a, &["finetune-rep"]));
    }
    // 8. The baselines, on the same three parts: the linear probes (on the representation encoder; on
    // DINOv2's features of the images when its weights are in the weights folder) and the supervised
    // networks trained from scratch.
    let parts = strings(&[
        "--train",
        &path(&latents("train")),
        "--validation",
        &path(&latents("validation")),
        "--test",
        &path(&latents("test")),
        "--seed",
        &seed,
    ]);
    let probe = out.join("probe.json");
    let a = [strings(&["probe", "--checkpoint", &rep_checkpoint]), parts.clone()].concat();
    let title = "linear probe on the representation encoder";
    steps.extend(Step::unless_done(&probe, "probe", title, a, &["pretrain-rep"]));
    if dino {
        let a = strings(&["probe", "--features", "dinov2", "--weights-dir", &path(&args.weights_dir)]);
        let a = [a, dino_images, strings(&["--seed", &seed])].concat();
        let title = "linear probe on DINOv2 features";
        steps.extend(Step::unless_done(&dino_probe, "probe-dinov2", title, a, &[]));
    } else if !dino_probe.exists() {
        println!(
            "\n(no {} in {}: the DINOv2 probe is left out of Table 6; see model-weights/README.md)",
            repdiff_engine::dino::WEIGHTS_FILE,
            args.weights_dir.display()
        );
    }
    for (arch, epochs) in plan.supervised {
        let epochs = args.supervised_epochs.unwrap_or(epochs).to_string();
        let a = strings(&["supervised", "--arch", arch, "--patch", &plan.vit_patch.to_string(), "--epochs", &epochs]);
        let title = format!("{} ({arch}) trained from scratch", network(arch));
        let report = out.join(format!("supervised-{arch}.json"));
        steps.extend(Step::unless_done(&report, format!("supervised-{arch}"), title, [a, parts.clone()].concat(), &[]));
    }
    run_steps(&steps, usize::from(args.jobs), &mut timings, tally)?;

    // The tables.
    let uncond: ClassifyReport = read_json(&out.join("classify-uncond.json"))?;
    let rep: ClassifyReport = read_json(&out.join("classify-rep.json"))?;
    let mut rows = vec![
        table_row(UNCOND_METHOD, &uncond)?,
        table_row(REP_METHOD, &rep)?,
        probe_row("Linear probe on the representation encoder (mean-pooled tokens)", &probe)?,
    ];
    if dino_probe.exists() {
        rows.push(probe_row("Linear probe on DINOv2 ViT-S/14 features", &dino_probe)?);
    }
    for (arch, _) in plan.supervised {
        let report = out.join(format!("supervised-{arch}.json"));
        rows.push(probe_row(
            &format!("{} ({arch}) trained from scratch on the training part", network(arch)),
            &report,
        )?);
    }
    let mut markdown = table6_markdown(&rows, args, seed_number, pretrain_steps, finetune_steps, &split)?;
    markdown.push_str(&sweep_markdown(&uncond, &rep));
    let class_fidelity = if class_samples > 0 { class_fidelity(out, &uncond, &rep)? } else { Vec::new() };
    if !class_fidelity.is_empty() {
        markdown.push_str(&fidelity_markdown(
            &class_fidelity,
            &format!("{} {}", plan.class_sampler.to_uppercase(), plan.class_steps),
        ));
    }
    let table5 = if evaluation.join("metrics.json").exists() {
        let rows = read_json::<EvaluationFile>(&evaluation.join("metrics.json"))?.results;
        markdown.push_str(&table5_markdown(&rows));
        Some(rows)
    } else {
        None
    };
    std::fs::write(out.join("table6.md"), &markdown)?;
    let report = ReproduceReport {
        preset: args.preset.name(),
        seed: seed_number,
        pretrain_steps,
        finetune_steps,
        table6: rows,
        class_fidelity,
        table5,
        timings_s: timings.into_iter().map(|(step, seconds)| StepTiming { step, seconds }).collect(),
        total_s: started.elapsed().as_secs_f64(),
        markdown,
        across_seeds: None,
    };
    std::fs::write(out.join("table6.json"), serde_json::to_string_pretty(&report)?)?;
    println!("\n{}", report.markdown);
    println!("Wrote {} and table6.json ({:.1} minutes in all)", out.join("table6.md").display(), report.total_s / 60.0);
    Ok((report, steps.len()))
}

/// `repdiff evaluate`'s metrics.json, as far as Table 5 reads it.
#[derive(Deserialize)]
struct EvaluationFile {
    results: Vec<Table5Row>,
}

/// A probe's or a supervised baseline's report (`repdiff probe`, `repdiff supervised`), as far as Table 6
/// reads it.
#[derive(Deserialize)]
struct TestedReport {
    #[serde(default)]
    lambda: Option<f64>,
    test: Option<ProbeTest>,
}

/// What kind of network a supervised baseline's architecture name is.
fn network(arch: &str) -> &'static str {
    if arch.starts_with("resnet") { "ResNet" } else { "ViT" }
}

/// A diffusion classifier's test result as a row: metrics, intervals, forward passes per image.
fn table_row(name: &str, report: &ClassifyReport) -> Result<Table6Row> {
    let test = report.test.as_ref().with_context(|| format!("{name}: the classifier's report has no test result"))?;
    Ok(Table6Row {
        method: name.to_string(),
        chosen_t: Some(report.chosen_t),
        metrics: test.metrics.clone(),
        intervals: test.intervals.clone(),
        forwards_per_image: Some(test.forwards_per_image),
        agreement: test.agreement.clone(),
        lambda: None,
    })
}

/// A probe's or a supervised baseline's test result (the report at `path`) as a row.
fn probe_row(name: &str, path: &Path) -> Result<Table6Row> {
    let report: TestedReport = read_json(path)?;
    let test = report.test.with_context(|| format!("{} has no test result", path.display()))?;
    Ok(Table6Row {
        method: name.to_string(),
        chosen_t: None,
        metrics: test.metrics,
        intervals: Some(test.intervals),
        forwards_per_image: None,
        agreement: None,
        lambda: report.lambda,
    })
}

/// The two validation sweeps side by side (the paper's Fig. 12: accuracy and F1 over the timestep).
fn sweep_markdown(uncond: &ClassifyReport, rep: &ClassifyReport) -> String {
    let pct = |row: Option<&SweepRow>, value: fn(&ClassMetrics) -> f64| {
        row.map_or("-".to_string(), |row| format!("{:.1}", value(&row.metrics) * 100.0))
    };
    let mut md = String::from(
        "\n## Validation sweep (Fig. 12 analogue)\n\n| t | accuracy %, unconditional | F1 %, unconditional | accuracy %, representation | F1 %, representation |\n|---|---|---|---|---|\n",
    );
    for (i, row) in uncond.validation.iter().enumerate() {
        let other = rep.validation.get(i);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.t,
            pct(Some(row), |m| m.accuracy),
            pct(Some(row), |m| m.f1),
            pct(other, |m| m.accuracy),
            pct(other, |m| m.f1)
        ));
    }
    md
}

fn table6_markdown(
    rows: &[Table6Row],
    args: &ReproduceArgs,
    seed: u64,
    pretrain_steps: usize,
    finetune_steps: usize,
    split: &Path,
) -> Result<String> {
    use std::fmt::Write;
    let mut md = String::new();
    let test = count_part(split, "test")?;
    writeln!(
        md,
        "# Table 6 analogue: haematoma classification on the test part ({test} slices of site {})\n",
        args.downstream_site
    )?;
    writeln!(
        md,
        "Preset {}, seed {}, pre-training {pretrain_steps} steps, fine-tuning {finetune_steps} steps. Percentages \
         with percentile bootstrap 95% intervals; the diffusion classifier's timestep was chosen on validation.\n",
        args.preset.name(),
        seed
    )?;
    writeln!(md, "| method | t | accuracy % | precision % | recall % | F1 % | forwards/image |")?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    let cell = |v: f64, interval: Option<[f64; 2]>| match interval {
        Some([lo, hi]) => format!("{:.1} [{:.1}, {:.1}]", v * 100.0, lo * 100.0, hi * 100.0),
        None => format!("{:.1}", v * 100.0),
    };
    for row in rows {
        let (m, i) = (&row.metrics, row.intervals.as_ref());
        let t = row.chosen_t.map_or("-".to_string(), |t| t.to_string());
        let forwards = row.forwards_per_image.map_or("-".to_string(), |f| format!("{f:.0}"));
        writeln!(
            md,
            "| {} | {t} | {} | {} | {} | {} | {forwards} |",
            row.method,
            cell(m.accuracy, i.map(|i| i.accuracy)),
            cell(m.precision, i.map(|i| i.precision)),
            cell(m.recall, i.map(|i| i.recall)),
            cell(m.f1, i.map(|i| i.f1))
        )?;
    }
    for row in rows {
        if let Some(a) = &row.agreement {
            writeln!(
                md,
                "\n{}: sequential stopping took the decision of all {} draws on {:.1}% of the test slices with {:.1}% of the forward passes.",
                row.method,
                a.fixed_draws,
                a.agreement * 100.0,
                a.forwards_fraction * 100.0
            )?;
        }
    }
    Ok(md)
}

/// The classifier-free guidance scales of the class-fidelity samples: none, and a moderate one (DiT draws
/// its figures at 4; stronger guidance trades the samples' variety for their class).
const CLASS_GUIDANCE: [f64; 2] = [1.0, 3.0];

/// The step and folder name of one model's class-fidelity samples at one guidance scale.
fn fidelity_name(mode: &str, guidance: f64) -> String {
    format!("{mode}-g{guidance}")
}

/// Per class, the fraction of its items called that class (`confusion[truth][predicted]`): [specificity,
/// recall] for two classes.
fn per_class(confusion: &[Vec<usize>]) -> Vec<f64> {
    confusion
        .iter()
        .enumerate()
        .map(|(c, row)| row.get(c).copied().unwrap_or(0) as f64 / row.iter().sum::<usize>().max(1) as f64)
        .collect()
}

/// Each fine-tuned model's class-conditional samples as the other model's classifier sorts them, at the
/// timestep that classifier chose on real validation slices, beside how it sorts the real test slices
/// (the classifiers' reports `uncond` and `rep`).
fn class_fidelity(out: &Path, uncond: &ClassifyReport, rep: &ClassifyReport) -> Result<Vec<FidelityRow>> {
    let mut rows = Vec::new();
    for (mode, judge, real) in [("rep", "uncond", uncond), ("uncond", "rep", rep)] {
        let real_test = real.test.as_ref().context("the judging classifier's report has no test result")?;
        for guidance in CLASS_GUIDANCE {
            let name = format!("class-fidelity-{}.json", fidelity_name(mode, guidance));
            let judged: ClassifyReport = read_json(&out.join(&name))?;
            let row = judged.validation.first().with_context(|| format!("{name} has no result"))?;
            rows.push(FidelityRow {
                samples_of: mode.to_string(),
                guidance,
                judge: judge.to_string(),
                t: judged.chosen_t,
                samples_per_class: per_class(&row.metrics.confusion),
                samples_confusion: row.metrics.confusion.clone(),
                real_test_per_class: per_class(&real_test.metrics.confusion),
            });
        }
    }
    Ok(rows)
}

/// The class-fidelity table; `sampler` says how the samples were drawn (`DDPM 100`).
fn fidelity_markdown(rows: &[FidelityRow], sampler: &str) -> String {
    let mut md = format!(
        "\n## Class fidelity of the fine-tuned models' samples\n\nEach fine-tuned model draws samples of both classes \
         ({sampler}, classifier-free guidance 1: none, and 3); the other model's diffusion classifier sorts them \
         at the timestep it chose on real validation slices. Beside it, how the same classifier sorts the real \
         test slices.\n\n\
         | samples of | guidance | judged by | t | class-0 samples called 0 % | class-1 samples called 1 % | real test: class 0 called 0 % | real test: class 1 called 1 % |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let name = |m: &str| if m == "rep" { "representation pre-training" } else { "unconditional pre-training" };
    let pct = |v: &[f64], c: usize| v.get(c).map_or("-".to_string(), |v| format!("{:.1}", v * 100.0));
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            name(&r.samples_of),
            r.guidance,
            name(&r.judge),
            r.t,
            pct(&r.samples_per_class, 0),
            pct(&r.samples_per_class, 1),
            pct(&r.real_test_per_class, 0),
            pct(&r.real_test_per_class, 1)
        ));
    }
    md
}

/// The generation metrics of the two pre-trained models (the paper's Table 5), named for the extractor
/// that measured them.
fn table5_markdown(results: &[Table5Row]) -> String {
    let pretrained = results.first().is_some_and(|r| r.extractor == "inception-v3");
    let (fid, sfid, is) = if pretrained { ("FID", "sFID", "IS") } else { ("FD", "sFD", "score") };
    let mut md = format!(
        "\n## Table 5 analogue: generation against {} pre-training images\n\n",
        results.first().map_or(0, |r| r.real)
    );
    if !pretrained {
        md.push_str(&format!(
            "Features of {} (no pretrained Inception weights in the weights folder): FD, sFD and the score \
             compare these models with each other, not with published FIDs.\n\n",
            results.first().map_or("a random network", |r| r.extractor.as_str())
        ));
    }
    md.push_str(&format!(
        "| pre-training | samples | {fid} | {sfid} | {is} | precision | recall | density | coverage |\n|---|---|---|---|---|---|---|---|---|\n"
    ));
    for (r, name) in results.iter().zip(["Unconditional", "Representation-conditional (the paper's)"]) {
        md.push_str(&format!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.generated, r.fid, r.sfid, r.inception_score, r.precision, r.recall, r.density, r.coverage
        ));
    }
    md
}

/// Every seed's Table 6 and Table 5 side by side: per method its test accuracy and F1 per seed, their mean
/// and spread, and the two diffusion classifiers' paired difference.
fn across_seeds(reports: &[ReproduceReport]) -> AcrossSeeds {
    let find = |report: &ReproduceReport, method: &str| report.table6.iter().find(|row| row.method == method).cloned();
    let table6 = reports[0]
        .table6
        .iter()
        .filter_map(|first| {
            let rows: Option<Vec<Table6Row>> = reports.iter().map(|r| find(r, &first.method)).collect();
            let rows = rows?;
            Some(SeedsRow {
                method: first.method.clone(),
                chosen_t: rows.iter().map(|row| row.chosen_t).collect(),
                accuracy: Spread::new(rows.iter().map(|row| row.metrics.accuracy).collect()),
                f1: Spread::new(rows.iter().map(|row| row.metrics.f1).collect()),
            })
        })
        .collect();
    let accuracy =
        |report: &ReproduceReport, method: &str| find(report, method).map_or(f64::NAN, |r| r.metrics.accuracy);
    let difference =
        Spread::new(reports.iter().map(|r| accuracy(r, REP_METHOD) - accuracy(r, UNCOND_METHOD)).collect());
    let n = difference.values.len();
    let interval = (n > 1).then(|| {
        let half = repdiff_engine::classify::stats::student_t_quantile(0.975, (n - 1) as f64) * difference.sd
            / (n as f64).sqrt();
        [difference.mean - half, difference.mean + half]
    });
    let ahead = difference.values.iter().filter(|&&d| d > 0.0).count();
    let table5 = match reports.iter().map(|r| r.table5.clone()).collect::<Option<Vec<_>>>() {
        Some(tables) if tables.iter().all(|t| t.len() == tables[0].len()) => (0..tables[0].len())
            .map(|m| {
                let metric = |value: fn(&Table5Row) -> f64| Spread::new(tables.iter().map(|t| value(&t[m])).collect());
                SeedsTable5Row {
                    name: tables[0][m].name.clone(),
                    extractor: tables[0][m].extractor.clone(),
                    metrics: vec![
                        metric(|r| r.fid),
                        metric(|r| r.sfid),
                        metric(|r| r.inception_score),
                        metric(|r| r.precision),
                        metric(|r| r.recall),
                        metric(|r| r.density),
                        metric(|r| r.coverage),
                    ],
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    AcrossSeeds {
        seeds: reports.iter().map(|r| r.seed).collect(),
        table6,
        classifier_difference: PairedDifference { difference, interval, ahead },
        table5,
    }
}

/// The spread over the seeds as Markdown; `first` is the first seed's report (its preset and budgets).
fn seeds_markdown(across: &AcrossSeeds, first: &ReproduceReport) -> String {
    use std::fmt::Write;
    let n = across.seeds.len();
    let seeds = across.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let mut md = format!(
        "# Table 6 analogue over {n} seeds ({seeds})\n\nPreset {}, pre-training {} steps, fine-tuning {} steps per \
         seed; each seed draws its own phantoms, split, initial weights and noise. Test accuracy and F1 in %: mean \
         ± sample standard deviation over the seeds, then each seed's value in the seeds' order.\n\n\
         | method | accuracy % | accuracy % per seed | F1 % | F1 % per seed | t per seed |\n|---|---|---|---|---|---|\n",
        first.preset, first.pretrain_steps, first.finetune_steps
    );
    for row in &across.table6 {
        let ts = row.chosen_t.iter().map(|t| t.map_or("-".to_string(), |t| t.to_string())).collect::<Vec<_>>();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            row.method,
            row.accuracy.percent(),
            row.accuracy.percent_each(false),
            row.f1.percent(),
            row.f1.percent_each(false),
            ts.join(" / ")
        );
    }
    let d = &across.classifier_difference;
    let interval = d.interval.map_or(String::new(), |[lo, hi]| {
        format!(" (95% t interval over the seeds [{:+.1}, {:+.1}])", lo * 100.0, hi * 100.0)
    });
    let _ = writeln!(
        md,
        "\nThe paper's comparison, seed by seed: the representation-pre-trained diffusion classifier's test accuracy \
         minus the unconditionally pre-trained one's is {} points, {:+.1} on average{interval}; ahead in {} of {n} \
         seeds.",
        d.difference.percent_each(true),
        d.difference.mean * 100.0,
        d.ahead
    );
    if !across.table5.is_empty() {
        let pretrained = across.table5[0].extractor == "inception-v3";
        let (fid, sfid, is) = if pretrained { ("FID", "sFID", "IS") } else { ("FD", "sFD", "score") };
        let _ = write!(
            md,
            "\n## Table 5 analogue over the seeds\n\nMean ± sample standard deviation over the seeds.\n\n\
             | pre-training | {fid} | {sfid} | {is} | precision | recall | density | coverage |\n|---|---|---|---|---|---|---|---|\n"
        );
        for (row, name) in across.table5.iter().zip(["Unconditional", "Representation-conditional (the paper's)"]) {
            let cells: Vec<String> = row.metrics.iter().map(Spread::plain).collect();
            let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
        }
    }
    md
}
