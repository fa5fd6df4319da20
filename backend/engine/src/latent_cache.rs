//! The latent cache: a dataset encoded once per autoencoder and preprocessing, reused by every run that
//! trains on it (encoding is a large part of a latent-diffusion step otherwise). A cache file is a
//! safetensors file with `latents` `[N, C, h, w]`, `labels` (hematoma 0/1) and `sites`, readable by
//! [`crate::data::Dataset::from_latent_file`]; its metadata holds a key, the SHA-256 of everything the
//! latents depend on: the autoencoder's id (which fingerprints its weights), the preprocessing, the
//! manifest rows and the bytes of every slice file. Encoding again with the same key reuses the file;
//! any change to a scan, a label, the window, the size or the weights encodes anew.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::autoencoder::{Autoencoder, Posterior};
use crate::imaging::Channels;
use crate::manifest::{Manifest, Part};
use crate::metrics::images::{ImageSource, SliceImages};
use crate::rng::Rng;
use crate::train::CancelToken;
use crate::{Error, Result};

pub const FORMAT: &str = "repdiff-latents-v1";

/// How slices become latents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncodeSpec {
    pub channels: Channels,
    /// Image side after resizing (the latent side is this over the autoencoder's downsampling).
    pub size: usize,
    pub posterior: Posterior,
    pub seed: u64,
    /// Only the slices of this part of a split (a `split.csv` with a `part` column); all when `None`.
    pub part: Option<Part>,
    pub batch_size: usize,
}

/// What [`encode_dataset`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheOutcome {
    /// The file at the output path was made from the same scans, labels, settings and weights.
    Reused {
        slices: usize,
    },
    Encoded {
        slices: usize,
    },
}

/// The slices of a manifest (or split) to encode: paths relative to the manifest's folder.
pub(crate) fn selected(manifest_path: &Path, part: Option<Part>) -> Result<Manifest> {
    let manifest = Manifest::read_csv(manifest_path)?;
    let Some(part) = part else { return Ok(manifest) };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(manifest_path)
        .map_err(|e| Error::Data(format!("{}: {e}", manifest_path.display())))?;
    let headers = reader.headers().map_err(|e| Error::Data(format!("{}: {e}", manifest_path.display())))?;
    let column = headers.iter().position(|h| h == "part").ok_or_else(|| {
        Error::Data(format!("{} has no part column: make one with `repdiff split`", manifest_path.display()))
    })?;
    let mut records = Vec::new();
    for (record, row) in manifest.records.into_iter().zip(reader.records()) {
        let row = row.map_err(|e| Error::Data(format!("{}: {e}", manifest_path.display())))?;
        if row.get(column) == Some(part.name()) {
            records.push(record);
        }
    }
    if records.is_empty() {
        return Err(Error::Data(format!("{} has no slice in part {}", manifest_path.display(), part.name())));
    }
    Ok(Manifest { records })
}

fn cache_key(autoencoder: &dyn Autoencoder, spec: &EncodeSpec, manifest: &Manifest, root: &Path) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(FORMAT.as_bytes());
    hash.update(autoencoder.id().as_bytes());
    hash.update(serde_json::to_vec(spec).map_err(|e| Error::Config(e.to_string()))?);
    for record in &manifest.records {
        hash.update(serde_json::to_vec(record).map_err(|e| Error::Config(e.to_string()))?);
        let path = root.join(&record.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        hash.update(Sha256::digest(&bytes));
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The key stored in a cache file, if it is one.
pub fn stored_key(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let (_, header) = SafeTensors::read_metadata(&bytes).ok()?;
    let metadata = header.metadata().as_ref()?;
    (metadata.get("format")? == FORMAT).then(|| metadata.get("key").cloned())?
}

/// Encodes the slices of `manifest_path` (a dataset's `manifest.csv` or a `split.csv`) into `out`, or
/// reuses `out` if it holds the same encoding. `progress(done, total)` is called after each batch; a set
/// `cancel` stops before the next batch with [`Error::Cancelled`], writing nothing.
pub fn encode_dataset(
    manifest_path: &Path,
    spec: &EncodeSpec,
    autoencoder: &dyn Autoencoder,
    out: &Path,
    device: &Device,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CacheOutcome> {
    if spec.batch_size == 0 || spec.size == 0 {
        return Err(Error::Config("batch size and image size must be positive".into()));
    }
    if spec.channels.count() != autoencoder.image_channels() {
        return Err(Error::Config(format!(
            "the autoencoder {} takes {}-channel images, the preprocessing makes {}",
            autoencoder.id(),
            autoencoder.image_channels(),
            spec.channels.count()
        )));
    }
    let manifest = selected(manifest_path, spec.part)?;
    let root: PathBuf = manifest_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let key = cache_key(autoencoder, spec, &manifest, &root)?;
    let total = manifest.records.len();
    if stored_key(out).as_deref() == Some(key.as_str()) {
        return Ok(CacheOutcome::Reused { slices: total });
    }
    let mut rng = Rng::new(spec.seed);
    let images = SliceImages::new(&root, manifest.records.clone(), spec.channels.clone(), spec.size, device)?;
    let mut latents = Vec::with_capacity(total.div_ceil(spec.batch_size));
    for start in (0..total).step_by(spec.batch_size) {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled { step: start });
        }
        let count = spec.batch_size.min(total - start);
        let batch = images.read(start, count)?;
        latents.push(autoencoder.encode(&batch, spec.posterior, &mut rng)?.to_device(&Device::Cpu)?);
        progress(start + count, total);
    }
    let latents = Tensor::cat(&latents, 0)?;
    let sites: Vec<u32> = manifest.records.iter().map(|r| r.site as u32).collect();
    let mut tensors =
        vec![("latents".to_string(), latents), ("sites".to_string(), Tensor::new(sites.as_slice(), &Device::Cpu)?)];
    // Labels only when every slice has one: a file with some unlabelled slices is unlabelled data (a job
    // that needs labels refuses it), never labels with silent zeros.
    if manifest.records.iter().all(|r| !r.unlabelled) {
        let labels: Vec<u32> = manifest.records.iter().map(|r| u32::from(r.hematoma())).collect();
        tensors.push(("labels".to_string(), Tensor::new(labels.as_slice(), &Device::Cpu)?));
    }
    let metadata = [
        ("format".to_string(), FORMAT.to_string()),
        ("key".to_string(), key),
        ("autoencoder".to_string(), autoencoder.id()),
        ("spec".to_string(), serde_json::to_string(spec).map_err(|e| Error::Config(e.to_string()))?),
        (
            "files".to_string(),
            serde_json::to_string(&manifest.records.iter().map(|r| &r.file).collect::<Vec<_>>())
                .map_err(|e| Error::Config(e.to_string()))?,
        ),
    ];
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = out.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(tensors.iter().map(|(k, v)| (k, v)), Some(metadata.into_iter().collect()), &tmp)
        .map_err(|e| Error::Data(format!("{}: cannot write: {e}", tmp.display())))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(CacheOutcome::Encoded { slices: total })
}
