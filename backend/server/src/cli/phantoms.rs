//! `repdiff phantoms`: synthetic brain-CT slices with hematoma markers, as windowed PNGs ready for
//! `repdiff train`, or as CT DICOM files (with made-up patient data) and a label file for `repdiff import`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use repdiff_engine::imaging::dicom::{self, CtHeader};
use repdiff_engine::imaging::{Slice, Unit, Window};
use repdiff_engine::manifest::{Manifest, SliceRecord};
use repdiff_engine::phantom::{Markers, NUM_SITES, PngSet, generate};
use repdiff_engine::rng::Rng;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhantomFormat {
    /// Windowed 8-bit PNGs in class folders `0_no_hematoma/`, `1_hematoma/`, and `manifest.csv`.
    Png,
    /// CT DICOM files in Hounsfield units, a few slices per synthetic patient series, with identifying
    /// (made-up) patient data, and `labels.csv` for `repdiff import --labels`.
    Dicom,
}

#[derive(Args)]
pub struct PhantomArgs {
    /// Output folder.
    #[arg(long, default_value = "runs/phantoms")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "png")]
    format: PhantomFormat,
    /// Number of slices, each from a random site.
    #[arg(long, short = 'n', default_value_t = 200)]
    num: usize,
    /// This many more slices, all from site 1 (the paper's downstream facility): enough for the
    /// train/validation/test parts of its split.
    #[arg(long, default_value_t = 0)]
    downstream: usize,
    /// Side length in pixels (the paper's scans are 512).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Probability of each of the four markers (independent).
    #[arg(long, default_value_t = repdiff_engine::phantom::MARKER_PROB)]
    marker_prob: f64,
    /// Display window of PNG output: brain, subdural, soft-tissue, bone, or LEVEL/WIDTH.
    #[arg(long, default_value = "brain")]
    window: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// PNG: slices as patients of this many neighbouring, nearly identical slices (one site and label
    /// each; the manifest names the patient). 1: independent slices. DICOM series are always patients.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    slices_per_patient: u64,
}

/// Slices per synthetic series in DICOM output.
const SLICES_PER_SERIES: usize = 4;

pub fn run(args: PhantomArgs) -> Result<()> {
    if args.num + args.downstream == 0 || args.size < 16 || args.size > 4096 {
        bail!("need at least one slice of 16 to 4096 pixels a side");
    }
    if !(0.0..=1.0).contains(&args.marker_prob) {
        bail!("--marker-prob must be in [0, 1]");
    }
    let window = Window::parse(&args.window)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let total = args.num + args.downstream;
    let manifest = match args.format {
        PhantomFormat::Png => {
            let set = PngSet {
                num: args.num,
                downstream: args.downstream,
                size: args.size,
                marker_prob: args.marker_prob,
                seed: args.seed,
                slices_per_patient: args.slices_per_patient as usize,
            };
            set.write(&args.out, &window)?
        }
        PhantomFormat::Dicom => write_dicom(&args)?,
    };
    let positives = manifest.records.iter().filter(|r| r.hematoma()).count();
    let manifest_path = args.out.join(if args.format == PhantomFormat::Png { "manifest.csv" } else { "labels.csv" });
    if args.format == PhantomFormat::Dicom {
        manifest.write_csv(&manifest_path)?;
    }
    println!("Wrote {total} phantom slices ({positives} with hematoma markers) to {}", args.out.display());
    match args.format {
        PhantomFormat::Png => {
            println!("  manifest  {}", manifest_path.display());
            println!("  train on  repdiff train --images {}", args.out.display());
        }
        PhantomFormat::Dicom => {
            println!("  labels    {}", manifest_path.display());
            println!(
                "  import    repdiff import {} --labels {} --out runs/dataset",
                args.out.display(),
                manifest_path.display()
            );
        }
    }
    Ok(())
}

/// CT DICOM phantoms, a few slices per synthetic patient series (each series from one site), into OUT;
/// returns their labels (written by the caller as labels.csv).
fn write_dicom(args: &PhantomArgs) -> Result<Manifest> {
    let mut rng = Rng::new(args.seed);
    let mut manifest = Manifest::default();
    let mut series_site = 1;
    for i in 0..args.num + args.downstream {
        // Downstream slices start series of their own.
        let series = if i < args.num {
            i / SLICES_PER_SERIES
        } else {
            args.num.div_ceil(SLICES_PER_SERIES) + (i - args.num) / SLICES_PER_SERIES
        };
        let site = if i >= args.num {
            1
        } else if i % SLICES_PER_SERIES == 0 {
            1 + rng.below(NUM_SITES)
        } else {
            series_site
        };
        series_site = site;
        let markers = Markers::random(&mut rng, args.marker_prob);
        let phantom = generate(args.size, site, markers, args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let file = format!("phantom_{i:05}.dcm");
        let slice = Slice {
            rows: args.size,
            columns: args.size,
            values: phantom.hu,
            unit: Unit::Hounsfield,
            spacing_mm: Some((250.0 / args.size as f32, 250.0 / args.size as f32)),
        };
        let uid = |kind: u64, n: u64| format!("2.25.{}", (args.seed << 40) ^ (kind << 32) ^ n);
        let header = CtHeader {
            patient_name: &format!("PHANTOM^SITE{site:02}^{series:04}"),
            patient_id: &format!("PH-{:04}-{series:05}", args.seed),
            institution: &format!("Phantom site {site}"),
            study_uid: &uid(1, series as u64),
            series_uid: &uid(2, series as u64),
            instance_uid: &uid(3, i as u64),
            instance_number: (i % SLICES_PER_SERIES + 1) as i64,
            // 5 mm slices, inferior first.
            position_mm: 5.0 * (i % SLICES_PER_SERIES) as f64,
            study_date: "20260101",
            description: "synthetic head CT (RepDiff phantom)",
        };
        let path = args.out.join(&file);
        dicom::write_ct(&path, &slice, &header)?;
        manifest.records.push(SliceRecord { file, site, markers, ..SliceRecord::default() });
    }
    Ok(manifest)
}
