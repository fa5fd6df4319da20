//! Image sets read a batch at a time, so that measuring 10,000 images never holds 10,000 images: a 256 x
//! 256 RGB set of that size is 7.9 GB as floats, its features 0.2 GB. A set is a folder of PNG/JPEG
//! files, a pixel-space tensor file (read by seeking to the rows wanted), a dataset's CT slices through
//! a window, or a tensor already in memory; [`EvenlySpaced`] takes a subset of any of them.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::imaging::{self, Channels};
use crate::manifest::{Part, SliceRecord};
use crate::{Error, Result};

/// A set of equally sized images in [-1, 1], read in batches.
pub trait ImageSource {
    /// How many images the set holds.
    fn len(&self) -> usize;
    /// Channels (1 or 3), height and width of every image.
    fn image_dims(&self) -> (usize, usize, usize);
    /// Images `start..start + count` as `[count, C, H, W]` f32.
    fn read(&self, start: usize, count: usize) -> Result<Tensor>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_range(source: &(impl ImageSource + ?Sized), start: usize, count: usize) -> Result<()> {
    if count == 0 || start + count > source.len() {
        return Err(Error::Config(format!("images {start}..{} asked of a set of {}", start + count, source.len())));
    }
    Ok(())
}

/// Images already in memory, `[N, C, H, W]`.
impl ImageSource for Tensor {
    fn len(&self) -> usize {
        self.dims().first().copied().unwrap_or(0)
    }

    fn image_dims(&self) -> (usize, usize, usize) {
        match self.dims() {
            [_, c, h, w] => (*c, *h, *w),
            _ => (0, 0, 0),
        }
    }

    fn read(&self, start: usize, count: usize) -> Result<Tensor> {
        check_range(self, start, count)?;
        Ok(self.narrow(0, start, count)?.to_dtype(DType::F32)?)
    }
}

/// A folder of PNG/JPEG images (class sub-folders allowed; the `grid.png` that `repdiff sample` writes
/// beside its samples is skipped), in name order, read as RGB, centre-cropped and resized to one side.
pub struct ImageFolder {
    files: Vec<PathBuf>,
    size: usize,
    device: Device,
}

impl ImageFolder {
    /// The images of `path` at side `size`, or at the first image's shorter side.
    pub fn open(path: &Path, size: Option<usize>, device: &Device) -> Result<Self> {
        let mut files = Vec::new();
        for entry in sorted_entries(path)? {
            if entry.is_dir() {
                files.extend(sorted_entries(&entry)?.into_iter().filter(|p| imaging::is_image_path(p)));
            } else if imaging::is_image_path(&entry) && entry.file_name().is_some_and(|n| n != "grid.png") {
                files.push(entry);
            }
        }
        let Some(first) = files.first() else {
            return Err(Error::Data(format!("{} holds no PNG or JPEG images", path.display())));
        };
        let size = match size {
            Some(0) => return Err(Error::Config("the image side must be positive".into())),
            Some(s) => s,
            None => {
                let (w, h) =
                    image::image_dimensions(first).map_err(|source| Error::Image { path: first.clone(), source })?;
                w.min(h) as usize
            }
        };
        Ok(ImageFolder { files, size, device: device.clone() })
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten().map(|e| e.path()).collect();
    entries.sort();
    Ok(entries)
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn image_dims(&self) -> (usize, usize, usize) {
        (3, self.size, self.size)
    }

    fn read(&self, start: usize, count: usize) -> Result<Tensor> {
        check_range(self, start, count)?;
        let mut values = Vec::with_capacity(count * 3 * self.size * self.size);
        for file in &self.files[start..start + count] {
            values.extend(imaging::load_normalised(file, self.size, 3)?);
        }
        Ok(Tensor::from_vec(values, (count, 3, self.size, self.size), &self.device)?)
    }
}

/// The `latents` tensor of a safetensors file holding pixel-space images (1 or 3 channels, as `repdiff
/// sample` writes for pixel-space models), read by seeking to the rows asked for.
pub struct TensorFile {
    path: PathBuf,
    /// Where the tensor's first byte lies in the file.
    offset: u64,
    dtype: DType,
    dims: [usize; 4],
    device: Device,
}

impl TensorFile {
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let unreadable = |why: String| Error::Data(format!("{}: cannot read as safetensors: {why}", path.display()));
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| unreadable(e.to_string()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100_000_000 || 8 + header_len > file_len {
            return Err(unreadable(format!("a header of {header_len} bytes")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| unreadable(e.to_string()))?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| unreadable(e.to_string()))?;
        let entry = header
            .get("latents")
            .ok_or_else(|| Error::Data(format!("{} has no tensor named \"latents\"", path.display())))?;
        let shape: Vec<usize> =
            serde_json::from_value(entry["shape"].clone()).map_err(|e| unreadable(e.to_string()))?;
        let [begin, end]: [u64; 2] =
            serde_json::from_value(entry["data_offsets"].clone()).map_err(|e| unreadable(e.to_string()))?;
        let dtype = match entry["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            other => return Err(Error::Data(format!("{}: latents of type {other:?}", path.display()))),
        };
        let &[n, c, h, w] = shape.as_slice() else {
            return Err(Error::Data(format!("{}: latents of shape {shape:?}, not [N, C, H, W]", path.display())));
        };
        if c != 1 && c != 3 {
            return Err(Error::Data(format!(
                "{} holds {c}-channel latents, not images: evaluate the PNG folder written beside it (decoded by the autoencoder)",
                path.display()
            )));
        }
        let offset = 8 + header_len + begin;
        if end - begin != (n * c * h * w * dtype.size_in_bytes()) as u64 || offset + (end - begin) > file_len {
            return Err(unreadable("the latents' byte range does not match their shape".into()));
        }
        Ok(TensorFile { path: path.to_path_buf(), offset, dtype, dims: [n, c, h, w], device: device.clone() })
    }
}

impl ImageSource for TensorFile {
    fn len(&self) -> usize {
        self.dims[0]
    }

