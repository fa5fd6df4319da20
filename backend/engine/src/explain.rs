//! Where a class-conditional model puts the haematoma (the paper's Figs. 10 and 11).
//!
//! **Counterfactuals**: noise a scan's latent to timestep t, denoise it deterministically (DDIM, eta 0)
//! under each class label from the same noisy latent, decode, and take the difference between the
//! classes: what the model changes to make the scan "haematoma" rather than "no haematoma".
//! **Trajectories**: the model's x0 predictions at chosen steps along a sampling run, from pure noise to
//! the sample.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use image::{DynamicImage, RgbImage};

use crate::config::{DataSpace, RunConfig};
use crate::diffusion::{GaussianDiffusion, SamplerKind};
use crate::dit::Dit;
use crate::rng::Rng;
use crate::sample::{Decoder, Guide, SampleOptions, denoise_from, sample_observed};
use crate::train::CancelToken;
use crate::{Error, Result};

/// How counterfactuals are drawn.
#[derive(Clone, Debug)]
pub struct CounterfactualOptions {
    /// The noise level to go up to (of the trained T steps); the run starts at the nearest DDIM step at
    /// or below it.
    pub t: usize,
    /// DDIM steps over the whole process (those below t are run).
    pub steps: usize,
    /// Classifier-free guidance scale (1 = none).
    pub guidance_scale: f64,
    pub seed: u64,
    pub batch_size: usize,
    /// Clamp x0 predictions to [-1, 1]; `None` = yes for pixel-space models.
    pub clip_denoised: Option<bool>,
    pub cancel: CancelToken,
}

impl Default for CounterfactualOptions {
    fn default() -> Self {
        CounterfactualOptions {
            t: 500,
            steps: 50,
            guidance_scale: 1.0,
            seed: 0,
            batch_size: 16,
            clip_denoised: None,
            cancel: CancelToken::default(),
        }
    }
}

/// Each image denoised under every class from the same noisy latent.
#[derive(Clone, Debug)]
pub struct Counterfactuals {
    /// The timestep the images were noised to (a DDIM step at or below the one asked for).
    pub t: usize,
    pub originals: Tensor,
    /// `per_class[c]`: every image denoised under class c, `[N, C, H, W]`.
    pub per_class: Vec<Tensor>,
}

fn num_classes(model: &Dit, what: &str) -> Result<usize> {
    model.config().num_classes().ok_or_else(|| Error::Config(format!("{what} need a class-conditional model")))
}

