//! `encode`: a dataset (or one part of the paper's split of it) through an autoencoder into a latent file,
//! published as the job's `latents.safetensors` for `pretrain` jobs to train on (`{"latents": {"key":
//! ...}}`). The SD VAE needs its weights in the workers' model-weights folder.

use repdiff_api::jobs::{EncodeParams, Invalid, PosteriorArg};
use repdiff_engine::autoencoder::{self, Posterior};
use repdiff_engine::device::best_device;
use repdiff_engine::imaging::{Channels, Window};
use repdiff_engine::latent_cache::EncodeSpec;

use super::inputs::encode_scans;
use crate::worker::{Input, JobContext, JobError, Task};

/// The channels of the encoded images (one window replicated, or three stacked) and their count.
fn plan(p: &EncodeParams) -> Result<(Channels, usize), Invalid> {
    let copies = p.image_channels();
    let parse = |i: usize, w: &str| Window::parse(w).map_err(|e| Invalid::new(format!("windows.{i}"), e.to_string()));
    let channels = match p.windows.as_slice() {
        [] => Channels::Window { window: Window::BRAIN, copies },
        [one] => Channels::Window { window: parse(0, one)?, copies },
        [a, b, c] => Channels::Stacked([parse(0, a)?, parse(1, b)?, parse(2, c)?]),
        // The spec's validation allows no other count.
        _ => return Err(Invalid::new("windows", "one window, or three for 3-channel images")),
    };
    Ok((channels, copies))
}

pub struct Encode {
    pub weights_dir: std::path::PathBuf,
}

impl Task for Encode {
    type Spec = EncodeParams;

    fn check(&self, p: &EncodeParams) -> Result<(), Invalid> {
        plan(p).map(|_| ())
    }

    fn reads(&self, p: &EncodeParams) -> Vec<Input> {
        vec![Input::Dataset(p.dataset)]
    }

    fn run(&self, p: EncodeParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let (channels, copies) = plan(&p).map_err(|e| JobError::Permanent(e.to_string()))?;
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
            part: p.split.as_ref().map(|s| super::inputs::part(s.part)),
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