    fn image_dims(&self) -> (usize, usize, usize) {
        (self.dims[1], self.dims[2], self.dims[3])
    }

    fn read(&self, start: usize, count: usize) -> Result<Tensor> {
        check_range(self, start, count)?;
        let [_, c, h, w] = self.dims;
        let row = c * h * w * self.dtype.size_in_bytes();
        let mut bytes = vec![0u8; count * row];
        let mut file = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        file.seek(SeekFrom::Start(self.offset + (start * row) as u64)).map_err(|e| Error::io(&self.path, e))?;
        file.read_exact(&mut bytes).map_err(|e| Error::io(&self.path, e))?;
        Ok(Tensor::from_raw_buffer(&bytes, self.dtype, &[count, c, h, w], &self.device)?.to_dtype(DType::F32)?)
    }
}

/// A dataset's CT slices (a `manifest.csv`, or one part of a `split.csv`) as images: through `channels`'
/// window(s), centre-cropped and resized to `size`, read from their files a batch at a time.
pub struct SliceImages {
    root: PathBuf,
    records: Vec<SliceRecord>,
    channels: Channels,
    size: usize,
    device: Device,
}

impl SliceImages {
    pub fn open(
        manifest_path: &Path,
        part: Option<Part>,
        channels: Channels,
        size: usize,
        device: &Device,
    ) -> Result<Self> {
        let records = crate::latent_cache::selected(manifest_path, part)?.records;
        let root = manifest_path.parent().unwrap_or(Path::new("."));
        Self::new(root, records, channels, size, device)
    }

    /// The slices `records` name, their files relative to `root`.
    pub fn new(
        root: &Path,
        records: Vec<SliceRecord>,
        channels: Channels,
        size: usize,
        device: &Device,
    ) -> Result<Self> {
        if size == 0 {
            return Err(Error::Config("the image side must be positive".into()));
        }
        if records.is_empty() {
            return Err(Error::Data(format!("no slices listed in {}", root.display())));
        }
        Ok(SliceImages { root: root.to_path_buf(), records, channels, size, device: device.clone() })
    }
}

impl ImageSource for SliceImages {
    fn len(&self) -> usize {
        self.records.len()
    }

    fn image_dims(&self) -> (usize, usize, usize) {
        (self.channels.count(), self.size, self.size)
    }

