//! `repdiff import`: scans (DICOM, NIfTI, PNG/JPEG) into a dataset folder, de-identified, with a manifest.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_engine::dataset::{Labels, import};
use repdiff_engine::imaging::deid::DeidKey;
use repdiff_engine::manifest::Manifest;

#[derive(Args)]
pub struct ImportArgs {
    /// Scan files or folders (walked recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Labels in the manifest's CSV (or JSON) format (file,site,hypodensity,margin_irregularity,blend_sign,fluid_level),
    /// `file` naming inputs relative to the folder given or by file name; `file#k` labels slice k alone.
    #[arg(long)]
    labels: PathBuf,
    /// The dataset folder (created, or extended if it exists).
    #[arg(long, default_value = "runs/dataset")]
    out: PathBuf,
    /// The de-identification key (64 hex digits), created on first use. Keep it outside shared folders:
    /// with it, pseudonyms stay consistent across imports; without it, they cannot be linked back.
    #[arg(long)]
    deid_key: Option<PathBuf>,
}

fn default_key_path() -> Result<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")));
    match config {
        Some(dir) => Ok(dir.join("repdiff").join("deid.key")),
        None => bail!("no HOME or XDG_CONFIG_HOME: pass --deid-key PATH"),
    }
}

pub fn run(args: ImportArgs) -> Result<()> {
    let labels = Manifest::read(&args.labels)?;
    let key_path = match args.deid_key {
        Some(path) => path,
        None => default_key_path()?,
    };
    let key =
        DeidKey::load_or_create(&key_path).with_context(|| format!("de-identification key {}", key_path.display()))?;
    let report = import(&args.inputs, &Labels::from_manifest(labels), &key, &args.out)?;
    println!(
        "Imported {} slices from {} files into {} ({} DICOM files de-identified: {} attributes removed, {} emptied, {} replaced by pseudonyms)",
        report.slices,
        report.files,
        args.out.display(),
        report.dicom_files,
        report.deid.removed,
        report.deid.emptied,
        report.deid.replaced
    );
    println!("  manifest  {}", args.out.join("manifest.csv").display());
    println!("  key       {}", key_path.display());
    if !report.refused.is_empty() {
        println!("Left out {}:", report.refused.len());
        for (path, reason) in &report.refused {
            println!("  {}: {reason}", path.display());
        }
    }
    if report.slices == 0 {
        bail!("nothing was imported");
    }
    Ok(())
}
