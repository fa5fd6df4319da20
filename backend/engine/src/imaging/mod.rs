//! Scans and images in and out. Readers for DICOM ([`dicom`]), NIfTI ([`nifti`]) and PNG/JPEG turn a file
//! into [`Slice`]s (Hounsfield units where the file carries them); [`Window`]s and [`to_model_input`] make
//! model input of them; [`deid`] de-identifies DICOM; samples leave as PNG files and grids.

pub mod deid;
pub mod dicom;
pub mod nifti;

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

/// What a slice's values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Unit {
    /// CT attenuation in Hounsfield units (DICOM, NIfTI, 16-bit PNG).
    Hounsfield,
    /// Display grey in [0, 1], already windowed (8-bit PNG/JPEG).
    Grey,
}

/// One 2-D image, row-major: `values[row * columns + column]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub rows: usize,
    pub columns: usize,
    pub values: Vec<f32>,
    pub unit: Unit,
    /// Pixel spacing (row, column) in millimetres, where the file says.
    pub spacing_mm: Option<(f32, f32)>,
}

/// The offset 16-bit CT PNGs add to Hounsfield units (stored = HU + offset), as RepDiff writes them.
pub const PNG16_HU_OFFSET: f32 = 32768.0;

/// The kind of scan file, by content (DICOM magic) or by name (`.nii`, `.nii.gz`, `.png`, `.jpg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanFormat {
    Dicom,
    Nifti,
    Image,
}

impl ScanFormat {
    pub fn detect(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".nii") || name.ends_with(".nii.gz") {
            return Some(ScanFormat::Nifti);
        }
        if is_image_path(path) {
            return Some(ScanFormat::Image);
        }
        if name.ends_with(".dcm") || name.ends_with(".dicom") {
            return Some(ScanFormat::Dicom);
        }
        // DICOM files often have no extension: look for the magic.
        let mut head = [0u8; 132];
        let mut file = std::fs::File::open(path).ok()?;
        std::io::Read::read_exact(&mut file, &mut head).ok()?;
        dicom::looks_like_dicom(&head).then_some(ScanFormat::Dicom)
    }
}

/// Reads a PNG or JPEG as one slice: 16-bit grey is Hounsfield units + `hu_offset`, 8-bit is display grey.
pub fn read_image_slice(path: &Path, hu_offset: f32) -> Result<Slice> {
    let img = image::open(path).map_err(|source| Error::Image { path: path.into(), source })?;
    let (columns, rows) = (img.width() as usize, img.height() as usize);
    let (values, unit) = match img {
        DynamicImage::ImageLuma16(grey) => {
            (grey.into_raw().into_iter().map(|v| v as f32 - hu_offset).collect(), Unit::Hounsfield)
        }
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) | DynamicImage::ImageLumaA16(_) => {
            return Err(Error::Scan {
                path: path.into(),
                reason: "a 16-bit PNG with colour or alpha is not a CT slice: expected 16-bit grey".into(),
            });
        }
        other => (other.to_luma32f().into_raw(), Unit::Grey),
    };
    Ok(Slice { rows, columns, values, unit, spacing_mm: None })
}

/// Reads every slice of a scan file (a DICOM frame, a NIfTI axial slice, or an image).
pub fn read_slices(path: &Path) -> Result<Vec<Slice>> {
    match ScanFormat::detect(path) {
        Some(ScanFormat::Dicom) => Ok(dicom::read(path)?.0),
        Some(ScanFormat::Nifti) => nifti::read_axial(path),
        Some(ScanFormat::Image) => Ok(vec![read_image_slice(path, PNG16_HU_OFFSET)?]),
        None => Err(Error::Scan {
            path: path.into(),
            reason: "not a scan RepDiff reads: expected DICOM, NIfTI (.nii, .nii.gz), PNG or JPEG".into(),
        }),
    }
}

/// Writes a Hounsfield-unit slice losslessly as a 16-bit grey PNG (stored = HU + 32768, clamped).
pub fn write_hu_png(slice: &Slice, path: &Path) -> Result<()> {
    if slice.unit != Unit::Hounsfield {
        return Err(Error::Scan {
            path: path.into(),
            reason: "only Hounsfield-unit slices are stored as 16-bit".into(),
        });
    }
    let stored: Vec<u16> =
        slice.values.iter().map(|&hu| (hu.round() + PNG16_HU_OFFSET).clamp(0.0, 65535.0) as u16).collect();
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(slice.columns as u32, slice.rows as u32, stored)
        .ok_or_else(|| Error::Scan { path: path.into(), reason: "values do not match rows x columns".into() })?;
    img.save(path).map_err(|source| Error::Image { path: path.into(), source })
}

/// How a slice becomes model input channels.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Channels {
    /// One window, the grey replicated `copies` times (1 for pixel models, 3 as the paper feeds the SD VAE).
    Window { window: Window, copies: usize },
    /// Three windows stacked as R, G, B.
    Stacked([Window; 3]),
}

impl Channels {
    pub fn count(&self) -> usize {
        match self {
            Channels::Window { copies, .. } => *copies,
            Channels::Stacked(_) => 3,
        }
    }
}

