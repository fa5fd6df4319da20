//! NIfTI-1 CT volumes (`.nii`, `.nii.gz`) as axial slices in the orientation radiologists read them, the
//! same as a DICOM axial series: rows run anterior to posterior, columns patient right to left, slices
//! inferior to superior. The voxel-to-world affine (sform, else qform) decides which voxel axis is which,
//! so volumes stored in any axis order or direction give the same slices. Values are scaled by
//! `scl_slope`/`scl_inter` (Hounsfield units for CT).

use std::path::Path;

use nifti::{NiftiHeader, NiftiObject, NiftiVolume, RandomAccessNiftiVolume, ReaderOptions};

use super::{Slice, Unit};
use crate::{Error, Result};

fn scan_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Scan { path: path.into(), reason: reason.into() }
}

/// The 3x3 linear part of the voxel-to-world (RAS+) affine.
fn linear_affine(header: &NiftiHeader) -> [[f64; 3]; 3] {
    if header.sform_code > 0 {
        let rows = [header.srow_x, header.srow_y, header.srow_z];
        return rows.map(|r| [r[0] as f64, r[1] as f64, r[2] as f64]);
    }
    let pixdim = [header.pixdim[1] as f64, header.pixdim[2] as f64, header.pixdim[3] as f64];
    if header.qform_code > 0 {
        let (b, c, d) = (header.quatern_b as f64, header.quatern_c as f64, header.quatern_d as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let rotation = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        // pixdim[0] (qfac) = -1 flips the third voxel axis.
        let qfac = if header.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [pixdim[0], pixdim[1], pixdim[2] * qfac];
        return rotation.map(|row| [row[0] * scale[0], row[1] * scale[1], row[2] * scale[2]]);
    }
    // No orientation at all (ANALYZE-style): NIfTI's method 1 takes voxel axes as world axes.
    [[pixdim[0], 0.0, 0.0], [0.0, pixdim[1], 0.0], [0.0, 0.0, pixdim[2]]]
}

/// For each world axis (R, A, S): the voxel axis closest to it and whether it runs the same way.
fn axis_mapping(affine: &[[f64; 3]; 3]) -> Option<[(usize, bool); 3]> {
    let mut mapping = [(usize::MAX, true); 3];
    for voxel_axis in 0..3 {
        let column = affine.map(|row| row[voxel_axis]);
        let world_axis = (0..3).max_by(|&a, &b| column[a].abs().total_cmp(&column[b].abs()))?;
        if column[world_axis] == 0.0 || mapping[world_axis].0 != usize::MAX {
            return None;
        }
        mapping[world_axis] = (voxel_axis, column[world_axis] > 0.0);
    }
    Some(mapping)
}

/// The most voxel data a gzipped volume may claim per compressed byte. Deflate can reach ~1032:1 on
/// constant data, but CT volumes compress about 2-6:1 (noise in every voxel of the head, air around it);
/// a 0.5 MB file that claims 500 MB is a bomb, and reading it took 1.5 GB of memory.
const MAX_GZIP_RATIO: u64 = 64;
/// The most voxel data a volume may hold: a CT of 512 x 512 x 1000 slices of 16 bits is 500 MiB. Reading
/// one takes about three times its size in memory; a 0.5 MB gzip bomb claiming a gigabyte is refused here.
pub const MAX_VOLUME_BYTES: u64 = 512 << 20;

/// Refuses a header whose volume cannot be in the file, before anything is allocated for it.
fn check_size(path: &Path) -> Result<()> {
    let header =
        NiftiHeader::from_file(path).map_err(|e| scan_error(path, format!("not a readable NIfTI-1 file: {e}")))?;
    let file_len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let rank = (header.dim[0] as usize).clamp(1, 7);
    let voxels = header.dim[1..=rank].iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let bytes = voxels.and_then(|n| n.checked_mul((header.bitpix.max(8) as u64) / 8));
    let gzipped = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let available = if gzipped {
        file_len.saturating_mul(MAX_GZIP_RATIO)
    } else {
        file_len.saturating_sub(header.vox_offset as u64)
    };
    match bytes {
        Some(bytes) if bytes > MAX_VOLUME_BYTES => Err(scan_error(
            path,
            format!(
                "the volume holds {} MiB of voxels, more than the {} MiB a volume may have here",
                bytes >> 20,
                MAX_VOLUME_BYTES >> 20
            ),
        )),
        Some(bytes) if bytes <= available => Ok(()),
        _ => Err(scan_error(
            path,
            format!(
                "the header claims {:?} voxels of {} bits, more than the file can hold",
                &header.dim[1..=rank],
                header.bitpix
            ),
        )),
    }
}

/// Reads a 3-D volume as axial slices (inferior first).
pub fn read_axial(path: &Path) -> Result<Vec<Slice>> {
    check_size(path)?;
    let object = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| scan_error(path, format!("not a readable NIfTI-1 file: {e}")))?;
    let header = object.header();
    let volume = object.volume();
    let dims = volume.dim();
    let extents: [usize; 3] = match dims {
        [x, y, z] => [*x as usize, *y as usize, *z as usize],
        [x, y, z, rest @ ..] if rest.iter().all(|&d| d == 1) => [*x as usize, *y as usize, *z as usize],
        [_, _] => return Err(scan_error(path, "a 2-D NIfTI image: expected a 3-D volume")),
        other => {
            return Err(scan_error(
                path,
                format!("a {}-D NIfTI image ({other:?}): expected a 3-D volume", other.len()),
            ));
        }
    };
    let mapping = axis_mapping(&linear_affine(header)).ok_or_else(|| {
        scan_error(path, "the voxel-to-world affine is degenerate (two voxel axes along one world axis)")
    })?;
    let [(r_axis, r_up), (a_axis, a_up), (s_axis, s_up)] = mapping;
    let (columns, rows, count) = (extents[r_axis], extents[a_axis], extents[s_axis]);
    let spacing = {
        let pixdim = |axis: usize| header.pixdim[axis + 1].abs();
        let (row, column) = (pixdim(a_axis), pixdim(r_axis));
        (row > 0.0 && column > 0.0).then_some((row, column))
    };
    // Voxel index along an axis for a position counted along its world axis in the positive direction.
    let along = |extent: usize, positive: bool, i: usize| if positive { i } else { extent - 1 - i };
    let mut slices = Vec::with_capacity(count);
    let mut coords = [0u16; 3];
    for k in 0..count {
        let mut values = Vec::with_capacity(rows * columns);
        for row in 0..rows {
            for column in 0..columns {
                // Rows go toward posterior (decreasing A), columns toward patient left (decreasing R).
                coords[r_axis] = along(columns, r_up, columns - 1 - column) as u16;
                coords[a_axis] = along(rows, a_up, rows - 1 - row) as u16;
                coords[s_axis] = along(count, s_up, k) as u16;
                let value = volume.get_f32(&coords).map_err(|e| scan_error(path, format!("voxel {coords:?}: {e}")))?;
                values.push(value);
            }
        }
        slices.push(Slice { rows, columns, values, unit: Unit::Hounsfield, spacing_mm: spacing });
    }
    Ok(slices)
}
