//! Scans into a dataset: one file through the engine's import (DICOM de-identified before anything is
//! kept), then its slices into the store and the `scans` table. Shared by the upload endpoint and the
//! `import` job kind.

use std::path::{Path, PathBuf};

use repdiff_engine::dataset::{Labels, import};
use repdiff_engine::imaging::deid::DeidKey;
use repdiff_engine::manifest::{Manifest, Origin, SliceRecord};
use repdiff_engine::phantom::Markers;
use sha2::{Digest, Sha256};

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
/// file was refused, naming it `shown_as` (never the server's path of it).
pub fn import_file(file: &Path, shown_as: &str, labels: Labels, deid_key: &DeidKey) -> Result<Imported, String> {
    let out = file.with_extension("import");
    let result = import_into(file, &labels, deid_key, &out);
    let _ = std::fs::remove_dir_all(&out);
    result.map_err(|reason| {
        let reason = reason.replace(&out.display().to_string(), shown_as);
        reason.replace(&file.display().to_string(), shown_as)
    })
}

/// The engine's import of one DICOM file held in memory (an upload), named `name`: it is de-identified
/// before anything of it is written (to `work`, a folder of its own that is removed after).
pub fn import_dicom_bytes(
    name: &str,
    bytes: &[u8],
    labels: Labels,
    deid_key: &DeidKey,
    work: &Path,
) -> Result<Imported, String> {
    let out = work.join("import");
    let result = repdiff_engine::dataset::import_dicom_bytes(name, bytes, &labels, deid_key, &out)
        .map_err(|e| e.to_string())
        .and_then(|report| collect(report, &out, "dicom"));
    let _ = std::fs::remove_dir_all(&out);
    result.map_err(|reason| reason.replace(&out.display().to_string(), name))
}

fn import_into(file: &Path, labels: &Labels, deid_key: &DeidKey, out: &Path) -> Result<Imported, String> {
    let report = import(&[file.to_path_buf()], labels, deid_key, out).map_err(|e| e.to_string())?;
    let format = match repdiff_engine::imaging::ScanFormat::detect(file) {
        Some(repdiff_engine::imaging::ScanFormat::Dicom) => "dicom",
        Some(repdiff_engine::imaging::ScanFormat::Nifti) => "nifti",
        _ => "image",
    };
    collect(report, out, format)
}

/// What an import into `out` made: its slices and de-identified DICOM, or why the file was refused.
fn collect(
    report: repdiff_engine::dataset::ImportReport,
    out: &Path,
    format: &'static str,
) -> Result<Imported, String> {
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

/// How a file's scans are named: by a pseudonym (the default), or by the uploaded file's name in a dataset
/// that keeps names.
pub enum Naming<'a> {
    Pseudonym,
    Kept(&'a str),
}

/// The objects a batch of scans wrote that were not in the store before it: deleted again (in the
/// background) when the batch is dropped without [`NewObjects::keep`], as when its upload fails or its
/// client goes away, so a batch that is not recorded leaves nothing behind.
pub struct NewObjects {
    storage: Storage,
    keys: Vec<String>,
}

impl NewObjects {
    pub fn new(storage: &Storage) -> Self {
        NewObjects { storage: storage.clone(), keys: Vec::new() }
    }

    /// Stores `bytes` under `key` unless an object is there already (content-addressed keys: the same
    /// content), remembering the objects it made.
    async fn put(&mut self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        if self.storage.size(key).await?.is_none() {
            self.storage.put_bytes(key, bytes).await?;
            self.keys.push(key.to_string());
        }
        Ok(())
    }

    /// The batch was recorded: its objects stay.
    pub fn keep(mut self) {
        self.keys.clear();
    }
}

impl Drop for NewObjects {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let (storage, keys) = (self.storage.clone(), std::mem::take(&mut self.keys));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for key in keys {
                    if let Err(e) = storage.delete(&key).await {
                        tracing::warn!("removing {key} of an unrecorded upload: {e}");
                    }
                }
            });
        }
    }
}