/// A slice as model input: windowed (grey slices pass through), centre-cropped to a square, resized to
/// `size` x `size` with a Catmull-Rom filter, scaled to [-1, 1], channel-major.
pub fn to_model_input(slice: &Slice, channels: &Channels, size: usize) -> Result<Vec<f32>> {
    if slice.values.len() != slice.rows * slice.columns || slice.rows == 0 || slice.columns == 0 {
        return Err(Error::Data(format!(
            "a {} x {} slice has {} values",
            slice.rows,
            slice.columns,
            slice.values.len()
        )));
    }
    let windows: Vec<Window> = match channels {
        Channels::Window { window, copies: 1 | 3 } => vec![*window],
        Channels::Window { copies, .. } => {
            return Err(Error::Config(format!("a window can be replicated to 1 or 3 channels, not {copies}")));
        }
        Channels::Stacked(windows) => windows.to_vec(),
    };
    let plane = size * size;
    let mut out = Vec::with_capacity(channels.count() * plane);
    for window in &windows {
        let grey: Vec<f32> = match slice.unit {
            Unit::Hounsfield => slice.values.iter().map(|&hu| window.apply(hu)).collect(),
            Unit::Grey => slice.values.clone(),
        };
        let img = image::ImageBuffer::<image::Luma<f32>, _>::from_raw(slice.columns as u32, slice.rows as u32, grey)
            .expect("length checked above");
        let side = slice.rows.min(slice.columns) as u32;
        let cropped = image::imageops::crop_imm(
            &img,
            (slice.columns as u32 - side) / 2,
            (slice.rows as u32 - side) / 2,
            side,
            side,
        )
        .to_image();
        let resized = if side as usize == size {
            cropped
        } else {
            image::imageops::resize(&cropped, size as u32, size as u32, FilterType::CatmullRom)
        };
        out.extend(resized.into_raw().into_iter().map(|v| v.clamp(0.0, 1.0) * 2.0 - 1.0));
    }
    if let Channels::Window { copies: 3, .. } = channels {
        let first = out.clone();
        out.extend_from_slice(&first);
        out.extend_from_slice(&first);
    }
    Ok(out)
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

    fn hu_slice(rows: usize, columns: usize, values: Vec<f32>) -> Slice {
        Slice { rows, columns, values, unit: Unit::Hounsfield, spacing_mm: None }
    }

    #[test]
    fn model_input_windows_edge_values_exactly_and_stacks_channels() {
        // Brain window L40/W80: 0 HU and below -> -1, 40 -> 0, 80 and above -> +1.
        let slice = hu_slice(2, 2, vec![-1000.0, 0.0, 40.0, 80.0]);
        let brain = Channels::Window { window: Window::BRAIN, copies: 1 };
        assert_eq!(to_model_input(&slice, &brain, 2).unwrap(), vec![-1.0, -1.0, 0.0, 1.0]);
        let replicated = to_model_input(&slice, &Channels::Window { window: Window::BRAIN, copies: 3 }, 2).unwrap();
        assert_eq!(replicated, [[-1.0, -1.0, 0.0, 1.0]; 3].concat());
        let stacked = Channels::Stacked([Window::BRAIN, Window::SUBDURAL, Window::BONE]);
        let rgb = to_model_input(&slice, &stacked, 2).unwrap();
        // Subdural L80/W200 spans [-20, 180]: 40 HU sits at 0.3 -> -0.4. Bone L600/W2800 spans [-800, 2000].
        let bone = |hu: f32| ((hu + 800.0) / 2800.0).clamp(0.0, 1.0) * 2.0 - 1.0;
        let expected_subdural = [-1.0, 0.1 * 2.0 - 1.0, 0.3 * 2.0 - 1.0, 0.5 * 2.0 - 1.0];
        for (got, want) in rgb[4..8].iter().zip(expected_subdural) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        for (got, hu) in rgb[8..].iter().zip([-1000.0, 0.0, 40.0, 80.0]) {
            assert!((got - bone(hu)).abs() < 1e-6);
        }
        assert!(to_model_input(&slice, &Channels::Window { window: Window::BRAIN, copies: 2 }, 2).is_err());
    }

    #[test]
    fn model_input_centre_crops_and_resizes() {
        // A 2 x 4 slice: the centre 2 x 2 square is columns 1..3.
        let slice = hu_slice(2, 4, vec![80.0, 0.0, 80.0, 0.0, 80.0, 0.0, 80.0, 0.0]);
        let brain = Channels::Window { window: Window::BRAIN, copies: 1 };
        assert_eq!(to_model_input(&slice, &brain, 2).unwrap(), vec![-1.0, 1.0, -1.0, 1.0]);
        // Resizing a uniform slice keeps it uniform; the output has size x size values.
        let flat = hu_slice(8, 8, vec![40.0; 64]);
        let resized = to_model_input(&flat, &brain, 3).unwrap();
        assert_eq!(resized.len(), 9);
        assert!(resized.iter().all(|v| v.abs() < 1e-5), "{resized:?}");
        let grey = Slice { unit: Unit::Grey, ..hu_slice(1, 1, vec![0.25]) };
        assert_eq!(to_model_input(&grey, &brain, 1).unwrap(), vec![-0.5], "grey slices are already windowed");
    }
}
