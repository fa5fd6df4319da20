//! `repdiff split`: the paper's data split of a manifest (by patient unless asked per slice), with its
//! summary table.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use repdiff_engine::manifest::Manifest;

#[derive(Args)]
pub struct SplitArgs {
    /// A manifest CSV: file,site,hypodensity,margin_irregularity,blend_sign,fluid_level[,hematoma]
    /// [,patient,study,series,instance,position].
    #[arg(long)]
    manifest: PathBuf,
    /// What the split keeps together: `patient` (the default: no patient in two parts; slices that name
    /// no patient are their own) or `slice` (the paper's).
    #[arg(long, default_value = "patient", value_parser = super::split_unit)]
    unit: repdiff_api::jobs::SplitUnit,
    /// The site whose slices form the downstream task (the paper's facility 1); all others pre-train.
    #[arg(long, default_value_t = 1)]
    downstream_site: usize,
    /// A single-site design: every slice is split into train, validation and test (none pre-trains; a
    /// pre-training reads the training part).
    #[arg(long, conflicts_with = "downstream_site")]
    single_site: bool,
    /// Train, validation and test fractions of the downstream site.
    #[arg(long, value_delimiter = ',', default_value = "0.8,0.1,0.1")]
    fractions: Vec<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output CSV (the manifest plus hematoma and part columns); default: split.csv beside the manifest.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: SplitArgs) -> Result<()> {
    let [train, val, test] = args.fractions[..] else {
        bail!("--fractions takes three numbers (train,validation,test), got {:?}", args.fractions);
    };
    let manifest = Manifest::read(&args.manifest)?;
    let unit = repdiff_server::jobs::split_unit(args.unit);
    let site = (!args.single_site).then_some(args.downstream_site);
    let parts = manifest.split(unit, site, [train, val, test], args.seed)?;
    let out = args.out.unwrap_or_else(|| args.manifest.with_file_name("split.csv"));
    manifest.write_split_csv(&parts, &out)?;
    let design = match site {
        Some(site) => format!("site {site} is downstream"),
        None => "every site".to_string(),
    };
    let rest = if site.is_some() { ", the rest pre-train" } else { "" };
    println!(
        "Split of {} slices: {design} ({train}/{val}/{test} by {}, stratified by label, seed {}){rest}\n",
        manifest.records.len(),
        unit.name(),
        args.seed
    );
    print!("{}", manifest.summary(&parts, unit));
    println!("\nWrote {}", out.display());
    Ok(())
}
