//! `repdiff phantoms`: a folder of synthetic brain-CT slices with hematoma markers, ready for `repdiff train`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_engine::imaging::Window;
use repdiff_engine::phantom::{Markers, NUM_SITES, generate};
use repdiff_engine::rng::Rng;

#[derive(Args)]
pub struct PhantomArgs {
    /// Output folder: `0_no_hematoma/` and `1_hematoma/` PNGs (class folders for `repdiff train --images`)
    /// and `manifest.csv` with each slice's site and four markers.
    #[arg(long, default_value = "runs/phantoms")]
    out: PathBuf,
    /// Number of slices.
    #[arg(long, short = 'n', default_value_t = 200)]
    num: usize,
    /// Side length in pixels (the paper's scans are 512).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Probability of each of the four markers (independent).
    #[arg(long, default_value_t = 0.15)]
    marker_prob: f64,
    /// Display window: brain, subdural, soft-tissue, bone, or LEVEL/WIDTH.
    #[arg(long, default_value = "brain")]
    window: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: PhantomArgs) -> Result<()> {
    if args.num == 0 || args.size < 16 {
        bail!("need at least one slice of at least 16x16 pixels");
    }
    if !(0.0..=1.0).contains(&args.marker_prob) {
        bail!("--marker-prob must be in [0, 1]");
    }
    let window = Window::parse(&args.window)?;
    let class_dirs = [args.out.join("0_no_hematoma"), args.out.join("1_hematoma")];
    for dir in &class_dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let manifest_path = args.out.join("manifest.csv");
    let mut manifest =
        std::fs::File::create(&manifest_path).with_context(|| format!("creating {}", manifest_path.display()))?;
    writeln!(manifest, "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,hematoma")?;
    let mut rng = Rng::new(args.seed);
    let mut positives = 0;
    for i in 0..args.num {
        let site = 1 + rng.below(NUM_SITES);
        let markers = Markers::random(&mut rng, args.marker_prob);
        let phantom = generate(args.size, site, markers, args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let label = usize::from(markers.any());
        positives += label;
        let name = format!("slice_{i:05}_site{site:02}.png");
        let path = class_dirs[label].join(&name);
        window.to_gray8(&phantom.hu, args.size).save(&path).with_context(|| format!("writing {}", path.display()))?;
        let flag = |b: bool| u8::from(b);
        writeln!(
            manifest,
            "{}/{name},{site},{},{},{},{},{label}",
            class_dirs[label].file_name().unwrap_or_default().to_string_lossy(),
            flag(markers.hypodensity),
            flag(markers.margin_irregularity),
            flag(markers.blend_sign),
            flag(markers.fluid_level)
        )?;
    }
    println!("Wrote {} phantom slices ({positives} with hematoma markers) to {}", args.num, args.out.display());
    println!("  manifest  {}", manifest_path.display());
    println!("  train on  repdiff train --images {}", args.out.display());
    Ok(())
}
