//! `repdiff bench`: forward throughput and training steps/s of named DiTs on random latents.
//! Prints a Markdown table (for docs/benchmarks.md).

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use repdiff_engine::Tensor;
use repdiff_engine::config::{Conditioning, ModelConfig, RunConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::device::best_device;
use repdiff_engine::dit::Dit;
use repdiff_engine::nn::Params;
use repdiff_engine::ops::{MatmulPrecision, with_matmul_precision};
use repdiff_engine::rng::Rng;
use repdiff_engine::train::Trainer;

#[derive(Args)]
pub struct BenchArgs {
    /// Models to measure, comma-separated: DiT names, or a preset name (tiny-cpu) for that preset's model.
    #[arg(long, value_delimiter = ',', default_value = "DiT-S/2,DiT-B/2")]
    models: Vec<String>,
    /// Batch sizes, comma-separated: a row per model, precision and batch size.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    batch_size: Vec<usize>,
    /// Timed repetitions of each measurement (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Latent size and channels (32x32x4 = SD-VAE latents of 256x256 images).
    #[arg(long, default_value_t = 32)]
    input_size: usize,
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Also measure each model as the representation-conditional model (its encoder as deep as the
    /// DiT), to show the encoder's overhead. The plain rows are then unconditional, as in pre-training.
    #[arg(long)]
    representation: bool,
    /// Matrix-product precisions to measure, comma-separated (`--matmul-precision`): highest (f32), high
    /// (TF32 on a GPU), bf16 (bf16 operands, f32 sums: autocast on a GPU; on a CPU AMX tiles or
    /// AVX512-BF16 where it has them, else the row equals the f32 one).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "highest")]
    precision: Vec<super::PrecisionArg>,
    /// The same as adding bf16 to --precision.
    #[arg(long)]
    bf16: bool,
    /// Also time DDIM sampling with this many steps (a batch of each batch size, no guidance).
    #[arg(long)]
    sample_steps: Option<usize>,
    /// Also write the rows as JSON to this file (what scripts/gpu-check.sh keeps).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Measure single matrix products instead: the forward, input-gradient and weight-gradient products
    /// of each model's attention and MLP layers at --batch-size, in f32 and with bf16 products.
    #[arg(long)]
    products: bool,
    /// Measure the data pipeline instead (DICOM read, import, encode) on this many synthetic slices.
    #[arg(long)]
    imaging: Option<usize>,
    /// With --imaging: images to encode and decode with the SD VAE at 256x256 (0 skips it).
    #[arg(long, default_value_t = 4)]
    vae_images: usize,
    /// Measure the generation metrics instead: Inception-v3 features of this many 256x256 images (batches
    /// of --batch-size), then FID, P/R and density/coverage on them; extrapolated to 10,000 samples.
    #[arg(long)]
    metrics: Option<usize>,
    /// Measure the DINOv2 probe baseline instead: ViT-S/14 features of this many images at 224 and 518,
    /// and the probe's fit on 768 features.
    #[arg(long)]
    dino: Option<usize>,
    /// Measure the job queue instead: this many no-op jobs through claim/finish and through workers
    /// (a scratch database on the server of --database-url).
    #[arg(long)]
    pub(super) queue: Option<usize>,
    /// Concurrent workers for --queue.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// PostgreSQL for --queue (any database on the server; the benchmark makes and drops its own).
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
}

fn mean_seconds(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(jobs) = args.queue {
        return super::bench_queue::run(&args.database_url, jobs, args.workers.max(1));
    }
    if let Some(images) = args.dino {
        return dino(images.max(1));
    }
    if let Some(images) = args.metrics {
        return metrics(images.max(2), args.batch_size.first().copied().unwrap_or(16).max(1));
    }
    if let Some(slices) = args.imaging {
        return super::bench_imaging::run(slices, args.vae_images);
    }
    if args.products {
        return products(&args);
    }
    let (device, device_note) = best_device();
    let iters = args.iters.max(1);
    let mut precisions: Vec<MatmulPrecision> = args.precision.iter().map(|&p| p.into()).collect();
    if args.bf16 {
        precisions.push(MatmulPrecision::Bf16);
    }
    precisions.dedup();
    let kernel = match precisions.contains(&MatmulPrecision::Bf16) && device.is_cpu() {
        true => format!("; bf16 products: {}", repdiff_engine::ops::bf16_note()),
        false => String::new(),
    };
    println!(
        "Device: {device_note}; {}x{}x{} inputs, mean of {iters} timed runs after a warm-up{kernel}\n",
        args.channels, args.input_size, args.input_size
    );
    let sampling = args.sample_steps.map(|steps| format!(" DDIM-{steps} images/s |")).unwrap_or_default();
    let rule = if sampling.is_empty() { "" } else { "---|" };
    println!(
        "| model | precision | batch | parameters | forward images/s | train s/step | train images/s | peak GiB |{sampling}"
    );
    println!("|---|---|---|---|---|---|---|---|{rule}");
    let mut rows = Vec::new();
    for name in &args.models {
        let base = match RunConfig::preset(name) {
            Ok(preset) => preset.model,
            Err(_) => ModelConfig::dit(
                name,
                args.input_size,
                args.channels,
                Conditioning::Class { num_classes: 2, dropout_prob: 0.1 },
            )?,
        };
        let variants = if args.representation {
            let rep = Conditioning::Representation { encoder_depth: base.depth, encoder_heads: base.num_heads };
            vec![(name.clone(), Conditioning::None), (format!("{name} + representation"), rep)]
        } else {
            vec![(name.clone(), base.conditioning.clone())]
        };
        for (label, conditioning) in variants {
            for &precision in &precisions {
                for &batch in &args.batch_size {
                    let model = ModelConfig { conditioning: conditioning.clone(), ..base.clone() };
                    let row = bench_model(&label, model, precision, batch.max(1), &args, &device, iters);
                    println!("{}", row.markdown(args.sample_steps.is_some()));
                    rows.push(row);
                }
            }
        }
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({ "device": device_note, "iters": iters, "rows": rows });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// One row of the table, also written as JSON. A row that failed (out of memory, say) keeps its error.
#[derive(serde::Serialize)]
struct ModelRow {
    model: String,
    precision: &'static str,
    batch: usize,
    parameters: Option<usize>,
    forward_images_per_s: Option<f64>,
    train_s_per_step: Option<f64>,
    train_images_per_s: Option<f64>,
    peak_bytes: Option<u64>,
    sample_images_per_s: Option<f64>,
    error: Option<String>,
}

impl ModelRow {
    fn markdown(&self, sampling: bool) -> String {
        let num = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into());
        let head = format!("| {} | {} | {} |", self.model, self.precision, self.batch);
        if let Some(error) = &self.error {
            return format!("{head} failed: {} |", error.lines().next().unwrap_or_default());
        }
        let sample = if sampling { format!(" {} |", num(self.sample_images_per_s, 1)) } else { String::new() };
        format!(
            "{head} {:.1}M | {} | {} | {} | {} |{sample}",
            self.parameters.unwrap_or_default() as f64 / 1e6,
            num(self.forward_images_per_s, 1),
            num(self.train_s_per_step, 3),
            num(self.train_images_per_s, 1),
            num(self.peak_bytes.map(|b| b as f64 / (1u64 << 30) as f64), 2),
        )
    }
}

/// Forward throughput, training speed and peak memory (GPU) of `model` at `batch`, and optionally
/// sampling speed.
fn bench_model(
    label: &str,
    model: ModelConfig,
    precision: MatmulPrecision,
    batch: usize,
    args: &BenchArgs,
    device: &repdiff_engine::Device,
    iters: usize,
) -> ModelRow {
    let mut row = ModelRow {
        model: label.to_string(),
        precision: precision.name(),
        batch,
        parameters: None,
        forward_images_per_s: None,
        train_s_per_step: None,
        train_images_per_s: None,
        peak_bytes: None,
        sample_images_per_s: None,
        error: None,
    };
    if let Err(e) = measure_model(&mut row, model, precision, args, device, iters) {
        row.error = Some(format!("{e:#}"));
    }
    row
}

fn measure_model(
    row: &mut ModelRow,
    model: ModelConfig,
    precision: MatmulPrecision,
    args: &BenchArgs,
    device: &repdiff_engine::Device,
    iters: usize,
) -> Result<()> {
    use repdiff_engine::device::{peak_memory, reset_peak_memory};
    let n = row.batch;
    reset_peak_memory(device)?;
    let mut config = RunConfig::preset("paper")?;
    config.model = model;
    config.train.batch_size = n;
    config.train.matmul_precision = precision;
    let (channels, size, _) = config.model.sample_dims();
    let classes = config.model.num_classes().is_some();
    let mut trainer = Trainer::new(config.clone(), device)?;
    row.parameters = Some(trainer.vars().num_parameters());
    let mut rng = Rng::new(0);
    let data = Dataset::new(
        rng.randn((n, channels, size, size), device)?,
        Some((0..n as u32).map(|i| i % 2).collect()),
        Vec::new(),
    )?;
    let step = mean_seconds(iters, || {
        trainer.train_step(&data)?;
        Ok(())
    })?;
    row.train_s_per_step = Some(step);
    row.train_images_per_s = Some(n as f64 / step);
    row.peak_bytes = peak_memory(device)?;
    let x = rng.randn((n, channels, size, size), device)?;
    let t = Tensor::from_vec((0..n).map(|i| (i * 61 % 1000) as f32).collect::<Vec<_>>(), n, device)?;
    let y = Tensor::from_vec((0..n as u32).map(|i| i % 2).collect::<Vec<_>>(), n, device)?;
    // The forward as sampling and the classifier run it: frozen weights, so no op records a backward graph
    // (PyTorch's reference runs under `no_grad`).
    let frozen =
        Dit::new(trainer.model.config(), &Params::frozen(trainer.vars().tensors()?.into_iter().collect(), device))?;
    drop(trainer);
    let forward = mean_seconds(iters, || {
        with_matmul_precision(precision, || -> Result<()> {
            // A representation model's forward includes encoding its reference.
            let rep = match frozen.config().is_representation() {
                true => Some(frozen.encode(&x)?),
                false => None,
            };
            let out = frozen.forward_with(&x, &t, classes.then_some(&y), rep.as_ref())?;
            out.sum_all()?.to_scalar::<f32>()?;
            Ok(())
        })
    })?;
    row.forward_images_per_s = Some(n as f64 / forward);
    if let Some(steps) = args.sample_steps {
        use repdiff_engine::diffusion::SamplerKind;
        use repdiff_engine::sample::{SampleOptions, sample};
        let options = SampleOptions {
            num_samples: n,
            batch_size: n,
            sampler: SamplerKind::Ddim { eta: 0.0 },
            respacing: format!("ddim{steps}"),
            references: frozen.config().is_representation().then(|| x.clone()),
            ..SampleOptions::default()
        };
        let seconds = mean_seconds(1, || {
            with_matmul_precision(precision, || sample(&frozen, &config, &options, device, |_, _| {}))?;
            Ok(())
        })?;
        row.sample_images_per_s = Some(n as f64 / seconds);
    }
    Ok(())
}

/// The three products of a linear layer in training (forward `x W^T`, input gradient `g W`, weight
/// gradient `g^T x`) for each model's qkv, fc1 and fc2 layers over the batch's tokens, f32 and bf16, best of
/// --iters runs each.
fn products(args: &BenchArgs) -> Result<()> {
    use repdiff_engine::ops::{ProductShape, bf16_note, time_product};
    let reps = args.iters.max(1);
    let kernel = bf16_note();
    println!(
        "Matrix products on {} rayon threads, best of {reps} runs after a warm-up; bf16 products: {kernel}\n",
        rayon::current_num_threads()
    );
    println!("| model | layer | product | m x n x k | f32 ms | f32 GFLOP/s | bf16 ms | bf16 GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for name in &args.models {
        let model = ModelConfig::dit(name, args.input_size, args.channels, Conditioning::None)?;
        let tokens = args.batch_size.first().copied().unwrap_or(16) * (args.input_size / model.patch_size).pow(2);
        let d = model.hidden_size;
        for (layer, inputs, outputs) in [("qkv", d, 3 * d), ("mlp fc1", d, 4 * d), ("mlp fc2", 4 * d, d)] {
            let shapes = [
                (
                    "forward x W^T",
                    ProductShape { m: tokens, n: outputs, k: inputs, a_transposed: false, b_transposed: true },
                ),
                (
                    "input grad g W",
                    ProductShape { m: tokens, n: inputs, k: outputs, a_transposed: false, b_transposed: false },
                ),
                (
                    "weight grad g^T x",
                    ProductShape { m: outputs, n: inputs, k: tokens, a_transposed: true, b_transposed: false },
                ),
            ];
            for (product, shape) in shapes {
                let flops = 2.0 * (shape.m * shape.n * shape.k) as f64;
                let f32_s = time_product(shape, MatmulPrecision::Highest, reps).as_secs_f64();
                let bf16_s = time_product(shape, MatmulPrecision::Bf16, reps).as_secs_f64();
                println!(
                    "| {name} | {layer} | {product} | {} x {} x {} | {:.2} | {:.0} | {:.2} | {:.0} |",
                    shape.m,
                    shape.n,
                    shape.k,
                    f32_s * 1e3,
                    flops / f32_s / 1e9,
                    bf16_s * 1e3,
                    flops / bf16_s / 1e9
                );
            }
        }
    }
    Ok(())
}

/// DINOv2 ViT-S/14 (random weights: the speed does not depend on them) per image at its two usual sizes,
/// and the linear probe's fit (7 strengths) on 768 features of 300 training and 40 validation rows.
fn dino(n: usize) -> Result<()> {
    use repdiff_engine::dino::Dino;
    use repdiff_engine::probe::{LAMBDAS, choose};
    let (device, device_note) = best_device();
    let images = Rng::new(0).randn((n, 1, 256, 256), &device)?.clamp(-1f32, 1f32)?;
    println!("Device: {device_note}; {n} grey images of 256x256\n");
    println!("| step | measured |");
    println!("|---|---|");
    for size in [224, 518] {
        let net = Dino::random(0, size, &device)?;
        net.features(&images.narrow(0, 0, 1)?, 1)?;
        let start = Instant::now();
        net.features(&images, 16)?;
        let per_image = start.elapsed().as_secs_f64() / n as f64;
        println!(
            "| DINOv2 ViT-S/14 features at {size}x{size} | {:.1} ms/image ({:.2} images/s) |",
            per_image * 1e3,
            1.0 / per_image
        );
    }
    let mut rng = Rng::new(1);
    let mut rows = |n: usize| -> (Vec<Vec<f32>>, Vec<u32>) {
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
        let x = labels.iter().map(|&y| rng.normal_vec(768).into_iter().map(|v| v + 0.1 * y as f32).collect()).collect();
        (x, labels)
    };
    let (train, validation) = (rows(300), rows(40));
    let start = Instant::now();
    let (probe, _) = choose((&train.0, &train.1), (&validation.0, &validation.1), 2, &LAMBDAS)?;
    println!(
        "| probe fit, 768 features, 300 rows, {} strengths | {:.2} s (the chosen one: {} Newton steps) |",
        LAMBDAS.len(),
        start.elapsed().as_secs_f64(),
        probe.iterations
    );
    Ok(())
}

/// Inception-v3 throughput on `n` images, and the metrics on 2,000 synthetic feature rows per set; a
/// 10,000-image evaluation (real and generated) extrapolated: features and the Gaussian fits linear in
/// N, the eigendecompositions constant, the neighbour searches (P/R, D/C) quadratic.
fn metrics(n: usize, batch: usize) -> Result<()> {
    use repdiff_engine::metrics::{
        FeatureMatrix, Gaussian, InceptionV3, density_coverage, extract, frechet_distance, precision_recall,
    };
    let (device, device_note) = best_device();
    let net = InceptionV3::random(0, &device)?;
    let images = Rng::new(0).randn((n, 3, 256, 256), &device)?.clamp(-1f32, 1f32)?;
    println!("Device: {device_note}; {n} images of 3x256x256, batch {batch}\n");
    let start = Instant::now();
    extract(&net, &images, batch, None, |_, _| {})?;
    let per_image = start.elapsed().as_secs_f64() / n as f64;

    let rows = 2000;
    let mut rng = Rng::new(1);
    let mut set = |d: usize| FeatureMatrix::new(rows, d, rng.normal_vec(rows * d));
    let (real, fake, real_s, fake_s) = (set(2048)?, set(2048)?, set(2023)?, set(2023)?);
    let start = Instant::now();
    let fits = [Gaussian::fit(&real)?, Gaussian::fit(&fake)?, Gaussian::fit(&real_s)?, Gaussian::fit(&fake_s)?];
    let fit_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    frechet_distance(&fits[0], &fits[1])?;
    frechet_distance(&fits[2], &fits[3])?;
    let fd_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    precision_recall(&real, &fake, 3)?;
    density_coverage(&real, &fake, 5)?;
    let nn_s = start.elapsed().as_secs_f64();
    let scale = 10_000.0 / rows as f64;
    println!("| step | measured | 10,000 real + 10,000 generated (extrapolated) |");
    println!("|---|---|---|");
    println!(
        "| Inception-v3 features | {:.1} ms/image ({:.2} images/s) | {:.0} min |",
        per_image * 1e3,
        1.0 / per_image,
        2.0 * 10_000.0 * per_image / 60.0
    );
    println!("| 4 Gaussian fits (FID, sFID) | {fit_s:.2} s at {rows} rows | {:.1} s |", fit_s * scale);
    println!("| 2 Frechet distances (eigendecompositions) | {fd_s:.2} s | {fd_s:.2} s |");
    println!(
        "| P/R (k=3) + density/coverage (k=5) | {nn_s:.2} s at {rows} rows | {:.1} min |",
        nn_s * scale * scale / 60.0
    );
    Ok(())
}
