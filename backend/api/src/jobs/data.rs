//! Data kinds: `import` (scans from a folder the server may read) and `encode` (a dataset to a latent file).

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use super::shared::{Invalid, MAX_SITE, SplitSpec, within};

/// `import`: scans from a folder under one of the server's import roots into a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    pub dataset: i64,
    /// A file or folder under an import root (relative to the first root, or absolute).
    pub path: String,
    /// A manifest (CSV or JSON) under an import root whose `file` column names files relative to `path`.
    #[serde(default)]
    pub labels: Option<String>,
    /// The site of files without a label row (default 0).
    #[serde(default)]
    pub site: usize,
}

impl ImportParams {
    pub fn new(dataset: i64, path: String) -> Self {
        ImportParams { dataset, path, labels: None, site: 0 }
    }
}

impl ImportParams {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.path.trim().is_empty() {
            return Err(Invalid::new("path", "is empty"));
        }
        if self.labels.as_deref().is_some_and(|l| l.trim().is_empty()) {
            return Err(Invalid::new("labels", "is empty; leave it out for none"));
        }
        within("site", self.site, 0, MAX_SITE)
    }
}

/// The autoencoders an encode job (and a latent training run) may use.
pub const AUTOENCODERS: [&str; 3] = ["pixels", "sd-vae-ft-ema", "sd-vae-ft-mse"];

fn default_autoencoder() -> String {
    "pixels".into()
}

/// The posterior's mean, or a seeded draw from it (as DiT's feature extraction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PosteriorArg {
    Mean,
    Sample,
}

/// `encode`: a dataset (or one part of its split) to a latent file in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
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
    /// Posterior mean or a seeded draw; default sample.
    #[serde(default)]
    pub posterior: Option<PosteriorArg>,
    #[serde(default)]
    pub seed: u64,
}

impl EncodeParams {
    /// `dataset` at `size` pixels through the defaults (pixel space, the brain window).
    pub fn new(dataset: i64, size: usize) -> Self {
        EncodeParams {
            dataset,
            autoencoder: default_autoencoder(),
            windows: Vec::new(),
            size,
            channels: None,
            split: None,
            posterior: None,
            seed: 0,
        }
    }
}

impl EncodeParams {
    /// Image channels: pixel space's (default 1), or the SD VAE's 3.
    pub fn image_channels(&self) -> usize {
        match self.autoencoder.as_str() {
            "pixels" => self.channels.unwrap_or(1),
            _ => 3,
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if !AUTOENCODERS.contains(&self.autoencoder.as_str()) {
            return Err(Invalid::new(
                "autoencoder",
                format!("is one of {}, got {:?}", AUTOENCODERS.join(", "), self.autoencoder),
            ));
        }
        within("size", self.size, 8, 1024)?;
        if self.autoencoder != "pixels" && !self.size.is_multiple_of(8) {
            return Err(Invalid::new("size", "is a multiple of 8 for the SD VAE"));
        }
        match (self.autoencoder.as_str(), self.channels) {
            ("pixels", Some(c)) if !matches!(c, 1 | 3) => {
                return Err(Invalid::new("channels", format!("is 1 or 3 in pixel space, got {c}")));
            }
            (vae, Some(c)) if vae != "pixels" && c != 3 => {
                return Err(Invalid::new("channels", format!("{vae} takes 3-channel images, got {c}")));
            }
            _ => {}
        }
        match self.windows.len() {
            0 | 1 => {}
            3 if self.image_channels() == 3 => {}
            n => return Err(Invalid::new("windows", format!("one window, or three for 3-channel images; got {n}"))),
        }
        if let Some(i) = self.windows.iter().position(|w| w.trim().is_empty()) {
            return Err(Invalid::new(format!("windows.{i}"), "is empty"));
        }
        self.split.as_ref().map_or(Ok(()), |s| s.validate().map_err(|e| e.within("split")))
    }
}
