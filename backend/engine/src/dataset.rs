//! Importing scans into a RepDiff dataset folder:
//!
//! ```text
//! dataset/
//!   manifest.csv          file,site,four markers,hematoma (the format `repdiff split` reads)
//!   slices/*.png          one slice per file: 16-bit Hounsfield units + 32768, or 8-bit grey as given
//!   dicom/<study>/<series>/<instance>.dcm   the DICOM inputs, de-identified (PS3.15 basic profile)
//! ```
//!
//! Labels come from a CSV in the manifest's format whose `file` column names the input files (relative to
//! the folder given, or by file name); `name#k` labels only slice `k` (0-based, inferior first) of a
//! multi-slice file. Stored names derive from pseudonymous UIDs, never from the input names, which often
//! carry patient names. A file that cannot be read or has no label is refused with its reason; the rest
//! of the import goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::imaging::deid::{DeidKey, DeidReport, deidentify};
use crate::imaging::{self, ScanFormat, Slice, Unit, dicom};
use crate::manifest::{Manifest, Origin, SliceRecord};
use crate::{Error, Result};

/// Labels by input name: `file` or `file#k`.
pub struct Labels {
    by_name: HashMap<String, SliceRecord>,
    /// For slices with no row (uploads labelled later); `None` refuses them.
    default: Option<SliceRecord>,
}

impl Labels {
    pub fn from_manifest(manifest: Manifest) -> Self {
        let by_name = manifest.records.into_iter().map(|r| (r.file.replace('\\', "/"), r)).collect();
        Labels { by_name, default: None }
    }

    /// Slices without a row get `site` and are unlabelled instead of being refused.
    pub fn or_unlabelled(mut self, site: usize) -> Self {
        self.default = Some(SliceRecord { site, unlabelled: true, ..SliceRecord::default() });
        self
    }

    /// The row for slice `slice` of a file known by `names`: its own `name#k` row, else the file's row.
    fn find(&self, names: &[String], slice: usize) -> Option<&SliceRecord> {
        let indexed = names.iter().find_map(|name| self.by_name.get(&format!("{name}#{slice}")));
        indexed.or_else(|| names.iter().find_map(|name| self.by_name.get(name))).or(self.default.as_ref())
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub files: usize,
    pub slices: usize,
    pub dicom_files: usize,
    pub deid: DeidReport,
    /// Inputs (or input slices) left out, with the reason.
    pub refused: Vec<(PathBuf, String)>,
}

const METADATA_EXTENSIONS: &[&str] = &[".csv", ".json", ".txt", ".md"];

/// Every file under `inputs` (folders walked recursively, in name order) with the names labels may use.
fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<String>)>> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, Vec<String>)>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if path.is_dir() {
                walk(&path, root, out)?;
            } else if name.starts_with('.') || METADATA_EXTENSIONS.iter().any(|ext| name.ends_with(ext)) {
                // Label files, notes and hidden files sit beside scans; they are not scans.
            } else {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                out.push((path, vec![relative, file_name]));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, input, &mut files)?;
        } else if input.is_file() {
            let name = input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            files.push((input.clone(), vec![input.to_string_lossy().replace('\\', "/"), name]));
        } else {
            return Err(Error::Data(format!("{} does not exist", input.display())));
        }
    }
    Ok(files)
}

fn short(uid: &str) -> String {
    // The pseudonymous UIDs are long decimal numbers; their last 12 digits name files well enough, and the
    // full UID stays inside the stored DICOM.
    let digits: String = uid.chars().filter(char::is_ascii_digit).collect();
    digits[digits.len().saturating_sub(12)..].to_string()
}

