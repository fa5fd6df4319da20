//! `repdiff split`: the paper's data split of a manifest, with its summary table.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use repdiff_engine::manifest::Manifest;

#[derive(Args)]
pub struct SplitArgs {
    /// A manifest CSV: file,site,hypodensity,margin_irregularity,blend_sign,fluid_level[,hematoma].
    #[arg(long)]
    manifest: PathBuf,
    /// The site whose slices form the downstream task (the paper's facility 1); all others pre-train.
    #[arg(long, default_value_t = 1)]
    downstream_site: usize,
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
    let parts = manifest.split(args.downstream_site, [train, val, test], args.seed)?;
    let out = args.out.unwrap_or_else(|| args.manifest.with_file_name("split.csv"));
    manifest.write_split_csv(&parts, &out)?;
    println!(
        "Split of {} slices: site {} is downstream ({train}/{val}/{test}, stratified by label, seed {}), the rest pre-train\n",
        manifest.records.len(),
        args.downstream_site,
        args.seed
    );
    print!("{}", manifest.summary(&parts));
    println!("\nWrote {}", out.display());
    Ok(())
}
