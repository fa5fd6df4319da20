//! Training sets in memory: `[N, C, H, W]` f32 samples (images in [-1, 1] or latents) with optional class
//! labels, read from a folder of images, a latent file, or generated (the toy two-class set).

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::imaging;
use crate::rng::Rng;
use crate::{Error, Result};

pub struct Dataset {
    /// `[N, C, H, W]`, f32.
    pub samples: Tensor,
    /// One class id per sample, when the set is labelled.
    pub labels: Option<Vec<u32>>,
    /// Names of the classes, index = class id.
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn new(samples: Tensor, labels: Option<Vec<u32>>, class_names: Vec<String>) -> Result<Self> {
        let dims = samples.dims();
        if dims.len() != 4 || dims[0] == 0 {
            return Err(Error::Data(format!("samples must be a non-empty [N, C, H, W] tensor, got {dims:?}")));
        }
        if let Some(labels) = &labels
            && labels.len() != dims[0]
        {
            return Err(Error::Data(format!("{} labels for {} samples", labels.len(), dims[0])));
        }
        let samples = samples.to_dtype(candle_core::DType::F32)?;
        Ok(Dataset { samples, labels, class_names })
    }

    pub fn len(&self) -> usize {
        self.samples.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (C, H, W) of one sample.
    pub fn sample_dims(&self) -> (usize, usize, usize) {
        let d = self.samples.dims();
        (d[1], d[2], d[3])
    }

    pub fn num_classes(&self) -> usize {
        self.labels.as_ref().map_or(0, |l| l.iter().max().map_or(0, |&m| m as usize + 1)).max(self.class_names.len())
    }

    /// Reads a folder of images. Sub-folders are classes (sorted by name, as ImageFolder does); images
    /// directly in `dir` make an unlabelled set. Each image is centre-cropped to a square, resized to
    /// `size` and scaled to [-1, 1] with `channels` = 1 (grey) or 3 (RGB).
    pub fn from_image_folder(dir: &Path, size: usize, channels: usize, device: &Device) -> Result<Self> {
        let entries = list_dir(dir)?;
        let class_dirs: Vec<_> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
        let mut files: Vec<(std::path::PathBuf, Option<u32>)> = Vec::new();
        let mut class_names = Vec::new();
        if class_dirs.is_empty() {
            files.extend(entries.into_iter().filter(|p| imaging::is_image_path(p)).map(|p| (p, None)));
        } else {
            for (class, class_dir) in class_dirs.iter().enumerate() {
                class_names.push(class_dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
                let images = list_dir(class_dir)?.into_iter().filter(|p| imaging::is_image_path(p));
                files.extend(images.map(|p| (p, Some(class as u32))));
            }
        }
        if files.is_empty() {
            return Err(Error::Data(format!(
                "{} holds no PNG or JPEG images (nor class folders of them)",
                dir.display()
            )));
        }
        let mut values = Vec::with_capacity(files.len() * channels * size * size);
        for (path, _) in &files {
            values.extend(imaging::load_normalised(path, size, channels)?);
        }
        let samples = Tensor::from_vec(values, (files.len(), channels, size, size), device)?;
        let labels =
            if class_names.is_empty() { None } else { Some(files.iter().map(|(_, l)| l.unwrap_or(0)).collect()) };
        Dataset::new(samples, labels, class_names)
    }

    /// Reads a safetensors file with `latents` (`[N, C, H, W]`) and optionally `labels` (`[N]`, integer).
    pub fn from_latent_file(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| Error::Data(format!("{}: cannot read as safetensors: {e}", path.display())))?;
        let samples = tensors
            .get("latents")
            .ok_or_else(|| Error::Data(format!("{} has no tensor named \"latents\"", path.display())))?
            .clone();
        let labels = match tensors.get("labels") {
            Some(l) => Some(l.to_dtype(candle_core::DType::U32)?.flatten_all()?.to_vec1::<u32>()?),
            None => None,
        };
        Dataset::new(samples, labels, Vec::new())
    }

    /// A toy two-class set of grey `size` x `size` images: class 0 a horizontal bar, class 1 a vertical bar,
    /// at a random offset, over mild noise. Flip-invariant classes, so horizontal-flip augmentation is safe.
    pub fn toy_bars(n: usize, size: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut values = Vec::with_capacity(n * size * size);
        let mut labels = Vec::with_capacity(n);
        let thickness = (size / 4).max(1);
        for i in 0..n {
            let class = (i % 2) as u32;
            let offset = rng.below(size - thickness + 1);
            let noise = rng.normal_vec(size * size);
            for row in 0..size {
                for col in 0..size {
                    let coord = if class == 0 { row } else { col };
                    let on = coord >= offset && coord < offset + thickness;
                    values.push(if on { 0.8 } else { -0.8 } + 0.05 * noise[row * size + col]);
                }
            }
            labels.push(class);
        }
        let samples = Tensor::from_vec(values, (n, 1, size, size), device)?;
        Dataset::new(samples, Some(labels), vec!["horizontal".into(), "vertical".into()])
    }

    /// Writes the set as a latent file (`latents`, `labels`) readable by [`Dataset::from_latent_file`].
    pub fn save_latent_file(&self, path: &Path) -> Result<()> {
        let mut tensors = vec![("latents".to_string(), self.samples.clone())];
        if let Some(labels) = &self.labels {
            tensors.push(("labels".to_string(), Tensor::new(labels.as_slice(), self.samples.device())?));
        }
        candle_core::safetensors::save(&tensors.into_iter().collect(), path)
            .map_err(|e| Error::Data(format!("{}: cannot write: {e}", path.display())))
    }
}

fn list_dir(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries)
}
