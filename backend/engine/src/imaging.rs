//! Image files in and out: load PNG/JPEG (8 or 16 bit) as normalised tensors' values, write samples as
//! PNG files and grids.

use std::path::Path;

use candle_core::Tensor;
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, RgbImage};

use crate::{Error, Result};

/// A CT display window: Hounsfield units in [level - width/2, level + width/2] map to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub level: f32,
    pub width: f32,
}

impl Window {
    pub const BRAIN: Window = Window { level: 40.0, width: 80.0 };
    pub const SUBDURAL: Window = Window { level: 80.0, width: 200.0 };
    pub const SOFT_TISSUE: Window = Window { level: 40.0, width: 380.0 };
    pub const BONE: Window = Window { level: 600.0, width: 2800.0 };

    /// A preset by name (`brain`, `subdural`, `soft-tissue`, `bone`) or a custom `LEVEL/WIDTH`, e.g. `50/120`.
    pub fn parse(spec: &str) -> Result<Self> {
        let window = match spec {
            "brain" => Window::BRAIN,
            "subdural" => Window::SUBDURAL,
            "soft-tissue" => Window::SOFT_TISSUE,
            "bone" => Window::BONE,
            custom => {
                let parsed =
                    custom.split_once('/').and_then(|(l, w)| Some((l.trim().parse().ok()?, w.trim().parse().ok()?)));
                let (level, width) = parsed.ok_or_else(|| {
                    Error::Config(format!(
                        "unknown window {spec:?}: use brain, subdural, soft-tissue, bone or LEVEL/WIDTH"
                    ))
                })?;
                Window { level, width }
            }
        };
        if window.width.is_nan() || window.width <= 0.0 {
            return Err(Error::Config(format!("window width must be positive, got {}", window.width)));
        }
        Ok(window)
    }

    /// Hounsfield units to [0, 1].
    pub fn apply(&self, hu: f32) -> f32 {
        ((hu - (self.level - self.width / 2.0)) / self.width).clamp(0.0, 1.0)
    }

    /// A `size` x `size` slice of Hounsfield units as an 8-bit grey image through this window.
    pub fn to_gray8(&self, hu: &[f32], size: usize) -> GrayImage {
        let pixels = hu.iter().map(|&v| (self.apply(v) * 255.0).round() as u8).collect();
        GrayImage::from_raw(size as u32, size as u32, pixels).expect("hu has size * size values")
    }
}

pub fn is_image_path(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Loads an image, centre-crops it to a square, resizes it to `size` (Catmull-Rom) and returns its values
/// in [-1, 1], channel-major (`channels` = 1 grey or 3 RGB).
pub fn load_normalised(path: &Path, size: usize, channels: usize) -> Result<Vec<f32>> {
    let img = image::open(path).map_err(|source| Error::Image { path: path.into(), source })?;
    let side = img.width().min(img.height());
    let cropped = img.crop_imm((img.width() - side) / 2, (img.height() - side) / 2, side, side);
    let resized = cropped.resize_exact(size as u32, size as u32, FilterType::CatmullRom);
    let to_unit = |v: f32| v.clamp(0.0, 1.0) * 2.0 - 1.0;
    match channels {
        1 => Ok(resized.to_luma32f().into_raw().into_iter().map(to_unit).collect()),
        3 => {
            let rgb = resized.to_rgb32f().into_raw();
            let plane = size * size;
            let mut out = vec![0f32; 3 * plane];
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = to_unit(px[c]);
                }
            }
            Ok(out)
        }
        _ => Err(Error::Config(format!("images can be loaded with 1 or 3 channels, not {channels}"))),
    }
}

/// Converts `[N, C, H, W]` samples to images. Pixel-space samples (C = 1 or 3) map [-1, 1] to [0, 255];
/// other channel counts (latents) show their first three channels, each min-max normalised, as a preview.
pub fn to_images(samples: &Tensor) -> Result<Vec<DynamicImage>> {
    let (n, c, h, w) = samples.dims4()?;
    let data = samples.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    let to_byte = |v: f32| (((v + 1.0) * 127.5).round()).clamp(0.0, 255.0) as u8;
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        let sample = &data[i * c * plane..(i + 1) * c * plane];
        let img = if c == 1 {
            DynamicImage::ImageLuma8(
                GrayImage::from_raw(w as u32, h as u32, sample.iter().map(|&v| to_byte(v)).collect()).expect("size"),
            )
        } else {
            let channels: Vec<Vec<u8>> = (0..3.min(c))
                .map(|ch| {
                    let values = &sample[ch * plane..(ch + 1) * plane];
                    if c == 3 {
                        values.iter().map(|&v| to_byte(v)).collect()
                    } else {
                        let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                        let span = (hi - lo).max(1e-6);
                        values.iter().map(|&v| ((v - lo) / span * 255.0).round() as u8).collect()
                    }
                })
                .collect();
            let mut rgb = Vec::with_capacity(3 * plane);
            for p in 0..plane {
                for ch in 0..3 {
                    rgb.push(channels.get(ch).map_or(0, |plane| plane[p]));
                }
            }
            DynamicImage::ImageRgb8(RgbImage::from_raw(w as u32, h as u32, rgb).expect("size"))
        };
        images.push(img);
    }
    Ok(images)
}

/// Tiles images into a grid with `columns` columns and a 2-pixel border.
pub fn grid(images: &[DynamicImage], columns: usize) -> Option<RgbImage> {
    let first = images.first()?;
    let (w, h) = (first.width(), first.height());
    let columns = columns.clamp(1, images.len()) as u32;
    let rows = images.len().div_ceil(columns as usize) as u32;
    let pad = 2;
    let mut canvas = RgbImage::from_pixel(columns * (w + pad) + pad, rows * (h + pad) + pad, image::Rgb([32, 32, 32]));
    for (i, img) in images.iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        image::imageops::replace(
            &mut canvas,
            &img.to_rgb8(),
            (pad + col * (w + pad)) as i64,
            (pad + row * (h + pad)) as i64,
        );
    }
    Some(canvas)
}

pub fn save_png(image: &DynamicImage, path: &Path) -> Result<()> {
    image.save(path).map_err(|source| Error::Image { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_map_their_range_to_unit_and_parse() {
        let brain = Window::parse("brain").unwrap();
        assert_eq!((brain.apply(0.0), brain.apply(40.0), brain.apply(80.0)), (0.0, 0.5, 1.0));
        assert_eq!(brain.apply(-1000.0), 0.0);
        assert_eq!(Window::parse("bone").unwrap(), Window::BONE);
        assert_eq!(Window::parse("50/120").unwrap(), Window { level: 50.0, width: 120.0 });
        assert!(Window::parse("lung").unwrap_err().to_string().contains("unknown window \"lung\""));
        assert!(Window::parse("40/0").is_err());
    }
}
