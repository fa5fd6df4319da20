//! Drawing samples from a trained DiT: DDPM or DDIM over the full or a respaced process, with class labels
//! and classifier-free guidance, each batch's noise from its own seeded stream.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::checkpoint::Checkpoint;
use crate::config::{DataSpace, RunConfig};
use crate::diffusion::{GaussianDiffusion, Prediction, SamplerKind};
use crate::dit::Dit;
use crate::nn::Params;
use crate::rng::Rng;
use crate::train::CancelToken;
use crate::{Error, Result};

/// Which weights of a training checkpoint to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    Ema,
    Raw,
}

/// Loads a model for inference from a checkpoint.
pub fn load_model(path: &Path, weights: Weights, device: &Device) -> Result<(Dit, RunConfig)> {
    let ckpt = Checkpoint::read(path, device)?;
    let config = ckpt.config()?;
    let section = match weights {
        Weights::Ema => "ema",
        Weights::Raw => "model",
    };
    if !ckpt.has_section(section) {
        return Err(Error::checkpoint(path, format!("has no {section} weights")));
    }
    let params = Params::frozen(ckpt.section(section), device);
    let model = Dit::new(&config.model, &params)
        .map_err(|e| Error::checkpoint(path, format!("does not fit its own config: {e}")))?;
    params.finish().map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok((model, config))
}

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub num_samples: usize,
    /// Class of each sample (cycled if shorter than `num_samples`); `None` for a class-conditional model
    /// means all classes in turn.
    pub labels: Option<Vec<u32>>,
    /// Classifier-free guidance scale; 1 disables guidance.
    pub guidance_scale: f64,
    pub sampler: SamplerKind,
    /// Respacing spec (`""` = all T steps, `"250"`, `"ddim50"`).
    pub respacing: String,
    pub seed: u64,
    pub batch_size: usize,
    /// Clamp x0 predictions to [-1, 1] at each step; `None` = yes for pixel-space models, no for latents.
    pub clip_denoised: Option<bool>,
    /// Checked before every denoising step: sampling stops with [`Error::Cancelled`].
    pub cancel: CancelToken,
    /// Reference latents `[M, C, H, W]` for a representation-conditional model: sample i is a variation
    /// of reference i mod M (how the paper draws its samples for FID).
    pub references: Option<Tensor>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            num_samples: 16,
            labels: None,
            guidance_scale: 1.0,
            sampler: SamplerKind::Ddpm,
            respacing: "250".into(),
            seed: 0,
            batch_size: 16,
            clip_denoised: None,
            cancel: CancelToken::default(),
            references: None,
        }
    }
}

/// The model output used for a step, with classifier-free guidance applied to the eps channels when asked
/// (the variance channels are the conditional branch's). DiT's reference guides only 3 channels "for exact
/// reproducibility"; this guides all of them, the standard formulation.
pub fn guided_output(
    model: &Dit,
    x: &Tensor,
    t_model: &Tensor,
    labels: Option<&Tensor>,
    rep: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let guided = scale != 1.0;
    let Some(labels) = labels.filter(|_| guided) else {
        return model.forward_with(x, t_model, labels, rep);
    };
    let null = model.config().null_class().ok_or_else(|| {
        Error::Config("classifier-free guidance needs a model trained with label dropout (a null class)".into())
    })?;
    let n = x.dim(0)?;
    let null_labels = Tensor::full(null as u32, n, x.device())?;
    let out = model.forward(
        &Tensor::cat(&[x, x], 0)?,
        &Tensor::cat(&[t_model, t_model], 0)?,
        Some(&Tensor::cat(&[labels, &null_labels], 0)?),
    )?;
    let c = x.dim(1)?;
    let (cond, uncond) = (out.narrow(0, 0, n)?, out.narrow(0, n, n)?);
    let (cond_eps, uncond_eps) = (cond.narrow(1, 0, c)?, uncond.narrow(1, 0, c)?);
    let eps = (&uncond_eps + ((cond_eps - &uncond_eps)? * scale)?)?;
    let rest = cond.narrow(1, c, cond.dim(1)? - c)?;
    Ok(Tensor::cat(&[&eps, &rest], 1)?)
}

