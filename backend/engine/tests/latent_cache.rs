//! The latent cache: encode a dataset once, reuse it, and encode anew when anything it depends on changes.

use std::path::{Path, PathBuf};

use repdiff_engine::autoencoder::{PixelSpace, Posterior, SdVae, VaeConfig};
use repdiff_engine::data::Dataset;
use repdiff_engine::imaging::{self, Channels, Slice, Unit, Window};
use repdiff_engine::latent_cache::{CacheOutcome, EncodeSpec, encode_dataset};
use repdiff_engine::manifest::{Manifest, Part};
use repdiff_engine::phantom::{Markers, generate};
use repdiff_engine::{Device, Tensor};

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("repdiff-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("slices")).unwrap();
    dir
}

/// A dataset folder of `n` phantom slices (16-bit HU PNGs) and its manifest; every third has markers.
fn phantom_dataset(dir: &Path, n: usize) -> PathBuf {
    let mut rows = String::from("file,site,hypodensity,margin_irregularity,blend_sign,fluid_level\n");
    for i in 0..n {
        let markers = Markers { blend_sign: i % 3 == 0, ..Markers::default() };
        let site = 1 + i % 2;
        let phantom = generate(32, site, markers, i as u64);
        let slice = Slice { rows: 32, columns: 32, values: phantom.hu, unit: Unit::Hounsfield, spacing_mm: None };
        imaging::write_hu_png(&slice, &dir.join(format!("slices/{i}.png"))).unwrap();
        rows.push_str(&format!("slices/{i}.png,{site},0,0,{},0\n", u8::from(markers.blend_sign)));
    }
    let manifest = dir.join("manifest.csv");
    std::fs::write(&manifest, rows).unwrap();
    manifest
}

fn spec(window: Window, size: usize) -> EncodeSpec {
    EncodeSpec {
        channels: Channels::Window { window, copies: 1 },
        size,
        posterior: Posterior::Mean,
        seed: 0,
        part: None,
        batch_size: 4,
    }
}

fn encode(manifest: &Path, spec: &EncodeSpec, out: &Path) -> CacheOutcome {
    encode_dataset(manifest, spec, &PixelSpace { channels: 1 }, out, &Device::Cpu, &Default::default(), &mut |_, _| {})
        .unwrap()
}

#[test]
fn a_dataset_is_encoded_once_and_again_when_its_inputs_change() {
    let dir = tempdir("reuse");
    let manifest = phantom_dataset(&dir, 6);
    let out = dir.join("latents.safetensors");
    let brain = spec(Window::BRAIN, 16);
    assert_eq!(encode(&manifest, &brain, &out), CacheOutcome::Encoded { slices: 6 });
    let first = std::fs::read(&out).unwrap();
    assert_eq!(encode(&manifest, &brain, &out), CacheOutcome::Reused { slices: 6 });
    assert_eq!(std::fs::read(&out).unwrap(), first, "a reused cache is left as it was");

    // The file is a training set: latents in [-1, 1] through the brain window, labels from the markers.
    let data = Dataset::from_latent_file(&out, &Device::Cpu).unwrap();
    assert_eq!(data.sample_dims(), (1, 16, 16));
    assert_eq!(data.labels.as_deref(), Some(&[1, 0, 0, 1, 0, 0][..]));
    let values = data.samples.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(values.iter().any(|&v| v > -0.9) && values.iter().any(|&v| v == -1.0), "brain tissue and air");

    // Another window, another size, an edited scan or label: encoded anew.
    assert!(matches!(encode(&manifest, &spec(Window::BONE, 16), &out), CacheOutcome::Encoded { .. }));
    assert!(matches!(encode(&manifest, &spec(Window::BONE, 8), &out), CacheOutcome::Encoded { .. }));
    let bone8 = spec(Window::BONE, 8);
    assert!(matches!(encode(&manifest, &bone8, &out), CacheOutcome::Reused { .. }));
    let slice = Slice { rows: 32, columns: 32, values: vec![40.0; 1024], unit: Unit::Hounsfield, spacing_mm: None };
    imaging::write_hu_png(&slice, &dir.join("slices/2.png")).unwrap();
    assert!(matches!(encode(&manifest, &bone8, &out), CacheOutcome::Encoded { .. }));
    let text = std::fs::read_to_string(&manifest).unwrap().replace("slices/1.png,2,0,0,0,0", "slices/1.png,2,1,0,0,0");
    std::fs::write(&manifest, text).unwrap();
    assert!(matches!(encode(&manifest, &bone8, &out), CacheOutcome::Encoded { .. }));
    let data = Dataset::from_latent_file(&out, &Device::Cpu).unwrap();
    assert_eq!(data.labels.as_deref(), Some(&[1, 1, 0, 1, 0, 0][..]));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_split_part_encodes_alone_and_the_sd_vae_encodes_three_channel_windows() {
    let dir = tempdir("split");
    let manifest_path = phantom_dataset(&dir, 8);
    let manifest = Manifest::read_csv(&manifest_path).unwrap();
    let parts = manifest.split(repdiff_engine::manifest::SplitUnit::Slice, Some(1), [0.5, 0.0, 0.5], 3).unwrap();
    let split = dir.join("split.csv");
    manifest.write_split_csv(&parts, &split).unwrap();
    let pretrain = parts.iter().filter(|p| **p == Part::Pretrain).count();
    let out = dir.join("pretrain.safetensors");
    let only_pretrain = EncodeSpec { part: Some(Part::Pretrain), ..spec(Window::BRAIN, 16) };
    assert_eq!(encode(&split, &only_pretrain, &out), CacheOutcome::Encoded { slices: pretrain });
    let error = encode_dataset(
        &manifest_path,
        &only_pretrain,
        &PixelSpace { channels: 1 },
        &out,
        &Device::Cpu,
        &Default::default(),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("no part column"), "{error}");

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae/vae_small.safetensors");
    let config = VaeConfig {
        block_out_channels: vec![8, 16],
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 4,
        scaling_factor: 0.18215,
    };
    let vae = SdVae::load(&fixture, config, &Device::Cpu).unwrap();
    let grey = spec(Window::BRAIN, 16);
    let error = encode_dataset(&manifest_path, &grey, &vae, &out, &Device::Cpu, &Default::default(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(error.contains("3-channel images"), "{error}");
    let rgb = EncodeSpec {
        channels: Channels::Window { window: Window::BRAIN, copies: 3 },
        posterior: Posterior::Sample,
        ..grey
    };
    let mut calls = Vec::new();
    let outcome =
        encode_dataset(&manifest_path, &rgb, &vae, &out, &Device::Cpu, &Default::default(), &mut |done, total| {
            calls.push((done, total))
        })
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Encoded { slices: 8 });
    assert_eq!(calls, vec![(4, 8), (8, 8)]);
    let latents: Tensor = Dataset::from_latent_file(&out, &Device::Cpu).unwrap().samples;
    assert_eq!(latents.dims(), [8, 4, 8, 8]);

    // A cancelled encode stops before its next batch and writes nothing.
    let cancel = repdiff_engine::train::CancelToken::default();
    cancel.cancel();
    let never = dir.join("never.safetensors");
    let error = encode_dataset(&manifest_path, &rgb, &vae, &never, &Device::Cpu, &cancel, &mut |_, _| {}).unwrap_err();
    assert!(matches!(error, repdiff_engine::Error::Cancelled { step: 0 }), "{error}");
    assert!(!never.exists());
    std::fs::remove_dir_all(&dir).ok();
}
