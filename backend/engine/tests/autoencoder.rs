//! The Stable Diffusion VAE (through candle-transformers) against diffusers' AutoencoderKL on a small random
//! configuration (`tests/fixtures/vae/gen_vae_reference.py`), and the pixel-space autoencoder.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{assert_close, rel_err};
use repdiff_engine::autoencoder::{Autoencoder, PixelSpace, Posterior, SdVae, VaeConfig};
use repdiff_engine::rng::Rng;
use repdiff_engine::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae").join(name)
}

fn small_config() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![8, 16],
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 4,
        scaling_factor: 0.18215,
    }
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("vae_small_reference.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn sd_vae_posterior_and_decoder_match_diffusers() {
    let reference = reference();
    let vae = SdVae::load(&fixture("vae_small.safetensors"), small_config(), &Device::Cpu).unwrap();
    let (mean, logvar) = vae.posterior(&reference["images"]).unwrap();
    assert_close("posterior mean", &mean, &reference["mean"]);
    assert_close("posterior logvar", &logvar, &reference["logvar"]);
    // The trait works in scaled latents: decode(scale * mean) is diffusers' decode(mean).
    let scaled = vae.encode(&reference["images"], Posterior::Mean, &mut Rng::new(0)).unwrap();
    assert_close("scaled mean", &(scaled.clone() / 0.18215).unwrap(), &reference["mean"]);
    assert_close("decoded", &vae.decode(&scaled).unwrap(), &reference["decoded"]);
    assert_eq!(vae.latent_dims(16), (4, 8, 8));
    assert!(vae.id().starts_with("sd-vae-"));
}

#[test]
fn sd_vae_samples_the_posterior_with_the_seeded_rng() {
    let reference = reference();
    let vae = SdVae::load(&fixture("vae_small.safetensors"), small_config(), &Device::Cpu).unwrap();
    let images = &reference["images"];
    let draw = |seed| vae.encode(images, Posterior::Sample, &mut Rng::new(seed)).unwrap();
    let (a, b, c) = (draw(1), draw(1), draw(2));
    assert_eq!(rel_err(&a, &b), 0.0, "the same seed gives the same latents");
    assert!(rel_err(&a, &c) > 1e-3, "another seed gives other latents");
    // (z / scale - mean) / std is standard normal.
    let std = (&reference["logvar"] * 0.5).unwrap().exp().unwrap();
    let eps = ((a / 0.18215).unwrap() - &reference["mean"]).unwrap().div(&std).unwrap();
    let eps = eps.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let n = eps.len() as f32;
    let mean = eps.iter().sum::<f32>() / n;
    let var = eps.iter().map(|e| (e - mean).powi(2)).sum::<f32>() / n;
    assert!(mean.abs() < 0.15 && (var - 1.0).abs() < 0.2, "{} draws: mean {mean}, variance {var}", eps.len());
}

#[test]
fn vae_load_and_shape_errors_say_what_is_wrong() {
    let missing = SdVae::load(Path::new("model-weights/none.safetensors"), small_config(), &Device::Cpu);
    let error = missing.err().unwrap().to_string();
    assert!(error.contains("model-weights/README.md") && error.contains("none.safetensors"), "{error}");

    let vae = SdVae::load(&fixture("vae_small.safetensors"), small_config(), &Device::Cpu).unwrap();
    let grey = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let error = vae.posterior(&grey).unwrap_err().to_string();
    assert!(error.contains("[N, 3, H, W]"), "{error}");
    let wrong = VaeConfig { block_out_channels: vec![8, 32], ..small_config() };
    let error = SdVae::load(&fixture("vae_small.safetensors"), wrong, &Device::Cpu).err().unwrap().to_string();
    assert!(error.contains("shape"), "{error}");
}

#[test]
fn pixel_space_is_the_identity_with_shape_checks() {
    let pixels = PixelSpace { channels: 1 };
    let images = Rng::new(3).randn((2, 1, 8, 8), &Device::Cpu).unwrap();
    let latents = pixels.encode(&images, Posterior::Sample, &mut Rng::new(0)).unwrap();
    assert_eq!(rel_err(&pixels.decode(&latents).unwrap(), &images), 0.0);
    assert_eq!(pixels.latent_dims(8), (1, 8, 8));
    let rgb = Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(pixels.encode(&rgb, Posterior::Mean, &mut Rng::new(0)).is_err());
}
