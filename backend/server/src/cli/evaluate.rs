//! `repdiff evaluate`: generation metrics (the paper's Table 5) and feature histograms (Figs. 7/9) of one
//! or more generated sets (image folders, or samples drawn here from checkpoints) against real images.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_engine::device::best_device;
use repdiff_engine::metrics::SetFeatures;
use repdiff_engine::metrics::tsne::{TsneOptions, feature_histogram};
use repdiff_engine::metrics::{
    EvenlySpaced, ImageSource, MetricOptions, compare, extract, extract_cached, open_image_set,
};
use repdiff_engine::sample::{sample, write_samples_with};
use serde::Serialize;

use super::progress_bar;
use super::sample::{SampleArgs, prepare};
use repdiff_api::jobs::ExtractorChoice;
use repdiff_server::jobs::load_extractor;

#[derive(Args)]
pub struct EvaluateArgs {
    /// Real images: a folder of PNG/JPEG images (class sub-folders allowed) or a pixel-space tensor file.
    #[arg(long)]
    real: PathBuf,
    /// A generated set to evaluate: a folder of images or a pixel-space tensor file (repeatable).
    #[arg(long)]
    generated: Vec<PathBuf>,
    /// A checkpoint to draw --num samples from and evaluate (repeatable).
    #[arg(long)]
    checkpoint: Vec<PathBuf>,
    /// Samples per checkpoint.
    #[arg(long, short = 'n', default_value_t = 1000)]
    num: usize,
    /// Classes for class-conditional checkpoints, comma-separated, cycled; default: all in turn.
    #[arg(long, value_delimiter = ',')]
    class: Vec<u32>,
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    /// ddim (the default, as an evaluate job's) or ddpm.
    #[arg(long, default_value = "ddim", value_parser = str::parse::<repdiff_api::jobs::Sampler>)]
    sampler: repdiff_api::jobs::Sampler,
    #[arg(long, default_value_t = repdiff_api::jobs::default_sampling_steps())]
    steps: usize,
    /// Reference images for representation-conditional checkpoints.
    #[arg(long)]
    references: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Use at most this many real images, evenly spaced through the set (all by default).
    #[arg(long)]
    max_real: Option<usize>,
    /// auto (pretrained when its weights are there, else random), pretrained or random.
    #[arg(long, default_value = "auto", value_parser = str::parse::<ExtractorChoice>)]
    extractor: ExtractorChoice,
    /// Where pretrained weights live (pt_inception-2015-12-05.safetensors; the SD VAE for latent runs).
    #[arg(long, default_value = "model-weights")]
    weights_dir: PathBuf,
    /// Reuses the real set's features from here when its pixels and the extractor are unchanged.
    #[arg(long, default_value = "runs/.feature-cache")]
    cache_dir: PathBuf,
    /// Also embed real and generated features by 1-D t-SNE and histogram them (Figs. 7/9), with at most
    /// this many images per set (0: no histogram).
    #[arg(long, default_value_t = 500)]
    histogram: usize,
    /// Output folder: metrics.json (metrics and histograms) and the samples drawn from checkpoints.
    #[arg(long, default_value = "runs/evaluate")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Report {
    real: String,
    results: Vec<Named>,
    histogram: Option<repdiff_engine::metrics::tsne::FeatureHistogram>,
}

#[derive(Serialize)]
struct Named {
    name: String,
    source: String,
    #[serde(flatten)]
    metrics: repdiff_engine::metrics::GenerationMetrics,
}

fn set_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    match stem.as_str() {
        "samples" | "checkpoint" => {
            path.parent().and_then(Path::file_name).map_or(stem.clone(), |p| format!("{}/{stem}", p.to_string_lossy()))
        }
        _ => stem,
    }
}