/// What the reverse process is steered by: class labels (for a class-conditional model), the
/// classifier-free guidance scale (1 = none), and whether x0 predictions are clipped to the data range.
#[derive(Clone, Copy)]
pub struct Guide<'a> {
    pub labels: Option<&'a Tensor>,
    /// The representation of the reference latents, for a representation-conditional model.
    pub rep: Option<&'a Tensor>,
    pub scale: f64,
    /// Clamp each step's x0 prediction to [-1, 1] (pixel-space data).
    pub clip_denoised: bool,
    /// Checked before every step.
    pub cancel: Option<&'a CancelToken>,
}

/// Runs the reverse process from `noise` to data. `on_step(i, &prediction)` sees each step's prediction
/// (its `pred_xstart` is the x0 estimate along the trajectory).
pub fn denoise(
    model: &Dit,
    diffusion: &GaussianDiffusion,
    noise: Tensor,
    guide: Guide,
    sampler: SamplerKind,
    rng: &mut Rng,
    on_step: impl FnMut(usize, &Prediction),
) -> Result<Tensor> {
    denoise_from(model, diffusion, noise, diffusion.num_steps(), guide, sampler, rng, on_step)
}

/// Runs the reverse process from `x`, a sample at (respaced) step `from` - 1 (the whole process when
/// `from` is `diffusion.num_steps()`), down to data.
#[allow(clippy::too_many_arguments)]
pub fn denoise_from(
    model: &Dit,
    diffusion: &GaussianDiffusion,
    x: Tensor,
    from: usize,
    guide: Guide,
    sampler: SamplerKind,
    rng: &mut Rng,
    mut on_step: impl FnMut(usize, &Prediction),
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let mut x = x;
    for (done, i) in (0..from.min(diffusion.num_steps())).rev().enumerate() {
        if guide.cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled { step: done });
        }
        let t = vec![i; n];
        let t_model = diffusion.model_timesteps(&t, x.device())?;
        let output = guided_output(model, &x, &t_model, guide.labels, guide.rep, guide.scale)?;
        let prediction = diffusion.p_mean_variance(&output, &x, &t, guide.clip_denoised)?;
        let step_noise = rng.randn(x.shape().clone(), x.device())?;
        x = diffusion.step(sampler, &prediction, &x, &t, &step_noise)?;
        on_step(i, &prediction);
    }
    Ok(x)
}

/// The class of each of `n` samples.
pub fn labels_for(model: &Dit, requested: Option<&[u32]>, n: usize) -> Result<Option<Vec<u32>>> {
    match (model.config().num_classes(), requested) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Error::Config("this model is unconditional: it takes no class labels".into())),
        (Some(classes), requested) => {
            let pool: Vec<u32> = match requested {
                Some([]) | None => (0..classes as u32).collect(),
                Some(list) => list.to_vec(),
            };
            if let Some(&bad) = pool.iter().find(|&&l| l as usize >= classes) {
                return Err(Error::Config(format!("class {bad} does not exist: the model has {classes} classes")));
            }
            Ok(Some((0..n).map(|i| pool[i % pool.len()]).collect()))
        }
    }
}

/// Draws `options.num_samples` samples; returns `[N, C, H, W]` and the label of each.
/// `on_progress(done_steps, total_steps)` is called after every denoising step.
pub fn sample(
    model: &Dit,
    config: &RunConfig,
    options: &SampleOptions,
    device: &Device,
    on_progress: impl FnMut(usize, usize),
) -> Result<(Tensor, Option<Vec<u32>>)> {
    sample_observed(model, config, options, device, on_progress, |_, _| {})
}

