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
use repdiff_api::{ReproduceReport, StepTiming};
use repdiff_server::pipeline::{self, report};
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
    let report = report::seeds_report(reports, started.elapsed().as_secs_f64());
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
    let mut plan = pipeline::preset(&args.preset.name()).expect("every preset argument is a preset");
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
        for guidance in report::CLASS_GUIDANCE {
            let name = report::fidelity_name(mode, guidance);
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
        let title = format!("{} ({arch}) trained from scratch", report::network(arch));
        let report = out.join(format!("supervised-{arch}.json"));
        steps.extend(Step::unless_done(&report, format!("supervised-{arch}"), title, [a, parts.clone()].concat(), &[]));
    }
    run_steps(&steps, usize::from(args.jobs), &mut timings, tally)?;

    // The tables.
    let mut fidelity = Vec::new();
    if class_samples > 0 {
        for (mode, _) in report::FIDELITY_PAIRS {
            for guidance in report::CLASS_GUIDANCE {
                let name = format!("class-fidelity-{}.json", report::fidelity_name(mode, guidance));
                fidelity.push(read_json(&out.join(name))?);
            }
        }
    }
    let table5 = if evaluation.join("metrics.json").exists() {
        Some(read_json::<report::Evaluated>(&evaluation.join("metrics.json"))?.results)
    } else {
        None
    };
    let results = report::SeedResults {
        preset: args.preset.name(),
        seed: seed_number,
        downstream_site: args.downstream_site,
        pretrain_steps,
        finetune_steps,
        uncond: read_json(&out.join("classify-uncond.json"))?,
        rep: read_json(&out.join("classify-rep.json"))?,
        probe: read_json(&probe)?,
        dino_probe: if dino_probe.exists() { Some(read_json(&dino_probe)?) } else { None },
        supervised: plan
            .supervised
            .iter()
            .map(|(arch, _)| Ok((arch.to_string(), read_json(&out.join(format!("supervised-{arch}.json")))?)))
            .collect::<Result<_>>()?,
        fidelity,
        fidelity_sampler: format!("{} {}", plan.class_sampler.to_uppercase(), plan.class_steps),
        table5,
        timings: timings.into_iter().map(|(step, seconds)| StepTiming { step, seconds }).collect(),
        total_s: started.elapsed().as_secs_f64(),
    };
    let report = report::seed_report(results)?;
    std::fs::write(out.join("table6.md"), &report.markdown)?;
    std::fs::write(out.join("table6.json"), serde_json::to_string_pretty(&report)?)?;
    println!("\n{}", report.markdown);
    println!("Wrote {} and table6.json ({:.1} minutes in all)", out.join("table6.md").display(), report.total_s / 60.0);
    Ok((report, steps.len()))
}