pub fn run(args: EvaluateArgs) -> Result<()> {
    if args.generated.is_empty() && args.checkpoint.is_empty() {
        bail!("nothing to evaluate: give --generated DIR|FILE or --checkpoint FILE (either repeatable)");
    }
    let (device, device_note) = best_device();
    let net = load_extractor(args.extractor, &args.weights_dir, &device)?;
    let label = net.extractor().label();
    println!("Extractor: {label} on {device_note}");
    if !net.extractor().eq(&repdiff_engine::metrics::Extractor::Pretrained) {
        println!(
            "  (no {} in {}: Frechet distances are in a random network's feature space, labelled FD, not FID)",
            repdiff_engine::metrics::inception::WEIGHTS_FILE,
            args.weights_dir.display()
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    // Generated sets first: the real images are read at their size. Every set is read a batch at a
    // time; a checkpoint's samples are measured as they are decoded and written.
    let mut sets: Vec<(String, String, Generated)> = Vec::new();
    for path in &args.generated {
        let images = open_image_set(path, None, &device).with_context(|| format!("reading {}", path.display()))?;
        sets.push((set_name(path), path.display().to_string(), Generated::Images(images)));
    }
    for (i, checkpoint) in args.checkpoint.iter().enumerate() {
        let out = args.out.join(format!("samples-{i}"));
        let sample_args = SampleArgs {
            checkpoint: checkpoint.clone(),
            num: args.num,
            class: args.class.clone(),
            guidance: args.guidance,
            sampler: args.sampler,
            steps: args.steps,
            eta: 0.0,
            seed: args.seed,
            batch_size: args.batch_size,
            no_clip: false,
            raw_weights: false,
            references: args.references.clone(),
            weights_dir: args.weights_dir.clone(),
            out: out.clone(),
        };
        let mut prepared = prepare(&sample_args)?;
        // --references is for representation-conditional checkpoints; the others sample without them.
        if !prepared.config.model.is_representation() {
            prepared.options.references = None;
        }
        println!("Sampling {} images from {}", args.num, checkpoint.display());
        let bar = progress_bar(1, "{bar:40} {pos}/{len} denoising steps [{elapsed_precise}<{eta_precise}]");
        let (samples, labels) = sample(&prepared.model, &prepared.config, &prepared.options, &device, |d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
        })?;
        bar.finish();
        let bar = progress_bar(args.num as u64, "{bar:40} {pos}/{len} samples written and measured");
        let (mut parts, mut side) = (Vec::new(), 0);
        let written =
            write_samples_with(&samples, labels.as_deref(), &prepared.config, &args.weights_dir, &out, |images| {
                side = images.dim(3)?;
                parts.push(extract(&net, images, args.batch_size, None, |_, _| {})?);
                bar.inc(images.dim(0)? as u64);
                Ok(())
            })?;
        bar.finish();
        if let Some(note) = written.note {
            bail!("{}: {note}; cannot evaluate undecoded latents", checkpoint.display());
        }
        let features = SetFeatures::concat(&parts)?;
        sets.push((set_name(checkpoint), checkpoint.display().to_string(), Generated::Features(features, side)));
    }
    let size = match &sets[0].2 {
        Generated::Images(images) => images.image_dims().2,
        Generated::Features(_, side) => *side,
    };
    let real = open_image_set(&args.real, Some(size), &device)
        .with_context(|| format!("reading the real images {}", args.real.display()))?;
    // Evenly spaced, so the subset spans the folder's classes and sites as the whole does.
    let real = EvenlySpaced::new(&*real, args.max_real.filter(|&m| m > 0).unwrap_or(usize::MAX));

    let started = Instant::now();
    let bar = progress_bar(real.len() as u64, "{bar:40} {pos}/{len} real images [{elapsed_precise}<{eta_precise}]");
    let (real_features, cached) =
        extract_cached(&net, &real, &args.cache_dir, args.batch_size, None, |d, _| bar.set_position(d as u64))?;
    bar.finish();
    println!(
        "Real: {} images {}",
        real_features.len(),
        if cached {
            "(features from the cache)".to_string()
        } else {
            format!("in {:.1} s", started.elapsed().as_secs_f64())
        }
    );
    let options = MetricOptions::default();
    let mut results = Vec::new();
    let mut generated_features = Vec::new();
    for (name, source, set) in sets {
        let features = match set {
            Generated::Features(features, _) => features,
            Generated::Images(images) => {
                let bar = progress_bar(
                    images.len() as u64,
                    "{bar:40} {pos}/{len} generated images [{elapsed_precise}<{eta_precise}]",
                );
                let features = extract(&net, &*images, args.batch_size, None, |d, _| bar.set_position(d as u64))?;
                bar.finish();
                features
            }
        };
        let metrics = compare(&real_features, &features, &options).with_context(|| format!("evaluating {name}"))?;
        results.push(Named { name: name.clone(), source, metrics });
        generated_features.push((name, features));
    }

    // Each column as wide as its name (a random extractor's names are long), two spaces apart.
    let names = results[0].metrics.rows();
    let widths: Vec<usize> = names.iter().map(|(n, _)| n.len().max(10)).collect();
    let header: String = names.iter().zip(&widths).map(|((n, _), w)| format!("  {n:>w$}")).collect();
    println!("\n{:<28}{header}", "set");
    for r in &results {
        let values: String = r.metrics.rows().iter().zip(&widths).map(|((_, v), w)| format!("  {v:>w$.4}")).collect();
        println!("{:<28}{values}", r.name);
    }
    if !results[0].metrics.is_pretrained() {
        println!("(columns 1-3 are in {label}'s feature space: comparable between runs, not with published FIDs)");
    }

    let histogram = if args.histogram > 0 {
        let mut all = vec![("real".to_string(), &real_features.pool)];
        all.extend(generated_features.iter().map(|(n, f)| (n.clone(), &f.pool)));
        let h = feature_histogram(&all, args.histogram, &TsneOptions { seed: args.seed, ..Default::default() })?;
        println!("\nFeature histograms (1-D t-SNE, overlap with real):");
        for s in &h.sets[1..] {
            println!("  {:<26} {:.3}", s.name, s.overlap);
        }
        Some(h)
    } else {
        None
    };
    let report = Report { real: args.real.display().to_string(), results, histogram };
    let path = args.out.join("metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nWrote {}", path.display());
    Ok(())
}

/// A generated set: images to measure, or features measured as its samples were written (with the
/// images' side).
enum Generated {
    Images(Box<dyn ImageSource>),
    Features(SetFeatures, usize),
}
