//! Autoencoders: the map between images (`[N, C, H, W]` in [-1, 1]) and the space the diffusion model
//! works in. Two implementations behind one trait:
//! - [`PixelSpace`]: no autoencoder, the model sees the (resized) pixels. For CPU runs and tests.
//! - [`SdVae`]: Stable Diffusion's VAE (candle-transformers' `AutoEncoderKL`, diffusers weight names),
//!   latents of 4 x H/8 x W/8 multiplied by 0.18215, as the paper and DiT use.
//!
//! Posterior sampling draws from RepDiff's seeded [`Rng`], so an encoded dataset is reproducible.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rng::Rng;
use crate::{Error, Result};

/// Which point of the posterior an image encodes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Posterior {
    /// The posterior mean (deterministic).
    Mean,
    /// A draw `mean + std * eps`, eps from the seeded RNG (as DiT's feature extraction does).
    Sample,
}

pub trait Autoencoder: Send + Sync {
    /// Names the autoencoder and its weights: a latent cache made with another id is stale.
    fn id(&self) -> String;
    /// Channels of the images it takes.
    fn image_channels(&self) -> usize;
    /// `(channels, height, width)` of the latent of an `image_size` x `image_size` image.
    fn latent_dims(&self, image_size: usize) -> (usize, usize, usize);
    /// Images to latents (scaled for the diffusion model).
    fn encode(&self, images: &Tensor, posterior: Posterior, rng: &mut Rng) -> Result<Tensor>;
    /// Latents (scaled) to images in [-1, 1] (not clamped).
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
}

fn check_images(images: &Tensor, channels: usize, multiple: usize) -> Result<(usize, usize, usize)> {
    let dims = images.dims();
    match *dims {
        [n, c, h, w] if c == channels && h % multiple == 0 && w % multiple == 0 => Ok((n, h, w)),
        _ => Err(Error::Shape {
            what: "images to encode".into(),
            expected: format!("[N, {channels}, H, W] with H and W multiples of {multiple}"),
            got: dims.to_vec(),
        }),
    }
}

/// No autoencoder: latents are the images.
pub struct PixelSpace {
    pub channels: usize,
}

impl Autoencoder for PixelSpace {
    fn id(&self) -> String {
        format!("pixels-{}ch", self.channels)
    }

    fn image_channels(&self) -> usize {
        self.channels
    }

    fn latent_dims(&self, image_size: usize) -> (usize, usize, usize) {
        (self.channels, image_size, image_size)
    }

    fn encode(&self, images: &Tensor, _: Posterior, _: &mut Rng) -> Result<Tensor> {
        check_images(images, self.channels, 1)?;
        Ok(images.clone())
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        check_images(latents, self.channels, 1)?;
        Ok(latents.clone())
    }
}