/// Imports `inputs` into the dataset folder `out` (created if needed; an existing manifest is extended).
pub fn import(inputs: &[PathBuf], labels: &Labels, key: &DeidKey, out: &Path) -> Result<ImportReport> {
    let slices_dir = out.join("slices");
    std::fs::create_dir_all(&slices_dir).map_err(|e| Error::io(&slices_dir, e))?;
    let manifest_path = out.join("manifest.csv");
    let mut manifest = if manifest_path.exists() { Manifest::read_csv(&manifest_path)? } else { Manifest::default() };
    let mut report = ImportReport::default();
    for (path, names) in collect_inputs(inputs)? {
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let read: Result<(Vec<Slice>, String, Option<DeidentifiedDicom>)> = match ScanFormat::detect(&path) {
            Some(ScanFormat::Dicom) => {
                read_dicom(&path, key).map(|(slices, dicom)| (slices, dicom.base_name(), Some(dicom)))
            }
            Some(ScanFormat::Nifti) => imaging::nifti::read_axial(&path).map(|s| (s, stem.replace(".nii", ""), None)),
            Some(ScanFormat::Image) => {
                imaging::read_image_slice(&path, imaging::PNG16_HU_OFFSET).map(|s| (vec![s], stem, None))
            }
            None => Err(Error::Scan { path: path.clone(), reason: "not DICOM, NIfTI, PNG or JPEG".into() }),
        };
        add_file(&mut report, &mut manifest, out, &path, &names, read, labels, key)?;
    }
    if !manifest.records.is_empty() {
        manifest.write_csv(&manifest_path)?;
    }
    Ok(report)
}

/// [`import`] of one DICOM file held in memory, named `name` (as a labels row names it): its identifying
/// data are removed before anything of it is written to `out`.
pub fn import_dicom_bytes(
    name: &str,
    bytes: &[u8],
    labels: &Labels,
    key: &DeidKey,
    out: &Path,
) -> Result<ImportReport> {
    let slices_dir = out.join("slices");
    std::fs::create_dir_all(&slices_dir).map_err(|e| Error::io(&slices_dir, e))?;
    let manifest_path = out.join("manifest.csv");
    let mut manifest = if manifest_path.exists() { Manifest::read_csv(&manifest_path)? } else { Manifest::default() };
    let mut report = ImportReport::default();
    let path = PathBuf::from(name);
    let read = dicom::open_bytes(bytes, &path)
        .and_then(|object| deidentified(object, &path, key))
        .map(|(slices, dicom)| (slices, dicom.base_name(), Some(dicom)));
    add_file(&mut report, &mut manifest, out, &path, &[name.to_string()], read, labels, key)?;
    if !manifest.records.is_empty() {
        manifest.write_csv(&manifest_path)?;
    }
    Ok(report)
}

/// One read file into `out`: its de-identified DICOM (if any), a PNG per slice a label row covers, their
/// manifest rows with each slice's origin; refusals into the report.
#[allow(clippy::too_many_arguments)]
fn add_file(
    report: &mut ImportReport,
    manifest: &mut Manifest,
    out: &Path,
    path: &Path,
    names: &[String],
    read: Result<(Vec<Slice>, String, Option<DeidentifiedDicom>)>,
    labels: &Labels,
    key: &DeidKey,
) -> Result<()> {
    let path = path.to_path_buf();
    let (slices, base, dicom) = match read {
        Ok(read) => read,
        Err(Error::Scan { reason, .. }) => {
            report.refused.push((path, reason));
            return Ok(());
        }
        Err(e) => {
            report.refused.push((path, e.to_string()));
            return Ok(());
        }
    };
    let count = slices.len();
    let file_origin = file_origin(&slices, dicom.as_ref(), key);
    let labelled: Vec<(usize, Slice, &SliceRecord)> = slices
        .into_iter()
        .enumerate()
        .filter_map(|(k, slice)| match labels.find(names, k) {
            Some(label) => Some((k, slice, label)),
            None => {
                let name = if count == 1 { names[0].clone() } else { format!("{}#{k}", names[0]) };
                report.refused.push((path.clone(), format!("no label row for {name}")));
                None
            }
        })
        .collect();
    if labelled.is_empty() {
        return Ok(());
    }
    report.files += 1;
    if let Some(dicom) = dicom {
        dicom.store(out)?;
        report.dicom_files += 1;
        report.deid.removed += dicom.report.removed;
        report.deid.emptied += dicom.report.emptied;
        report.deid.replaced += dicom.report.replaced;
    }
    for (k, slice, label) in labelled {
        let file = if count == 1 { format!("slices/{base}.png") } else { format!("slices/{base}_{k:03}.png") };
        let target = out.join(&file);
        match slice.unit {
            Unit::Hounsfield => imaging::write_hu_png(&slice, &target)?,
            Unit::Grey => {
                let grey = slice.values.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
                let img = image::GrayImage::from_raw(slice.columns as u32, slice.rows as u32, grey)
                    .ok_or_else(|| Error::Data(format!("{}: bad slice size", path.display())))?;
                img.save(&target).map_err(|source| Error::Image { path: target.clone(), source })?;
            }
        }
        manifest.records.retain(|r| r.file != file);
        let origin = slice_origin(&file_origin, &label.origin, k, count, key);
        manifest.records.push(SliceRecord {
            file,
            site: label.site,
            markers: label.markers,
            origin,
            unlabelled: label.unlabelled,
        });
        report.slices += 1;
    }
    Ok(())
}

