//! `repdiff bench --imaging`: the data pipeline's throughput. DICOM slices read (to Hounsfield units),
//! imported (read, de-identified, stored, written as 16-bit PNG) and encoded (pixel space; SD VAE at 256),
//! on synthetic 512x512 CT phantoms. Prints a Markdown table.

use std::time::Instant;

use anyhow::{Context, Result};
use repdiff_engine::autoencoder::{Autoencoder, PixelSpace, Posterior, SdVae, VaeConfig};
use repdiff_engine::dataset::{Labels, import};
use repdiff_engine::device::best_device;
use repdiff_engine::imaging::deid::DeidKey;
use repdiff_engine::imaging::dicom::{self, CtHeader};
use repdiff_engine::imaging::{Channels, Slice, Unit, Window, to_model_input};
use repdiff_engine::latent_cache::{EncodeSpec, encode_dataset};
use repdiff_engine::manifest::{Manifest, SliceRecord};
use repdiff_engine::phantom::{Markers, generate};

pub fn run(slices: usize, vae_images: usize) -> Result<()> {
    let (device, device_note) = best_device();
    let dir = std::env::temp_dir().join(format!("repdiff-bench-imaging-{}", std::process::id()));
    let scans = dir.join("scans");
    std::fs::create_dir_all(&scans).with_context(|| format!("creating {}", scans.display()))?;
    let mut labels = Manifest::default();
    for i in 0..slices {
        let phantom = generate(512, 1 + i % 12, Markers::default(), i as u64);
        let slice =
            Slice { rows: 512, columns: 512, values: phantom.hu, unit: Unit::Hounsfield, spacing_mm: Some((0.5, 0.5)) };
        let header = CtHeader {
            patient_name: "BENCH^PATIENT",
            patient_id: "BENCH-1",
            institution: "Bench site",
            study_uid: "2.25.11",
            series_uid: "2.25.12",
            instance_uid: &format!("2.25.13{i}"),
            instance_number: i as i64 + 1,
            position_mm: 5.0 * i as f64,
            study_date: "20260101",
            description: "benchmark",
        };
        let file = format!("{i:05}.dcm");
        dicom::write_ct(&scans.join(&file), &slice, &header)?;
        labels.records.push(SliceRecord { file, site: 1 + i % 12, ..SliceRecord::default() });
    }
    println!("Device: {device_note}; {slices} synthetic 512x512 CT slices (explicit VR little endian)\n");
    println!("| stage | per second | seconds |");
    println!("|---|---|---|");
    let row = |stage: &str, count: usize, seconds: f64| {
        let rate = count as f64 / seconds.max(1e-9);
        let digits = if rate < 10.0 { 2 } else { 1 };
        println!("| {stage} | {rate:.digits$} | {seconds:.2} |");
    };

    let start = Instant::now();
    for i in 0..slices {
        dicom::read(&scans.join(format!("{i:05}.dcm")))?;
    }
    row("DICOM read to HU (slices)", slices, start.elapsed().as_secs_f64());

    let start = Instant::now();
    let dataset = dir.join("dataset");
    let report =
        import(std::slice::from_ref(&scans), &Labels::from_manifest(labels), &DeidKey::from_bytes([1; 32]), &dataset)?;
    row("import: read, de-identify, store (slices)", report.slices, start.elapsed().as_secs_f64());

    let manifest = dataset.join("manifest.csv");
    for size in [32, 256] {
        let spec = EncodeSpec {
            channels: Channels::Window { window: Window::BRAIN, copies: 1 },
            size,
            posterior: Posterior::Mean,
            seed: 0,
            part: None,
            batch_size: 64,
        };
        let out = dataset.join(format!("pixels{size}.safetensors"));
        let start = Instant::now();
        encode_dataset(
            &manifest,
            &spec,
            &PixelSpace { channels: 1 },
            &out,
            &device,
            &Default::default(),
            &mut |_, _| {},
        )?;
        row(&format!("encode, pixel space {size}x{size} (slices)"), slices, start.elapsed().as_secs_f64());
    }

    if vae_images > 0 {
        // Random weights of the SD VAE's architecture: the same cost as the real weights.
        let vae = SdVae::random(VaeConfig::stable_diffusion(), 0, &device)?;
        let slice =
            repdiff_engine::imaging::read_slices(&dataset.join(&Manifest::read_csv(&manifest)?.records[0].file))?;
        let rgb = Channels::Window { window: Window::BRAIN, copies: 3 };
        let one = to_model_input(&slice[0], &rgb, 256)?;
        let images = repdiff_engine::Tensor::from_vec(one.repeat(vae_images), (vae_images, 3, 256, 256), &device)?;
        let mut rng = repdiff_engine::rng::Rng::new(0);
        vae.encode(&images.narrow(0, 0, 1)?, Posterior::Sample, &mut rng)?; // warm-up
        let start = Instant::now();
        let latents = vae.encode(&images, Posterior::Sample, &mut rng)?;
        row("encode, SD VAE 256x256 -> 4x32x32 (images)", vae_images, start.elapsed().as_secs_f64());
        let start = Instant::now();
        vae.decode(&latents)?;
        row("decode, SD VAE 4x32x32 -> 256x256 (images)", vae_images, start.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