/// [`sample`], showing `observe(i, &prediction)` every step of every batch (batches in order): what a
/// trajectory records.
pub fn sample_observed(
    model: &Dit,
    config: &RunConfig,
    options: &SampleOptions,
    device: &Device,
    mut on_progress: impl FnMut(usize, usize),
    mut observe: impl FnMut(usize, &Prediction),
) -> Result<(Tensor, Option<Vec<u32>>)> {
    if options.num_samples == 0 || options.batch_size == 0 {
        return Err(Error::Config("num_samples and batch_size must be positive".into()));
    }
    let diffusion = GaussianDiffusion::respaced(&config.diffusion, config.model.learn_sigma, &options.respacing)?;
    let labels = labels_for(model, options.labels.as_deref(), options.num_samples)?;
    let (c, h, w) = config.model.sample_dims();
    let references = match (config.model.is_representation(), &options.references) {
        (true, Some(r)) => {
            let m = r.dim(0).unwrap_or(0);
            crate::error::expect_shape("reference latents", r, &[m, c, h, w])?;
            if m == 0 {
                return Err(Error::Config("no reference latents given".into()));
            }
            Some(r.to_device(device)?)
        }
        (true, None) => {
            return Err(Error::Config(
                "a representation-conditional model samples variations of reference images: give references".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(Error::Config("only a representation-conditional model takes references".into()));
        }
        (false, None) => None,
    };
    let batches = options.num_samples.div_ceil(options.batch_size);
    let total = batches * diffusion.num_steps();
    let mut done = 0;
    let mut outputs = Vec::with_capacity(batches);
    for b in 0..batches {
        let start = b * options.batch_size;
        let n = options.batch_size.min(options.num_samples - start);
        let mut rng = Rng::derive(options.seed, b as u64);
        let noise = rng.randn((n, c, h, w), device)?;
        let batch_labels = match &labels {
            Some(all) => Some(Tensor::new(&all[start..start + n], device)?),
            None => None,
        };
        // Encoded once per batch: the reference does not change along the trajectory.
        let rep = match &references {
            Some(r) => {
                let m = r.dim(0)?;
                let ids: Vec<u32> = (start..start + n).map(|i| (i % m) as u32).collect();
                Some(model.encode(&r.index_select(&Tensor::new(ids.as_slice(), device)?, 0)?)?)
            }
            None => None,
        };
        let x = denoise(
            model,
            &diffusion,
            noise,
            Guide {
                labels: batch_labels.as_ref(),
                rep: rep.as_ref(),
                scale: options.guidance_scale,
                clip_denoised: options.clip_denoised.unwrap_or(config.data_space == DataSpace::Pixels),
                cancel: Some(&options.cancel),
            },
            options.sampler,
            &mut rng,
            |i, prediction| {
                observe(i, prediction);
                done += 1;
                on_progress(done, total);
            },
        )?;
        outputs.push(x);
    }
    Ok((Tensor::cat(&outputs, 0)?, labels))
}

/// Samples as images can show them: pixel-space samples as they are, latents decoded by the run's
/// autoencoder when its weights are in `weights_dir`; without them the latents themselves (their first
/// channels make a preview) and a note saying so.
pub fn decode_for_display(
    samples: &Tensor,
    config: &RunConfig,
    weights_dir: &Path,
) -> Result<(Tensor, Option<String>)> {
    let decoder = Decoder::new(config, weights_dir, samples.device());
    Ok((decoder.decode(samples)?, decoder.note))
}

/// Turns a run's samples into images, chunk after chunk, with its autoencoder loaded once: latents are
/// decoded when the autoencoder's weights are there, else previewed by their first channels (and `note`
/// says why); pixel samples are the images.
pub struct Decoder {
    autoencoder: Option<Box<dyn crate::autoencoder::Autoencoder>>,
    pub note: Option<String>,
}

impl Decoder {
    pub fn new(config: &RunConfig, weights_dir: &Path, device: &Device) -> Self {
        match &config.data_space {
            DataSpace::Pixels => Decoder { autoencoder: None, note: None },
            DataSpace::Latents { autoencoder: name, .. } => {
                match crate::autoencoder::by_name(name, 3, weights_dir, device) {
                    Ok(model) => Decoder { autoencoder: Some(model), note: None },
                    Err(e) => Decoder {
                        autoencoder: None,
                        note: Some(format!("{e}; the PNGs preview the latents' first three channels")),
                    },
                }
            }
        }
    }

    pub fn decode(&self, samples: &Tensor) -> Result<Tensor> {
        match &self.autoencoder {
            Some(model) => model.decode(samples),
            None => Ok(samples.clone()),
        }
    }
}

/// The files [`write_samples`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenSamples {
    /// One PNG per sample, with its class.
    pub images: Vec<(std::path::PathBuf, Option<u32>)>,
    pub grid: Option<std::path::PathBuf>,
    /// The raw samples (`latents`, `labels`), readable as a training set.
    pub tensors: std::path::PathBuf,
    /// Set when latent samples could not be decoded (no autoencoder weights): the PNGs then preview
    /// the latents' first channels.
    pub note: Option<String>,
}

/// Writes samples to `out`: a PNG per sample (`sample_0003_class1.png`), `grid.png` (a row per class
/// when labelled), and `samples.safetensors`. Latent-space samples are decoded by the run's autoencoder
/// when its weights are in `weights_dir`.
pub fn write_samples(
    samples: &Tensor,
    labels: Option<&[u32]>,
    config: &RunConfig,
    weights_dir: &Path,
    out: &Path,
) -> Result<WrittenSamples> {
    write_samples_with(samples, labels, config, weights_dir, out, |_| Ok(()))
}

/// Samples decoded and written this many at a time, so a large set is never decoded at once.
const WRITE_CHUNK: usize = 32;
/// The grid shows at most this many samples (the first).
const GRID_MAX: usize = 256;

/// [`write_samples`], showing each decoded chunk of images (`[n, C, H, W]` in [-1, 1], in order) to
/// `on_decoded`: what measures samples as they are written without decoding them twice.
pub fn write_samples_with(
    samples: &Tensor,
    labels: Option<&[u32]>,
    config: &RunConfig,
    weights_dir: &Path,
    out: &Path,
    mut on_decoded: impl FnMut(&Tensor) -> Result<()>,
) -> Result<WrittenSamples> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let n = samples.dim(0)?;
    let mut images = Vec::with_capacity(n);
    let mut shown = Vec::new();
    let decoder = Decoder::new(config, weights_dir, samples.device());
    for start in (0..n).step_by(WRITE_CHUNK) {
        let len = WRITE_CHUNK.min(n - start);
        let decoded = decoder.decode(&samples.narrow(0, start, len)?)?;
        on_decoded(&decoded)?;
        for (k, picture) in crate::imaging::to_images(&decoded)?.into_iter().enumerate() {
            let i = start + k;
            let class = labels.map(|l| l[i]);
            let name = match class {
                Some(c) => format!("sample_{i:04}_class{c}.png"),
                None => format!("sample_{i:04}.png"),
            };
            let path = out.join(name);
            crate::imaging::save_png(&picture, &path)?;
            images.push((path, class));
            if shown.len() < GRID_MAX {
                shown.push(picture);
            }
        }
    }
    let columns = (shown.len() as f64).sqrt().ceil() as usize;
    let columns = if labels.is_some() { columns.max(8).min(shown.len()) } else { columns };
    let grid = match crate::imaging::grid(&shown, columns) {
        Some(grid) => {
            let path = out.join("grid.png");
            crate::imaging::save_png(&grid.into(), &path)?;
            Some(path)
        }
        None => None,
    };
    let tensors = out.join("samples.safetensors");
    crate::data::Dataset::new(samples.clone(), labels.map(<[u32]>::to_vec), Vec::new())?.save_latent_file(&tensors)?;
    Ok(WrittenSamples { images, grid, tensors, note: decoder.note })
}