/// The architecture of an SD-style VAE (diffusers' `AutoencoderKL` config fields) and its latent scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// `stabilityai/sd-vae-ft-ema` and `-mse` (the paper's VAE).
    pub fn stable_diffusion() -> Self {
        VaeConfig {
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    fn downsampling(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// The autoencoders RepDiff knows by name: `pixels` (`channels` 1 or 3) and the Stable Diffusion VAEs
/// `sd-vae-ft-ema` and `sd-vae-ft-mse`, read from `<weights_dir>/<name>/diffusion_pytorch_model.safetensors`.
pub fn by_name(name: &str, channels: usize, weights_dir: &Path, device: &Device) -> Result<Box<dyn Autoencoder>> {
    match name {
        "pixels" if channels == 1 || channels == 3 => Ok(Box::new(PixelSpace { channels })),
        "pixels" => Err(Error::Config(format!("pixel space has 1 or 3 channels, not {channels}"))),
        "sd-vae-ft-ema" | "sd-vae-ft-mse" => {
            let path = weights_dir.join(name).join("diffusion_pytorch_model.safetensors");
            Ok(Box::new(SdVae::load(&path, VaeConfig::stable_diffusion(), device)?))
        }
        other => Err(Error::Config(format!(
            "unknown autoencoder {other:?}: expected pixels, sd-vae-ft-ema or sd-vae-ft-mse"
        ))),
    }
}

/// The Stable Diffusion VAE.
///
/// candle-transformers' `AutoEncoderKL::encode` returns a distribution whose mean and standard deviation
/// are private, and whose `sample()` draws from candle's unseedable RNG. To get both exactly from one
/// encoder pass, the model is built with twice the latent channels from weights padded on load: the
/// padded encoder emits `[mean, logvar, (zeros)]`, the padded `quant_conv` passes the real 2L channels
/// through as the distribution's "mean" and sets its "log-variance" to -1e30, so `sample()` returns
/// `[mean, logvar]` exactly (its noise is multiplied by exp(-5e29) = 0). The decoder's extra input
/// channels have zero weights, so decoding `[z, 0]` equals decoding `z` with the original model.
pub struct SdVae {
    model: AutoEncoderKL,
    config: VaeConfig,
    fingerprint: String,
    device: Device,
}

/// Serves a weight file's tensors, zero-padding the seven that the doubled latent width makes larger.
struct PaddingBackend {
    tensors: HashMap<String, Tensor>,
    path: std::path::PathBuf,
}

const LOGVAR_OF_PASSTHROUGH: f32 = -1e30;

/// The tensors whose shape depends on the latent width; every other tensor must match the config exactly.
const PADDED: [&str; 7] = [
    "encoder.conv_out.weight",
    "encoder.conv_out.bias",
    "quant_conv.weight",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
    "decoder.conv_in.weight",
];

impl SimpleBackend for PaddingBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let stored = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: the VAE weights have no tensor {name}", self.path.display()))
        })?;
        let stored = stored.to_dtype(DType::F32)?;
        let mut tensor = if stored.dims() == shape.dims() {
            stored
        } else if PADDED.contains(&name)
            && stored.rank() == shape.rank()
            && stored.dims().iter().zip(shape.dims()).all(|(s, t)| s <= t)
        {
            let mut padded = stored;
            for (dim, (&have, &want)) in padded.dims().to_vec().iter().zip(shape.dims()).enumerate() {
                if want > have {
                    padded = padded.pad_with_zeros(dim, 0, want - have)?;
                }
            }
            padded
        } else {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor {name} has shape {:?}, the VAE config expects {:?}",
                self.path.display(),
                stored.dims(),
                shape.dims()
            )));
        };
        if name == "quant_conv.bias" {
            let real = self.tensors[name].dim(0)?;
            let tail = Tensor::full(LOGVAR_OF_PASSTHROUGH, shape.dims()[0] - real, dev)?;
            tensor = Tensor::cat(&[&tensor.narrow(0, 0, real)?, &tail], 0)?;
        }
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: the VAE weights have no tensor {name}", self.path.display()))
        })?;
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Random weights for any requested tensor (deterministic per name): an SD VAE with the cost of the real one.
struct RandomBackend {
    seed: u64,
}

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let stream = name.bytes().fold(0u64, |h, b| h.wrapping_mul(0x100_0000_01b3).wrapping_add(b as u64));
        let fan_in: usize = shape.dims().iter().skip(1).product::<usize>().max(1);
        let values = Rng::derive(self.seed, stream).normal_vec(shape.elem_count());
        let scale = (1.0 / fan_in as f32).sqrt();
        Tensor::from_vec(values.into_iter().map(|v| v * scale).collect(), shape, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("random VAE weights have no fixed shape for {name}")))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

impl SdVae {
    /// A VAE of `config`'s architecture with random weights: for benchmarks, where only the cost matters.
    pub fn random(config: VaeConfig, seed: u64, device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_backend(Box::new(RandomBackend { seed }), DType::F32, device.clone());
        let model = AutoEncoderKL::new(vb, 3, 3, doubled_config(&config))?;
        Ok(SdVae { model, config, fingerprint: format!("random{seed}"), device: device.clone() })
    }