/// What a file itself says of where its slices come from: a DICOM's (de-identified) patient, study,
/// series, instance number and position; a NIfTI volume is one series of its own, named by a keyed
/// pseudonym of its content (its file name may name the patient).
fn file_origin(slices: &[Slice], dicom: Option<&DeidentifiedDicom>, key: &DeidKey) -> Origin {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match dicom {
        Some(dicom) => {
            let id = &dicom.identity;
            Origin {
                patient: some(&id.patient_id),
                study: some(&id.study_uid),
                series: some(&id.series_uid),
                instance: id.instance_number,
                position: id.position_mm,
            }
        }
        None if slices.len() > 1 => {
            use sha2::{Digest, Sha256};
            let mut hash = Sha256::new();
            for slice in slices {
                hash.update(slice.values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
            }
            let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            Origin { series: Some(key.pseudonym_uid(&format!("volume:{digest}"))), ..Origin::default() }
        }
        None => Origin::default(),
    }
}

/// Slice `k` of `count`'s origin: what its file says, then what its labels row says (ids given there are
/// stored as keyed pseudonyms: the same key maps a labels file's patient id and a DICOM's PatientID alike).
/// The slices of a multi-slice file are numbered in their file's order.
fn slice_origin(file: &Origin, given: &Origin, k: usize, count: usize, key: &DeidKey) -> Origin {
    let multi = count > 1;
    Origin {
        patient: file.patient.clone().or_else(|| given.patient.as_deref().map(|p| key.pseudonym_patient(p))),
        study: file.study.clone().or_else(|| given.study.as_deref().map(|u| key.pseudonym_uid(u))),
        series: file.series.clone().or_else(|| given.series.as_deref().map(|u| key.pseudonym_uid(u))),
        instance: if multi { Some(k as i64 + 1) } else { file.instance.or(given.instance) },
        position: if multi { None } else { file.position.or(given.position) },
    }
}

/// A DICOM input after de-identification, not yet stored.
struct DeidentifiedDicom {
    object: dicom_object::DefaultDicomObject,
    identity: dicom::SliceIdentity,
    report: DeidReport,
}

impl DeidentifiedDicom {
    fn base_name(&self) -> String {
        let (series, instance) = (short(&self.identity.series_uid), short(&self.identity.instance_uid));
        match self.identity.instance_number {
            Some(number) => format!("{series}_{number:05}_{instance}"),
            None => format!("{series}_{instance}"),
        }
    }

    /// Writes the file as `dicom/<study>/<series>/<instance>.dcm` under `out`.
    fn store(&self, out: &Path) -> Result<()> {
        let identity = &self.identity;
        let dir = out.join("dicom").join(short(&identity.study_uid)).join(short(&identity.series_uid));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let target = dir.join(format!("{}.dcm", short(&identity.instance_uid)));
        self.object
            .write_to_file(&target)
            .map_err(|e| Error::Scan { path: target.clone(), reason: format!("writing: {e}") })
    }
}

/// Reads a DICOM input's slices (refusing what RepDiff cannot use) and de-identifies it.
fn read_dicom(path: &Path, key: &DeidKey) -> Result<(Vec<Slice>, DeidentifiedDicom)> {
    deidentified(dicom::open(path)?, path, key)
}

/// The slices of a read DICOM object and the object de-identified.
fn deidentified(
    mut object: dicom_object::DefaultDicomObject,
    path: &Path,
    key: &DeidKey,
) -> Result<(Vec<Slice>, DeidentifiedDicom)> {
    let (slices, _) = dicom::read_object(&object, path)?;
    let report = deidentify(&mut object, key).map_err(|e| match e {
        Error::Scan { reason, .. } => Error::Scan { path: path.into(), reason },
        other => other,
    })?;
    let identity = dicom::identity(&object);
    Ok((slices, DeidentifiedDicom { object, identity, report }))
}
