//! Scans into a dataset: one file through the engine's import (DICOM de-identified before anything is
//! kept), then its slices into the store and the `scans` table. Shared by the upload endpoint and the
//! `import` job kind.

use std::path::{Path, PathBuf};

use repdiff_engine::dataset::{Labels, import};
use repdiff_engine::imaging::deid::DeidKey;
use repdiff_engine::manifest::{Manifest, SliceRecord};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What one file became: its slices (record, PNG bytes, width, height, in Hounsfield units) and its
/// de-identified DICOM.
pub struct Imported {
    records: Vec<(SliceRecord, Vec<u8>, u32, u32, bool)>,
    dicom: Option<Vec<u8>>,
    format: &'static str,
}

/// Runs the engine's import on one file (blocking; works in a folder beside it). The error is why the
/// file was refused.
pub fn import_file(file: &Path, labels: Labels, deid_key: &DeidKey) -> Result<Imported, String> {
    let out = file.with_extension("import");
    let result = import_into(file, &labels, deid_key, &out);
    let _ = std::fs::remove_dir_all(&out);
    result
}

fn import_into(file: &Path, labels: &Labels, deid_key: &DeidKey, out: &Path) -> Result<Imported, String> {
    let report = import(&[file.to_path_buf()], labels, deid_key, out).map_err(|e| e.to_string())?;
    if let Some((_, reason)) = report.refused.first()
        && report.slices == 0
    {
        return Err(reason.clone());
    }
    let manifest = Manifest::read_csv(&out.join("manifest.csv")).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for record in manifest.records {
        let bytes = std::fs::read(out.join(&record.file)).map_err(|e| e.to_string())?;
        let image = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
        let hounsfield = matches!(image, image::DynamicImage::ImageLuma16(_));
        records.push((record, bytes, image.width(), image.height(), hounsfield));
    }
    let dicom = first_file(&out.join("dicom")).map(std::fs::read).transpose().map_err(|e| e.to_string())?;
    let format = match repdiff_engine::imaging::ScanFormat::detect(file) {
        Some(repdiff_engine::imaging::ScanFormat::Dicom) => "dicom",
        Some(repdiff_engine::imaging::ScanFormat::Nifti) => "nifti",
        _ => "image",
    };
    Ok(Imported { records, dicom, format })
}

fn first_file(dir: &Path) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    entries.into_iter().find_map(|p| if p.is_dir() { first_file(&p) } else { Some(p) })
}

/// What [`store`] added.
pub struct Stored {
    pub ids: Vec<i64>,
    /// Slices already in the dataset (same content).
    pub duplicates: usize,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores an imported file's slices (content-addressed) and records them in `dataset`.
pub async fn store(
    pool: &PgPool,
    storage: &Storage,
    dataset: i64,
    source: &str,
    imported: Imported,
) -> Result<Stored, StoreError> {
    let dicom_key = match &imported.dicom {
        Some(bytes) => {
            let key = format!("datasets/{dataset}/dicom/{}.dcm", hex(&Sha256::digest(bytes)[..12]));
            storage.put_bytes(&key, bytes.clone()).await?;
            Some(key)
        }
        None => None,
    };
    let slices = imported.records.len();
    let mut stored = Stored { ids: Vec::new(), duplicates: 0 };
    for (k, (record, bytes, width, height, hounsfield)) in imported.records.into_iter().enumerate() {
        let digest = hex(&Sha256::digest(&bytes));
        let key = format!("datasets/{dataset}/slices/{}.png", &digest[..32]);
        storage.put_bytes(&key, bytes).await?;
        let m = record.markers;
        let id = sqlx::query_scalar!(
            r#"INSERT INTO scans (dataset_id, source_name, slice_index, format, rows, columns, unit, key, dicom_key, site,
                                  hypodensity, margin_irregularity, blend_sign, fluid_level, sha256)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
               ON CONFLICT (dataset_id, sha256) DO NOTHING RETURNING id"#,
            dataset,
            source,
            if slices == 1 { 0 } else { k as i32 },
            imported.format,
            height as i32,
            width as i32,
            if hounsfield { "hounsfield" } else { "grey" },
            key,
            dicom_key,
            record.site as i32,
            m.hypodensity,
            m.margin_irregularity,
            m.blend_sign,
            m.fluid_level,
            digest
        )
        .fetch_optional(pool)
        .await?;
        match id {
            Some(id) => stored.ids.push(id),
            None => stored.duplicates += 1,
        }
    }
    Ok(stored)
}