/// Stores an imported file's slices (content-addressed) and records them in `dataset`, within the caller's
/// transaction `db`; the objects it makes go to `objects`.
pub async fn store(
    db: &mut sqlx::PgConnection,
    objects: &mut NewObjects,
    dataset: i64,
    naming: Naming<'_>,
    imported: Imported,
) -> Result<Stored, StoreError> {
    let dicom_key = match &imported.dicom {
        Some(bytes) => {
            let key = format!("datasets/{dataset}/dicom/{}.dcm", hex(&Sha256::digest(bytes)[..12]));
            objects.put(&key, bytes.clone()).await?;
            Some(key)
        }
        None => None,
    };
    let slices = imported.records.len();
    // One name for the slices of one file: the pseudonym comes from the first slice's content, so the same
    // file uploaded again gets the same one, and nothing of the original name survives.
    let source = match naming {
        Naming::Kept(name) => name.to_string(),
        Naming::Pseudonym => match imported.records.first() {
            Some((_, bytes, ..)) => format!("scan-{}", &hex(&Sha256::digest(bytes))[..12]),
            None => "scan".to_string(),
        },
    };
    let mut stored = Stored { ids: Vec::new(), duplicates: 0 };
    for (k, (record, bytes, width, height, hounsfield)) in imported.records.into_iter().enumerate() {
        let digest = hex(&Sha256::digest(&bytes));
        let key = format!("datasets/{dataset}/slices/{}.png", &digest[..32]);
        objects.put(&key, bytes).await?;
        let (m, origin) = (record.markers, record.origin);
        let id = sqlx::query_scalar!(
            r#"INSERT INTO scans (dataset_id, source_name, slice_index, format, rows, columns, unit, key, dicom_key, site,
                                  hypodensity, margin_irregularity, blend_sign, fluid_level, sha256,
                                  patient, study, series, instance, position_mm, labelled)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
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
            digest,
            origin.patient,
            origin.study,
            origin.series,
            origin.instance,
            origin.position,
            !record.unlabelled
        )
        .fetch_optional(&mut *db)
        .await?;
        match id {
            Some(id) => stored.ids.push(id),
            None => stored.duplicates += 1,
        }
    }
    Ok(stored)
}

/// A dataset's slice as a split reads it: its id, its object in the store, and its site, markers and
/// origin (named `slices/ID.png`, as a job lays the slices out).
#[derive(Clone, Debug)]
pub struct StoredSlice {
    pub id: i64,
    pub key: String,
    pub record: SliceRecord,
}

/// A dataset's slices in the order every split reads them (by id).
pub async fn slices_of(db: &sqlx::PgPool, dataset: i64) -> sqlx::Result<Vec<StoredSlice>> {
    let rows = sqlx::query!(
        r#"SELECT id, key, site, hypodensity, margin_irregularity, blend_sign, fluid_level,
                  patient, study, series, instance, position_mm, labelled
               FROM scans WHERE dataset_id = $1 ORDER BY id"#,
        dataset
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredSlice {
            id: r.id,
            key: r.key,
            record: SliceRecord {
                file: format!("slices/{}.png", r.id),
                site: r.site.max(0) as usize,
                markers: Markers {
                    hypodensity: r.hypodensity,
                    margin_irregularity: r.margin_irregularity,
                    blend_sign: r.blend_sign,
                    fluid_level: r.fluid_level,
                },
                origin: Origin {
                    patient: r.patient,
                    study: r.study,
                    series: r.series,
                    instance: r.instance,
                    position: r.position_mm,
                },
                unlabelled: !r.labelled,
            },
        })
        .collect())
}

/// The first of `splits`' parts of `dataset` (all its slices when `splits` is empty) with unlabelled slices:
/// how many, of how many, and the split; `None` when every slice they hold is labelled. The dataset is
/// read once for all the splits; the inner error is why a split cannot be made.
pub async fn unlabelled_in(
    db: &sqlx::PgPool,
    dataset: i64,
    splits: &[repdiff_api::jobs::SplitSpec],
) -> sqlx::Result<Result<Option<(usize, usize, Option<repdiff_api::jobs::SplitSpec>)>, String>> {
    let manifest = Manifest { records: slices_of(db, dataset).await?.into_iter().map(|s| s.record).collect() };
    let count = |slices: &[&SliceRecord]| slices.iter().filter(|r| r.unlabelled).count();
    if splits.is_empty() {
        let all: Vec<&SliceRecord> = manifest.records.iter().collect();
        return Ok(Ok(Some((count(&all), all.len(), None)).filter(|(n, ..)| *n > 0)));
    }
    for split in splits {
        let unit = crate::jobs::split_unit(split.unit);
        let parts = match manifest.split(unit, split.downstream_site, repdiff_engine::manifest::PAPER_SPLIT, split.seed)
        {
            Ok(parts) => parts,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let part = crate::jobs::part(split.reads());
        let in_part: Vec<&SliceRecord> =
            manifest.records.iter().zip(&parts).filter(|(_, p)| **p == part).map(|(r, _)| r).collect();
        if count(&in_part) > 0 {
            return Ok(Ok(Some((count(&in_part), in_part.len(), Some(split.clone())))));
        }
    }
    Ok(Ok(None))
}