    fn read(&self, start: usize, count: usize) -> Result<Tensor> {
        check_range(self, start, count)?;
        let (c, h, w) = self.image_dims();
        let mut values = Vec::with_capacity(count * c * h * w);
        for record in &self.records[start..start + count] {
            let path = self.root.join(&record.file);
            let slices = imaging::read_slices(&path)?;
            let [slice] = &slices[..] else {
                return Err(Error::Data(format!(
                    "{}: a manifest row names one slice, the file has {}",
                    path.display(),
                    slices.len()
                )));
            };
            values.extend(imaging::to_model_input(slice, &self.channels, self.size)?);
        }
        Ok(Tensor::from_vec(values, (count, c, h, w), &self.device)?)
    }
}

/// At most `max` images of a set, evenly spaced through it (so a subset spans the classes and sites of a
/// set ordered by them); all of them when there are no more.
pub struct EvenlySpaced<'a, S: ImageSource + ?Sized> {
    inner: &'a S,
    picks: Vec<usize>,
}

impl<'a, S: ImageSource + ?Sized> EvenlySpaced<'a, S> {
    pub fn new(inner: &'a S, max: usize) -> Self {
        let n = inner.len();
        let picks = if max >= n { (0..n).collect() } else { (0..max).map(|i| i * n / max).collect() };
        EvenlySpaced { inner, picks }
    }
}

impl<S: ImageSource + ?Sized> ImageSource for EvenlySpaced<'_, S> {
    fn len(&self) -> usize {
        self.picks.len()
    }

    fn image_dims(&self) -> (usize, usize, usize) {
        self.inner.image_dims()
    }

    fn read(&self, start: usize, count: usize) -> Result<Tensor> {
        check_range(self, start, count)?;
        let picks = &self.picks[start..start + count];
        if picks.windows(2).all(|p| p[1] == p[0] + 1) {
            return self.inner.read(picks[0], count);
        }
        let rows = picks.iter().map(|&i| self.inner.read(i, 1)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// An image set to evaluate: a folder of PNG/JPEG images at side `size` (default: the first image's), or
/// a safetensors file of pixel-space images in [-1, 1].
pub fn open_image_set(path: &Path, size: Option<usize>, device: &Device) -> Result<Box<dyn ImageSource>> {
    if path.is_dir() {
        return Ok(Box::new(ImageFolder::open(path, size, device)?));
    }
    let file = TensorFile::open(path, device)?;
    match size {
        Some(s) if s != file.image_dims().1 => Err(Error::Data(format!(
            "{} holds {}-pixel images; the generated ones are {s} pixels",
            path.display(),
            file.image_dims().1
        ))),
        _ => Ok(Box::new(file)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, c: usize, side: usize) -> Tensor {
        let values: Vec<f32> = (0..n * c * side * side).map(|i| (i % 255) as f32 / 127.5 - 1.0).collect();
        Tensor::from_vec(values, (n, c, side, side), &Device::Cpu).unwrap()
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.dims() == b.dims()
            && a.flatten_all().unwrap().to_vec1::<f32>().unwrap() == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn a_tensor_file_reads_back_any_rows_as_written() {
        let dir = std::env::temp_dir().join(format!("repdiff-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let images = ramp(7, 3, 5);
        let path = dir.join("set.safetensors");
        candle_core::safetensors::save(
            &[
                ("labels".to_string(), Tensor::new(&[1u32; 7], &Device::Cpu).unwrap()),
                ("latents".into(), images.clone()),
            ]
            .into_iter()
            .collect(),
            &path,
        )
        .unwrap();
        let file = TensorFile::open(&path, &Device::Cpu).unwrap();
        assert_eq!((file.len(), file.image_dims()), (7, (3, 5, 5)));
        assert!(same(&file.read(0, 7).unwrap(), &images));
        assert!(same(&file.read(2, 3).unwrap(), &images.narrow(0, 2, 3).unwrap()));
        assert!(file.read(5, 3).is_err(), "past the end");

        // Four-channel latents are no images; a truncated file is refused.
        let latents = ramp(2, 4, 5);
        candle_core::safetensors::save(&[("latents".to_string(), latents)].into_iter().collect(), &path).unwrap();
        assert!(TensorFile::open(&path, &Device::Cpu).err().unwrap().to_string().contains("4-channel"));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(TensorFile::open(&path, &Device::Cpu).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn evenly_spaced_picks_span_the_set() {
        let images = ramp(10, 1, 2);
        let subset = EvenlySpaced::new(&images, 4);
        assert_eq!(subset.picks, vec![0, 2, 5, 7]);
        let rows = [0, 2, 5, 7].map(|i| images.narrow(0, i, 1).unwrap());
        assert!(same(&subset.read(0, 4).unwrap(), &Tensor::cat(&rows, 0).unwrap()));
        assert_eq!(EvenlySpaced::new(&images, 50).len(), 10);
        assert!(same(&EvenlySpaced::new(&images, 50).read(3, 4).unwrap(), &images.narrow(0, 3, 4).unwrap()));
    }
}