/// Counterfactuals of the images `z0` (`[N, C, H, W]`, in the model's data space). Image i's noise is
/// its own seeded stream. `on_progress(done, total)` counts denoising steps.
pub fn counterfactuals(
    model: &Dit,
    config: &RunConfig,
    z0: &Tensor,
    options: &CounterfactualOptions,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Counterfactuals> {
    let classes = num_classes(model, "counterfactuals")?;
    let (c, h, w) = config.model.sample_dims();
    let n = z0.dim(0)?;
    crate::error::expect_shape("images", z0, &[n, c, h, w])?;
    if n == 0 || options.batch_size == 0 {
        return Err(Error::Config("counterfactuals need images and a positive batch size".into()));
    }
    if options.t == 0 || options.t >= config.diffusion.num_timesteps {
        return Err(Error::Config(format!("t is in 1..{}, not {}", config.diffusion.num_timesteps, options.t)));
    }
    let diffusion =
        GaussianDiffusion::respaced(&config.diffusion, config.model.learn_sigma, &format!("ddim{}", options.steps))?;
    // Run the DDIM steps at or below t; noise to the highest of them.
    let from = diffusion.timestep_map.iter().filter(|&&s| s <= options.t).count();
    if from == 0 {
        return Err(Error::Config(format!("no DDIM step of {} lies at or below t = {}", options.steps, options.t)));
    }
    let t_used = diffusion.timestep_map[from - 1];
    let clip = options.clip_denoised.unwrap_or(config.data_space == DataSpace::Pixels);
    let image_len = c * h * w;
    let batches = n.div_ceil(options.batch_size);
    let total = batches * classes * from;
    let mut done = 0;
    let mut per_class: Vec<Vec<Tensor>> = vec![Vec::with_capacity(batches); classes];
    for b in 0..batches {
        let start = b * options.batch_size;
        let size = options.batch_size.min(n - start);
        let batch = z0.narrow(0, start, size)?;
        let noise: Vec<f32> =
            (start..start + size).flat_map(|i| Rng::derive(options.seed, i as u64).normal_vec(image_len)).collect();
        let noise = Tensor::from_vec(noise, (size, c, h, w), z0.device())?;
        let x_t = diffusion.q_sample(&batch, &vec![from - 1; size], &noise)?;
        for (class, outputs) in per_class.iter_mut().enumerate() {
            let labels = Tensor::full(class as u32, size, z0.device())?;
            let guide = Guide {
                labels: Some(&labels),
                rep: None,
                scale: options.guidance_scale,
                clip_denoised: clip,
                cancel: Some(&options.cancel),
            };
            // DDIM with eta 0 is deterministic: the step noise it draws is scaled by zero.
            let mut rng = Rng::new(0);
            let x = denoise_from(
                model,
                &diffusion,
                x_t.clone(),
                from,
                guide,
                SamplerKind::Ddim { eta: 0.0 },
                &mut rng,
                |_, _| {
                    done += 1;
                    on_progress(done, total);
                },
            )?;
            outputs.push(x);
        }
    }
    let per_class = per_class.iter().map(|parts| Tensor::cat(parts, 0)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Counterfactuals { t: t_used, originals: z0.clone(), per_class })
}

/// A sampling run's x0 predictions at chosen steps.
#[derive(Clone, Debug)]
pub struct Trajectory {
    /// The trained-process timestep of each frame, noisiest first.
    pub timesteps: Vec<usize>,
    /// `frames[k]`: every sample's x0 prediction at `timesteps[k]`, `[N, C, H, W]`.
    pub frames: Vec<Tensor>,
    pub samples: Tensor,
    pub labels: Option<Vec<u32>>,
    /// A representation model's reference of each sample (the image it draws a variation of), `[N, C, H,
    /// W]`: the paper's Fig. 11 shows it beside the trajectory.
    pub references: Option<Tensor>,
}

/// Which of `steps` respaced steps (counted down from `steps - 1`) are recorded: `frames` of them evenly
/// spaced, the first and the last step always among them.
pub fn frame_steps(steps: usize, frames: usize) -> Vec<usize> {
    let frames = frames.clamp(1, steps.max(1));
    if frames == 1 {
        return vec![0];
    }
    let mut picked: Vec<usize> =
        (0..frames).map(|k| (steps - 1) - ((k * (steps - 1)) as f64 / (frames - 1) as f64).round() as usize).collect();
    picked.dedup();
    picked
}

/// Draws samples as [`crate::sample::sample`] does (same noise for the same options) and records the x0
/// prediction at `frames` evenly spaced steps.
pub fn trajectory(
    model: &Dit,
    config: &RunConfig,
    options: &SampleOptions,
    frames: usize,
    device: &candle_core::Device,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Trajectory> {
    if options.num_samples == 0 || options.batch_size == 0 || frames == 0 {
        return Err(Error::Config("trajectories need samples, a positive batch size and frames".into()));
    }
    let diffusion = GaussianDiffusion::respaced(&config.diffusion, config.model.learn_sigma, &options.respacing)?;
    let recorded = frame_steps(diffusion.num_steps(), frames);
    let mut frame_parts: Vec<Vec<Tensor>> = vec![Vec::new(); recorded.len()];
    let (samples, labels) = sample_observed(model, config, options, device, &mut on_progress, |i, prediction| {
        if let Some(k) = recorded.iter().position(|&r| r == i) {
            frame_parts[k].push(prediction.pred_xstart.clone());
        }
    })?;
    // Sample i varies reference i mod m, as `sample` pairs them.
    let references = match &options.references {
        Some(r) if config.model.is_representation() => {
            let m = r.dim(0)?;
            let ids: Vec<u32> = (0..options.num_samples).map(|i| (i % m) as u32).collect();
            Some(r.index_select(&Tensor::new(ids.as_slice(), r.device())?, 0)?)
        }
        _ => None,
    };
    Ok(Trajectory {
        references,
        timesteps: recorded.iter().map(|&i| diffusion.timestep_map[i]).collect(),
        frames: frame_parts.iter().map(|parts| Tensor::cat(parts, 0)).collect::<candle_core::Result<Vec<_>>>()?,
        samples,
        labels,
    })
}

/// A signed difference map: red where `b` is brighter than `a`, blue where darker, black where equal;
/// `scale` is the difference drawn at full intensity.
fn difference_image(a: &Tensor, b: &Tensor, scale: f32) -> Result<DynamicImage> {
    let (_, h, w) = a.dims3()?;
    let diff = (b - a)?.mean(0)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut rgb = Vec::with_capacity(3 * h * w);
    for d in diff {
        let v = ((d.abs() / scale).min(1.0) * 255.0).round() as u8;
        rgb.extend(if d >= 0.0 { [v, 0, 0] } else { [0, 0, v] });
    }
    Ok(DynamicImage::ImageRgb8(RgbImage::from_raw(w as u32, h as u32, rgb).expect("size")))
}

/// What [`write_counterfactuals`] wrote, and the size of each image's change.
#[derive(Clone, Debug)]
pub struct CounterfactualReport {
    pub t: usize,
    /// One row per image: original, then each class's denoising, then each class's difference to class 0.
    pub rows: Vec<PathBuf>,
    pub grid: PathBuf,
    /// Mean absolute difference between the last class and class 0 per image (in the displayed range).
    pub mean_abs_difference: Vec<f64>,
    /// The difference drawn at full intensity in every map (the largest over all images).
    pub scale: f64,
    pub note: Option<String>,
}

/// Writes counterfactuals as images (decoded when latent): `counterfactual_0003.png` per image (a row:
/// original | class 0 | class 1 | ... | class c - class 0 ...), `counterfactuals.png` (all rows) and
/// `counterfactuals.json` (this report).
pub fn write_counterfactuals(
    cf: &Counterfactuals,
    config: &RunConfig,
    weights_dir: &Path,
    out: &Path,
) -> Result<CounterfactualReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let decoder = Decoder::new(config, weights_dir, cf.originals.device());
    let note = decoder.note.clone();
    let originals = decoder.decode(&cf.originals)?;
    let classes = cf.per_class.iter().map(|x| decoder.decode(x)).collect::<Result<Vec<_>>>()?;
    let n = originals.dim(0)?;
    let last = classes.len() - 1;
    let diff_all = (&classes[last] - &classes[0])?.mean(1)?;
    let scale = diff_all.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?.max(1e-6);
    let mean_abs: Vec<f32> = diff_all.abs()?.flatten_from(1)?.mean(1)?.to_dtype(DType::F32)?.to_vec1()?;
    let pictures_of = |x: &Tensor| crate::imaging::to_images(x);
    let (original_pictures, class_pictures) =
        (pictures_of(&originals)?, classes.iter().map(pictures_of).collect::<Result<Vec<_>>>()?);
    let mut all = Vec::new();
    let mut rows = Vec::with_capacity(n);
    let columns = 1 + classes.len() + last;
    for i in 0..n {
        let mut row = vec![original_pictures[i].clone()];
        row.extend(class_pictures.iter().map(|p| p[i].clone()));
        for class in &classes[1..] {
            row.push(difference_image(&classes[0].get(i)?, &class.get(i)?, scale)?);
        }
        let path = out.join(format!("counterfactual_{i:04}.png"));
        crate::imaging::save_png(&crate::imaging::grid(&row, columns).expect("a row").into(), &path)?;
        rows.push(path);
        all.extend(row);
    }
    let grid = out.join("counterfactuals.png");
    crate::imaging::save_png(&crate::imaging::grid(&all, columns).expect("rows").into(), &grid)?;
    let report = CounterfactualReport {
        t: cf.t,
        rows,
        grid,
        mean_abs_difference: mean_abs.iter().map(|&v| v as f64).collect(),
        scale: scale as f64,
        note,
    };
    // File names, not paths: the folder may be moved (or be a worker's scratch).
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let json = out.join("counterfactuals.json");
    let written = serde_json::json!({
        "t": report.t,
        "rows": report.rows.iter().map(|p| name(p)).collect::<Vec<_>>(),
        "grid": name(&report.grid),
        "mean_abs_difference": report.mean_abs_difference,
        "scale": report.scale,
        "note": report.note,
    });
    std::fs::write(&json, serde_json::to_string_pretty(&written).expect("serialisable"))
        .map_err(|e| Error::io(&json, e))?;
    Ok(report)
}

/// Writes a trajectory: `trajectory_0003.png` per sample (its reference first for a representation
/// model, then its frames left to right, noisiest first) and `trajectory.png` (a row per sample). Returns the rows, the grid and a note when latents could not be
/// decoded.
pub fn write_trajectory(
    trajectory: &Trajectory,
    config: &RunConfig,
    weights_dir: &Path,
    out: &Path,
) -> Result<(Vec<PathBuf>, PathBuf, Option<String>)> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let decoder = Decoder::new(config, weights_dir, trajectory.samples.device());
    let note = decoder.note.clone();
    let mut frames = Vec::with_capacity(trajectory.frames.len() + 1);
    // A representation model's rows start with the reference the sample is a variation of.
    if let Some(references) = &trajectory.references {
        frames.push(crate::imaging::to_images(&decoder.decode(references)?)?);
    }
    for frame in &trajectory.frames {
        frames.push(crate::imaging::to_images(&decoder.decode(frame)?)?);
    }
    let columns = frames.len();
    let n = trajectory.samples.dim(0)?;
    let mut rows = Vec::with_capacity(n);
    let mut all = Vec::with_capacity(n * columns);
    for i in 0..n {
        let row: Vec<DynamicImage> = frames.iter().map(|f| f[i].clone()).collect();
        let path = out.join(format!("trajectory_{i:04}.png"));
        crate::imaging::save_png(&crate::imaging::grid(&row, columns).expect("a row").into(), &path)?;
        rows.push(path);
        all.extend(row);
    }
    let grid = out.join("trajectory.png");
    crate::imaging::save_png(&crate::imaging::grid(&all, columns).expect("rows").into(), &grid)?;
    Ok((rows, grid, note))
}
