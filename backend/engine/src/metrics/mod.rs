//! Generation metrics as the field computes them (the ADM evaluator's definitions, which DiT used): FID
//! and sFID, Inception Score, precision and recall, plus density and coverage, and the feature histograms
//! of the paper's Figs. 7/9.
//!
//! Images go through [`inception::InceptionV3`] once ([`extract`]); everything after works on the
//! features. The pretrained FID network comes from `model-weights/`; without it the documented random
//! network stands in, and every result carries the extractor's label so that a Frechet distance in a
//! random feature space is never presented as FID.

pub mod distance;
pub mod images;
pub mod inception;
pub mod tsne;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use distance::{FeatureMatrix, Gaussian, density_coverage, frechet_distance, inception_score, precision_recall};
pub use images::{EvenlySpaced, ImageFolder, ImageSource, SliceImages, TensorFile, open_image_set};
pub use inception::{Extractor, InceptionV3};

use crate::train::CancelToken;
use crate::{Error, Result};

/// What one image set looks like to the extractor.
#[derive(Clone, Debug)]
pub struct SetFeatures {
    /// [`Extractor::label`] of the network that computed them.
    pub extractor: String,
    pub pool: FeatureMatrix,
    pub spatial: FeatureMatrix,
    pub logits: FeatureMatrix,
}

fn to_matrix(t: &Tensor) -> Result<FeatureMatrix> {
    let (n, d) = t.dims2()?;
    FeatureMatrix::new(n, d, t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Rounds `[-1, 1]` images to the 256 levels a PNG holds, so generated samples (floats) and real images
/// (read from 8-bit files) meet the network alike, as the ADM evaluator's uint8 batches do.
pub fn quantise(images: &Tensor) -> Result<Tensor> {
    Ok(((levels(images)? / 127.5)? - 1.0)?)
}

/// The 8-bit level (0 to 255, as f32) nearest each value of `[-1, 1]` images.
fn levels(images: &Tensor) -> Result<Tensor> {
    Ok(((images.to_dtype(DType::F32)? + 1.0)? * 127.5)?.clamp(0f32, 255f32)?.round()?)
}

/// Features of `images` (1 or 3 channels in [-1, 1]), read and measured `batch_size` at a time;
/// `on_progress(done, total)` after each batch.
pub fn extract(
    net: &InceptionV3,
    images: &(impl ImageSource + ?Sized),
    batch_size: usize,
    cancel: Option<&CancelToken>,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<SetFeatures> {
    let n = images.len();
    if n == 0 {
        return Err(Error::Config("no images to evaluate".into()));
    }
    let (mut pool, mut spatial, mut logits) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..n).step_by(batch_size.max(1)) {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled { step: start });
        }
        let size = batch_size.max(1).min(n - start);
        let f = net.features(&quantise(&images.read(start, size)?)?)?;
        pool.push(to_matrix(&f.pool)?);
        spatial.push(to_matrix(&f.spatial)?);
        logits.push(to_matrix(&f.logits)?);
        on_progress(start + size, n);
    }
    Ok(SetFeatures {
        extractor: net.extractor().label(),
        pool: FeatureMatrix::concat(&pool)?,
        spatial: FeatureMatrix::concat(&spatial)?,
        logits: FeatureMatrix::concat(&logits)?,
    })
}

