//! `encode`: a dataset (or one part of the paper's split of it) through an autoencoder into a latent file,
//! published as the job's `latents.safetensors` for `pretrain` jobs to train on (`{"latents": {"key":
//! ...}}`). The SD VAE needs its weights in the workers' model-weights folder.

use repdiff_engine::autoencoder::{self, Autoencoder, Posterior};
use repdiff_engine::device::best_device;
use repdiff_engine::imaging::{Channels, Window};
use repdiff_engine::latent_cache::{EncodeSpec, encode_dataset};
use repdiff_engine::manifest::{Manifest, Part, SliceRecord};
use repdiff_engine::phantom::Markers;
use serde::{Deserialize, Serialize};

use crate::worker::{Handler, Input, JobContext, JobError};

/// The paper's split: one site downstream (train/validation/test 8:1:1, stratified by label), the other
/// sites pre-training.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub downstream_site: usize,
    pub part: Part,
    #[serde(default)]
    pub seed: u64,
}

fn default_autoencoder() -> String {
    "pixels".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosteriorArg {
    Mean,
    Sample,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeParams {
    pub dataset: i64,
    /// `pixels` (windowed images), `sd-vae-ft-ema` or `sd-vae-ft-mse`.
    #[serde(default = "default_autoencoder")]
    pub autoencoder: String,
    /// One CT window (brain, subdural, soft-tissue, bone, LEVEL/WIDTH) replicated to the channels, or three
    /// stacked as RGB.
    #[serde(default)]
    pub windows: Vec<String>,
    /// Image side before encoding (256 for the SD VAE's 32x32 latents; the model size in pixel space).
    pub size: usize,
    /// Image channels in pixel space (1 or 3; the SD VAE always takes 3).
    #[serde(default)]
    pub channels: Option<usize>,
    #[serde(default)]
    pub split: Option<SplitSpec>,
    /// Posterior mean or a seeded draw (as DiT's feature extraction); default sample.
    #[serde(default)]
    pub posterior: Option<PosteriorArg>,
    #[serde(default)]
    pub seed: u64,
}

impl EncodeParams {
    fn plan(&self) -> Result<(Channels, usize), String> {
        let copies = if self.autoencoder == "pixels" { self.channels.unwrap_or(1) } else { 3 };
        if self.autoencoder == "pixels" && !matches!(copies, 1 | 3) {
            return Err("pixel space has 1 or 3 channels".into());
        }
        if self.autoencoder != "pixels" && self.channels.is_some_and(|c| c != 3) {
            return Err(format!("{} takes 3-channel images", self.autoencoder));
        }
        let parse = |w: &str| Window::parse(w).map_err(|e| e.to_string());
        let channels = match self.windows.as_slice() {
            [] => Channels::Window { window: Window::BRAIN, copies },
            [one] => Channels::Window { window: parse(one)?, copies },
            [a, b, c] if copies == 3 => Channels::Stacked([parse(a)?, parse(b)?, parse(c)?]),
            _ => return Err("windows: one window, or three for 3-channel images".into()),
        };
        if !(8..=1024).contains(&self.size) {
            return Err("size is 8 to 1024".into());
        }
        Ok((channels, copies))
    }
}

pub struct Encode {
    pub weights_dir: std::path::PathBuf,
}

impl Handler for Encode {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: EncodeParams = super::parse("encode", params)?;
        if !matches!(p.autoencoder.as_str(), "pixels" | "sd-vae-ft-ema" | "sd-vae-ft-mse") {
            return Err(format!("unknown autoencoder {:?}: pixels, sd-vae-ft-ema or sd-vae-ft-mse", p.autoencoder));
        }
        super::within("size", p.size, 8, 2048)?;
        if let Some(channels) = p.channels {
            super::within("channels", channels, 1, 3)?;
        }
        if p.autoencoder != "pixels" && !p.size.is_multiple_of(8) {
            return Err("the SD VAE needs a size that is a multiple of 8".into());
        }
        p.plan().map(|_| ())
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        serde_json::from_value::<EncodeParams>(params.clone())
            .map(|p| vec![Input::Dataset(p.dataset)])
            .unwrap_or_default()
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: EncodeParams = ctx.params()?;
        let (channels, copies) = p.plan().map_err(JobError::Permanent)?;
        let (device, _) = best_device();
        let encoder = autoencoder::by_name(&p.autoencoder, copies, &self.weights_dir, &device)?;
        let posterior = match p.posterior {
            Some(PosteriorArg::Mean) => Posterior::Mean,
            _ => Posterior::Sample,
        };
        let spec = EncodeSpec {
            channels,
            size: p.size,
            posterior,
            seed: p.seed,
            part: p.split.as_ref().map(|s| s.part),
            batch_size: 8,
        };
        let local = encode_scans(ctx, p.dataset, p.split.as_ref(), &spec, encoder.as_ref(), &device)?;
        let data = repdiff_engine::data::Dataset::from_latent_file(&local, &repdiff_engine::Device::Cpu)?;
        let (c, h, w) = data.sample_dims();
        let meta = serde_json::json!({
            "dataset": p.dataset, "autoencoder": p.autoencoder, "slices": data.len(), "shape": [c, h, w],
            "part": p.split.as_ref().map(|s| s.part.name()),
        });
        let key = ctx.publish(&local, "latents.safetensors", "latents", "application/octet-stream", meta.clone())?;
        Ok(serde_json::json!({ "latents": key, "slices": data.len(), "shape": [c, h, w] }))
    }
}

/// Downloads a dataset's slices ([`fetch_scans`]) and encodes them with `spec` (the part of the split it
/// names). Returns the local latent file.
pub fn encode_scans(
    ctx: &mut JobContext,
    dataset: i64,
    split: Option<&SplitSpec>,
    spec: &EncodeSpec,
    encoder: &dyn Autoencoder,
    device: &repdiff_engine::Device,
) -> Result<std::path::PathBuf, JobError> {
    let manifest_path = fetch_scans(ctx, dataset, split)?;
    let out = ctx.scratch.join("latents.safetensors");
    let cancel = ctx.cancel.clone();
    encode_dataset(&manifest_path, spec, encoder, &out, device, &cancel, &mut |done, total| {
        ctx.progress(done as u64, total as u64, "encoding scans");
    })?;
    Ok(out)
}

/// Downloads a dataset's slices into the scratch folder with their manifest (`manifest.csv`, or with a
/// split `split.csv` and its `part` column); returns the manifest's path.
pub fn fetch_scans(
    ctx: &mut JobContext,
    dataset: i64,
    split: Option<&SplitSpec>,
) -> Result<std::path::PathBuf, JobError> {
    let rows = ctx.block_on(
        sqlx::query!(
            r#"SELECT id, key, site, hypodensity, margin_irregularity, blend_sign, fluid_level
               FROM scans WHERE dataset_id = $1 ORDER BY id"#,
            dataset
        )
        .fetch_all(ctx.pool()),
    )?;
    if rows.is_empty() {
        return Err(JobError::Permanent(format!("dataset {dataset} has no scans")));
    }
    let dir = ctx.scratch.join("dataset");
    let mut manifest = Manifest::default();
    for (i, row) in rows.iter().enumerate() {
        let file = format!("slices/{}.png", row.id);
        ctx.fetch(&row.key, &format!("dataset/{file}"))?;
        manifest.records.push(SliceRecord {
            file,
            site: row.site.max(0) as usize,
            markers: Markers {
                hypodensity: row.hypodensity,
                margin_irregularity: row.margin_irregularity,
                blend_sign: row.blend_sign,
                fluid_level: row.fluid_level,
            },
        });
        ctx.progress(i as u64 + 1, rows.len() as u64, "fetching scans");
    }
    let manifest_path = match split {
        None => {
            let path = dir.join("manifest.csv");
            manifest.write_csv(&path)?;
            path
        }
        Some(split) => {
            let parts = manifest.split(split.downstream_site, [0.8, 0.1, 0.1], split.seed)?;
            let path = dir.join("split.csv");
            manifest.write_split_csv(&parts, &path)?;
            ctx.log("info", &manifest.summary(&parts));
            path
        }
    };
    Ok(manifest_path)
}