    /// Loads diffusers-format weights (`diffusion_pytorch_model.safetensors`).
    pub fn load(path: &Path, config: VaeConfig, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Config(format!(
                "VAE weights not found at {}: see model-weights/README.md for the file and where to get it",
                path.display()
            )),
            _ => Error::io(path, e),
        })?;
        let fingerprint: String = Sha256::digest(&bytes)[..8].iter().map(|b| format!("{b:02x}")).collect();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
        for required in ["quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight"] {
            if !tensors.contains_key(required) {
                return Err(Error::checkpoint(path, format!("no tensor {required}: not an SD-style AutoencoderKL")));
            }
        }
        let backend = PaddingBackend { tensors, path: path.into() };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = AutoEncoderKL::new(vb, 3, 3, doubled_config(&config))
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        Ok(SdVae { model, config, fingerprint, device: device.clone() })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The posterior's mean and log-variance (clamped to [-30, 20] as diffusers does), unscaled.
    pub fn posterior(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        check_images(images, 3, self.config.downsampling())?;
        let images = images.to_device(&self.device)?.to_dtype(DType::F32)?;
        let both = one_at_a_time(&images, |image| Ok(self.model.encode(image)?.sample()?))?;
        let l = self.config.latent_channels;
        let mean = both.narrow(1, 0, l)?;
        let logvar = both.narrow(1, l, l)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }
}

/// candle's config for the doubled-latent-width model (see [`SdVae`]).
fn doubled_config(config: &VaeConfig) -> AutoEncoderKLConfig {
    AutoEncoderKLConfig {
        block_out_channels: config.block_out_channels.clone(),
        layers_per_block: config.layers_per_block,
        latent_channels: 2 * config.latent_channels,
        norm_num_groups: config.norm_num_groups,
        use_quant_conv: true,
        use_post_quant_conv: true,
    }
}

/// Runs `f` on each item of a batch and concatenates the results.
///
/// candle 0.11's CPU matmul folds a batch wrongly when the left operand is a transposed view and the right
/// one is broadcast over the batch (huggingface/candle#3744, fix pending in #3758). The VAE's attention
/// block feeds such a view to `Linear`, so a batch of two or more images comes out wrong (4% off on the
/// parity fixture) while each image alone is exact. Convolutions dominate the VAE's cost, so one image at
/// a time costs little; revisit when candle ships the fix.
fn one_at_a_time(batch: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let outputs = (0..batch.dim(0)?).map(|i| f(&batch.narrow(0, i, 1)?)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outputs, 0)?)
}

impl Autoencoder for SdVae {
    fn id(&self) -> String {
        format!("sd-vae-{}", self.fingerprint)
    }

    fn image_channels(&self) -> usize {
        3
    }

    fn latent_dims(&self, image_size: usize) -> (usize, usize, usize) {
        let side = image_size / self.config.downsampling();
        (self.config.latent_channels, side, side)
    }

    fn encode(&self, images: &Tensor, posterior: Posterior, rng: &mut Rng) -> Result<Tensor> {
        let (mean, logvar) = self.posterior(images)?;
        let latent = match posterior {
            Posterior::Mean => mean,
            Posterior::Sample => {
                let noise = rng.randn(mean.dims(), &self.device)?;
                (mean + (logvar * 0.5)?.exp()?.mul(&noise)?)?
            }
        };
        Ok((latent * self.config.scaling_factor)?)
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let l = self.config.latent_channels;
        let dims = latents.dims();
        if !matches!(*dims, [_, c, _, _] if c == l) {
            return Err(Error::Shape {
                what: "latents to decode".into(),
                expected: format!("[N, {l}, h, w]"),
                got: dims.to_vec(),
            });
        }
        let unscaled = (latents.to_device(&self.device)?.to_dtype(DType::F32)? / self.config.scaling_factor)?;
        let padded = Tensor::cat(&[&unscaled, &unscaled.zeros_like()?], 1)?;
        one_at_a_time(&padded, |latent| Ok(self.model.decode(latent)?))
    }
}