/// [`extract`] of a model's raw samples (latents or pixels), decoded for display `batch_size` at a time,
/// so a 10,000-sample evaluation never holds 10,000 decoded images (or decodes them in one call). Returns
/// the features and the decoded images' channels and side. Latents without their autoencoder's weights
/// are an error: their preview is no image to measure.
pub fn extract_samples(
    net: &InceptionV3,
    samples: &Tensor,
    config: &crate::config::RunConfig,
    weights_dir: &Path,
    batch_size: usize,
    cancel: Option<&CancelToken>,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<(SetFeatures, (usize, usize))> {
    let n = samples.dim(0)?;
    if n == 0 {
        return Err(Error::Config("no samples to evaluate".into()));
    }
    let batch_size = batch_size.max(1);
    let mut parts = Vec::new();
    let mut shape = (0, 0);
    let decoder = crate::sample::Decoder::new(config, weights_dir, samples.device());
    if let Some(note) = &decoder.note {
        return Err(Error::Config(format!("{note}; undecoded latents cannot be evaluated")));
    }
    for start in (0..n).step_by(batch_size) {
        let size = batch_size.min(n - start);
        let images = decoder.decode(&samples.narrow(0, start, size)?)?;
        let (_, c, h, _) = images.dims4()?;
        shape = (c, h);
        parts.push(extract(net, &images, size, cancel, |_, _| {})?);
        on_progress(start + size, n);
    }
    Ok((SetFeatures::concat(&parts)?, shape))
}

impl SetFeatures {
    /// The rows of several sets measured by one extractor, in order.
    pub fn concat(parts: &[SetFeatures]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::Config("no features to join".into()));
        };
        if parts.iter().any(|p| p.extractor != first.extractor) {
            return Err(Error::Config("features of different extractors cannot be joined".into()));
        }
        let join = |pick: fn(&SetFeatures) -> &FeatureMatrix| {
            FeatureMatrix::concat(&parts.iter().map(|p| pick(p).clone()).collect::<Vec<_>>())
        };
        Ok(SetFeatures {
            extractor: first.extractor.clone(),
            pool: join(|p| &p.pool)?,
            spatial: join(|p| &p.spatial)?,
            logits: join(|p| &p.logits)?,
        })
    }

    /// Writes the features as safetensors (`pool`, `spatial`, `logits`; the extractor in the metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let device = candle_core::Device::Cpu;
        let mut tensors = HashMap::new();
        for (name, m) in [("pool", &self.pool), ("spatial", &self.spatial), ("logits", &self.logits)] {
            tensors.insert(name.to_string(), Tensor::from_slice(&m.values, (m.n, m.d), &device)?);
        }
        let metadata = HashMap::from([("extractor".to_string(), self.extractor.clone())]);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)).collect::<Vec<_>>(), Some(metadata))
                .map_err(|e| Error::Data(format!("cannot serialise features: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        // Written whole, then renamed: a killed process never leaves half a cache behind.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, bytes).map_err(|e| Error::io(&partial, e))?;
        std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: String| Error::Data(format!("{}: {why}", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let extractor = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("extractor").cloned())
            .ok_or_else(|| bad("no extractor in the metadata".into()))?;
        let tensors =
            candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| tensors.get(name).ok_or_else(|| bad(format!("no tensor {name}"))).and_then(to_matrix);
        Ok(SetFeatures { extractor, pool: get("pool")?, spatial: get("spatial")?, logits: get("logits")? })
    }

    pub fn len(&self) -> usize {
        self.pool.n
    }

    pub fn is_empty(&self) -> bool {
        self.pool.n == 0
    }
}

/// [`extract`], reusing features cached in `cache_dir` for the same pixels and extractor (a dataset's
/// reference statistics are computed once). The cache key hashes the images' 8-bit levels, read a batch
/// at a time; a miss reads the set again to extract (decoding an image costs a few milliseconds, the
/// network hundreds). Returns the features and whether they came from the cache.
pub fn extract_cached(
    net: &InceptionV3,
    images: &(impl ImageSource + ?Sized),
    cache_dir: &Path,
    batch_size: usize,
    cancel: Option<&CancelToken>,
    on_progress: impl FnMut(usize, usize),
) -> Result<(SetFeatures, bool)> {
    let n = images.len();
    let (c, h, w) = images.image_dims();
    let mut hash = Sha256::new();
    hash.update(format!("{:?}|{}", [n, c, h, w], net.extractor().label()).as_bytes());
    for start in (0..n).step_by(batch_size.max(1)) {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled { step: 0 });
        }
        let batch = images.read(start, batch_size.max(1).min(n - start))?;
        hash.update(levels(&batch)?.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?);
    }
    let key: String = hash.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    let path = cache_dir.join(format!("features-{key}.safetensors"));
    if path.exists()
        && let Ok(cached) = SetFeatures::load(&path)
        && cached.extractor == net.extractor().label()
    {
        return Ok((cached, true));
    }
    let features = extract(net, images, batch_size, cancel, on_progress)?;
    features.save(&path)?;
    Ok((features, false))
}

/// Neighbourhood sizes and splits of the metrics (the field's defaults).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricOptions {
    /// k of precision/recall (ADM evaluator: 3).
    pub pr_neighbours: usize,
    /// k of density/coverage (prdc: 5).
    pub dc_neighbours: usize,
    /// Inception Score splits (10; fewer when there are fewer generated images).
    pub is_splits: usize,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions { pr_neighbours: 3, dc_neighbours: 5, is_splits: 10 }
    }
}

/// One generated set against the real one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GenerationMetrics {
    /// The extractor's label: `inception-v3` (the field's FID) or a random network's.
    pub extractor: String,
    pub real: usize,
    pub generated: usize,
    /// Frechet distance of pool features (FID with the pretrained extractor).
    pub fid: f64,
    /// Frechet distance of the spatial features (sFID).
    pub sfid: f64,
    pub inception_score: f64,
    pub inception_score_std: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

impl GenerationMetrics {
    /// Whether the numbers are the field's (pretrained Inception) or a random network's.
    pub fn is_pretrained(&self) -> bool {
        self.extractor == Extractor::Pretrained.label()
    }

    /// Display names and values; a random extractor's Frechet distances and score are named for what
    /// they are (`FD`, `sFD`, `score`, with the extractor), never FID, sFID or IS.
    pub fn rows(&self) -> Vec<(String, f64)> {
        let (fid, sfid, is) = if self.is_pretrained() {
            ("FID".to_string(), "sFID".to_string(), "IS".to_string())
        } else {
            let e = &self.extractor;
            (format!("FD ({e})"), format!("sFD ({e})"), format!("Inception-style score ({e})"))
        };
        vec![
            (fid, self.fid),
            (sfid, self.sfid),
            (is, self.inception_score),
            ("precision".into(), self.precision),
            ("recall".into(), self.recall),
            ("density".into(), self.density),
            ("coverage".into(), self.coverage),
        ]
    }
}

/// All metrics of `generated` against `real` (features from the same extractor).
pub fn compare(real: &SetFeatures, generated: &SetFeatures, options: &MetricOptions) -> Result<GenerationMetrics> {
    if real.extractor != generated.extractor {
        return Err(Error::Config(format!(
            "features from different extractors ({} vs {}) cannot be compared",
            real.extractor, generated.extractor
        )));
    }
    let fid = frechet_distance(&Gaussian::fit(&real.pool)?, &Gaussian::fit(&generated.pool)?)?;
    let sfid = frechet_distance(&Gaussian::fit(&real.spatial)?, &Gaussian::fit(&generated.spatial)?)?;
    let splits = options.is_splits.min(generated.len()).max(1);
    let (inception_score, inception_score_std) = inception_score(&generated.logits, splits)?;
    let (precision, recall) = precision_recall(&real.pool, &generated.pool, options.pr_neighbours)?;
    let (density, coverage) = density_coverage(&real.pool, &generated.pool, options.dc_neighbours)?;
    Ok(GenerationMetrics {
        extractor: real.extractor.clone(),
        real: real.len(),
        generated: generated.len(),
        fid,
        sfid,
        inception_score,
        inception_score_std,
        precision,
        recall,
        density,
        coverage,
    })
}
