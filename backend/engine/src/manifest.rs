//! Dataset manifests (per-slice site, the four hematoma markers, and where the slice comes from: patient,
//! study, series) and the paper's split: every site but the downstream one is pre-training data; the
//! downstream site is split train/validation/test 8:1:1, stratified by the binary label and seeded, so a
//! split is reproducible from (manifest, unit, site, seed). The unit is the patient by default, so that the
//! nearly identical neighbouring slices of one patient never land in two parts; the paper split per slice,
//! which stays available as [`SplitUnit::Slice`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::phantom::Markers;
use crate::rng::Rng;
use crate::{Error, Result};

/// The paper's split of the downstream site's slices: train, validation, test (per label).
pub const PAPER_SPLIT: [f64; 3] = [0.8, 0.1, 0.1];

/// One slice of a manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub file: String,
    pub site: usize,
    #[serde(flatten)]
    pub markers: Markers,
    #[serde(flatten)]
    pub origin: Origin,
    /// No label was given (an upload without a labels row): the markers say nothing. Such a slice serves
    /// unconditional and representation pre-training; a job that learns or scores labels refuses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlabelled: bool,
}

/// Where a slice comes from: its patient, study and series (pseudonymous ids once imported: DICOM's are
/// pseudonymised by de-identification, a labels file's by the import), its number in the series and its
/// position along the patient's axis in mm. All optional: a slice without them is a patient of its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<f64>,
}

impl Origin {
    pub fn is_empty(&self) -> bool {
        *self == Origin::default()
    }

    /// What keeps slices together in a patient split: the patient, else the study, else the series.
    pub fn group(&self) -> Option<&str> {
        self.patient.as_deref().or(self.study.as_deref()).or(self.series.as_deref())
    }
}

/// What a split keeps together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitUnit {
    /// All slices of one patient go to one part (slices without a patient: their study's, else their
    /// series', else their own). The default: neighbouring slices of one patient are nearly identical, so a
    /// per-slice split measures memory, not generalisation.
    #[default]
    Patient,
    /// The paper's split: each slice on its own; slices of one patient may be in train and test.
    Slice,
}

impl SplitUnit {
    pub fn name(self) -> &'static str {
        match self {
            SplitUnit::Patient => "patient",
            SplitUnit::Slice => "slice",
        }
    }

    /// The sentence a report made from a split of this unit carries.
    pub fn caveat(self) -> &'static str {
        match self {
            SplitUnit::Patient => "split by patient: no patient has slices in two parts",
            SplitUnit::Slice => {
                "split by slice (the paper's): slices of one patient may be in both training and test, which inflates every score"
            }
        }
    }
}

impl SliceRecord {
    /// The binary label: hematoma = any marker.
    pub fn hematoma(&self) -> bool {
        self.markers.any()
    }
}

/// The CSV columns: `file,site,hypodensity,margin_irregularity,blend_sign,fluid_level[,hematoma]` with flags
/// written 0/1 (or true/false). A `hematoma` column, when present, must agree with the markers.
#[derive(Deserialize)]
struct Row {
    file: String,
    site: usize,
    hypodensity: Flag,
    margin_irregularity: Flag,
    blend_sign: Flag,
    fluid_level: Flag,
    hematoma: Option<Flag>,
    patient: Option<String>,
    study: Option<String>,
    series: Option<String>,
    instance: Option<i64>,
    position: Option<f64>,
    /// Only in manifests the engine wrote (an import's, a split's).
    unlabelled: Option<Flag>,
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Flag(bool);

impl TryFrom<String> for Flag {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Ok(Flag(true)),
            "0" | "false" | "no" => Ok(Flag(false)),
            other => Err(format!("expected 0/1 or true/false, got {other:?}")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    pub records: Vec<SliceRecord>,
}

/// Where a slice goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Pretrain,
    Train,
    Validation,
    Test,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Pretrain, Part::Train, Part::Validation, Part::Test];

    pub fn name(self) -> &'static str {
        match self {
            Part::Pretrain => "pretrain",
            Part::Train => "train",
            Part::Validation => "validation",
            Part::Test => "test",
        }
    }
}

/// The columns a labels file may have; any other is refused by name (rather than dropped without a word).
/// `patient`, `study` and `series` group slices (an import stores them as keyed pseudonyms, never as given);
/// `instance` orders a series' slices and `position` (mm) places them.
pub const COLUMNS: [&str; 12] = [
    "file",
    "site",
    "hypodensity",
    "margin_irregularity",
    "blend_sign",
    "fluid_level",
    "hematoma",
    "patient",
    "study",
    "series",
    "instance",
    "position",
];

/// The origin columns, in the order they are written.
const ORIGIN_COLUMNS: [&str; 5] = ["patient", "study", "series", "instance", "position"];

/// The largest site number (sites are stored as 32-bit integers; no study has a million).
pub const MAX_SITE: usize = 1_000_000;

/// Refuses a column that is not one of [`COLUMNS`] (or of `extra`), saying what to do with the common ones.
fn check_column(name: &str, extra: &[&str]) -> std::result::Result<(), String> {
    if COLUMNS.contains(&name) || extra.contains(&name) {
        return Ok(());
    }
    let hint = match name.to_ascii_lowercase().as_str() {
        "label" => ": give the four markers (the label is any of them)",
        "patient_id" | "patientid" | "subject" => ": name the column `patient` (it is stored as a pseudonym)",
        "name" | "patient_name" | "patientname" => ": patient names are never stored; give a `patient` id",
        _ => "",
    };
    Err(format!("column {name:?} is not one RepDiff keeps ({}){hint}; remove it", COLUMNS.join(", ")))
}

/// A row's own checks: a file name, a site in range.
fn check_row(at: &str, file: &str, site: usize) -> std::result::Result<(), String> {
    if file.is_empty() {
        return Err(format!("{at}: empty file name"));
    }
    if file.contains('\0') {
        return Err(format!("{at}: the file name holds a NUL byte"));
    }
    if site > MAX_SITE {
        return Err(format!("{at} ({file}): site {site} is larger than {MAX_SITE}"));
    }
    Ok(())
}

/// The origin's own checks: ids of a sane length without control characters, a finite position.
fn check_origin(at: &str, file: &str, origin: &Origin) -> std::result::Result<(), String> {
    for (name, id) in [("patient", &origin.patient), ("study", &origin.study), ("series", &origin.series)] {
        if let Some(id) = id
            && (id.len() > 256 || id.chars().any(char::is_control))
        {
            return Err(format!("{at} ({file}): the {name} id is longer than 256 bytes or holds control characters"));
        }
    }
    if origin.position.is_some_and(|p| !p.is_finite()) {
        return Err(format!("{at} ({file}): position is not a finite number"));
    }
    Ok(())
}

/// A JSON manifest row: the CSV's columns as fields, flags as booleans or 0/1.
/// (Unknown fields are refused by [`check_column`] before: serde cannot deny them beside a flattened field.)
#[derive(Deserialize)]
struct JsonRow {
    file: String,
    site: usize,
    #[serde(deserialize_with = "json_flag")]
    hypodensity: bool,
    #[serde(deserialize_with = "json_flag")]
    margin_irregularity: bool,
    #[serde(deserialize_with = "json_flag")]
    blend_sign: bool,
    #[serde(deserialize_with = "json_flag")]
    fluid_level: bool,
    #[serde(default, deserialize_with = "json_optional_flag")]
    hematoma: Option<bool>,
    #[serde(flatten)]
    origin: Origin,
}

fn json_flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<bool, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Bool(b) => Ok(b),
        serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        other => Err(serde::de::Error::custom(format!("expected true/false or 0/1, got {other}"))),
    }
}

fn json_optional_flag<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<bool>, D::Error> {
    json_flag(deserializer).map(Some)
}

impl Manifest {
    /// Reads a user's labels file as CSV, or as JSON (an array of objects with the same fields) if it ends
    /// in `.json`; any column but [`COLUMNS`] is refused by name.
    pub fn read(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            Self::read_json(path)
        } else {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            Self::from_reader(file).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
        }
    }

    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
    }

    /// A JSON manifest: an array of `{file, site, hypodensity, margin_irregularity, blend_sign, fluid_level}`.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let values: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(text).map_err(|e| format!("not an array of objects: {e}"))?;
        for (i, row) in values.iter().enumerate() {
            for name in row.keys() {
                check_column(name, &[]).map_err(|e| format!("entry {i}: {e}"))?;
            }
        }
        let rows: Vec<JsonRow> = serde_json::from_value(serde_json::Value::Array(
            values.into_iter().map(serde_json::Value::Object).collect(),
        ))
        .map_err(|e| e.to_string())?;
        let mut records = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let markers = Markers {
                hypodensity: row.hypodensity,
                margin_irregularity: row.margin_irregularity,
                blend_sign: row.blend_sign,
                fluid_level: row.fluid_level,
            };
            if row.hematoma.is_some_and(|label| label != markers.any()) {
                return Err(format!("entry {i} ({}): hematoma disagrees with the markers", row.file));
            }
            check_row(&format!("entry {i}"), &row.file, row.site)?;
            check_origin(&format!("entry {i}"), &row.file, &row.origin)?;
            records.push(SliceRecord {
                file: row.file,
                site: row.site,
                markers,
                origin: row.origin,
                unlabelled: false,
            });
        }
        if records.is_empty() {
            return Err("the manifest has no slices".into());
        }
        Ok(Manifest { records })
    }

    /// A manifest the engine wrote (an import's, or a split's with its `part` column).
    pub fn read_csv(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::parse_csv(file, &["part", "unlabelled"]).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
    }

    /// A labels file from a user, as CSV: any column but [`COLUMNS`] is refused by name.
    pub fn from_reader(reader: impl std::io::Read) -> std::result::Result<Self, String> {
        Self::parse_csv(reader, &[])
    }

    fn parse_csv(reader: impl std::io::Read, extra: &[&str]) -> std::result::Result<Self, String> {
        let mut csv = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(reader);
        let headers = csv.headers().map_err(|e| format!("line 1: {e}"))?.clone();
        for name in headers.iter() {
            check_column(name, extra).map_err(|e| format!("line 1: {e}"))?;
        }
        let mut records = Vec::new();
        for (i, row) in csv.deserialize::<Row>().enumerate() {
            let line = i + 2;
            let row = row.map_err(|e| format!("line {line}: {e}"))?;
            let markers = Markers {
                hypodensity: row.hypodensity.0,
                margin_irregularity: row.margin_irregularity.0,
                blend_sign: row.blend_sign.0,
                fluid_level: row.fluid_level.0,
            };
            if let Some(Flag(label)) = row.hematoma
                && label != markers.any()
            {
                return Err(format!(
                    "line {line}: hematoma = {} but the markers say {}",
                    u8::from(label),
                    u8::from(markers.any())
                ));
            }
            check_row(&format!("line {line}"), &row.file, row.site)?;
            let origin = Origin {
                patient: row.patient,
                study: row.study,
                series: row.series,
                instance: row.instance,
                position: row.position,
            };
            check_origin(&format!("line {line}"), &row.file, &origin)?;
            let unlabelled = row.unlabelled.is_some_and(|Flag(u)| u);
            records.push(SliceRecord { file: row.file, site: row.site, markers, origin, unlabelled });
        }
        if records.is_empty() {
            return Err("the manifest has no slices".into());
        }
        Ok(Manifest { records })
    }

    /// The paper's split: sites other than `downstream_site` -> pre-training; the downstream site's slices ->
    /// train/validation/test in proportions `fractions` (e.g. 0.8/0.1/0.1), stratified by label at the
    /// level of `unit`. With [`SplitUnit::Patient`] the slices of one patient (see [`Origin::group`]) go to
    /// one part, and patients are stratified by the labels they have (none, some, all positive slices);
    /// each stratum's units are shuffled and the first `floor(fraction * n)` go to train, the next to
    /// validation, the rest to test. A patient split of slices that name no patient is the per-slice split.
    /// Without a downstream site (a single-site design) every slice is split and no slice pre-trains.
    pub fn split(
        &self,
        unit: SplitUnit,
        downstream_site: Option<usize>,
        fractions: [f64; 3],
        seed: u64,
    ) -> Result<Vec<Part>> {
        let total: f64 = fractions.iter().sum();
        if fractions.iter().any(|f| *f < 0.0) || (total - 1.0).abs() > 1e-9 {
            return Err(Error::Config(format!("split fractions must be non-negative and sum to 1, got {fractions:?}")));
        }
        let mut parts = vec![Part::Pretrain; self.records.len()];
        // The downstream site's units, in the order of their first slice, each with its slices and labels.
        let mut units: Vec<(Vec<usize>, u8)> = Vec::new();
        let mut index_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let downstream = |r: &SliceRecord| downstream_site.is_none_or(|site| r.site == site);
        for (i, record) in self.records.iter().enumerate().filter(|(_, r)| downstream(r)) {
            // Unlabelled slices are a stratum of their own, spread over the parts like the others.
            let label = if record.unlabelled {
                4
            } else if record.hematoma() {
                2
            } else {
                1
            };
            let group = match unit {
                SplitUnit::Patient => record.origin.group(),
                SplitUnit::Slice => None,
            };
            match group.and_then(|g| index_of.get(g)) {
                Some(&u) => {
                    units[u].0.push(i);
                    units[u].1 |= label;
                }
                None => {
                    if let Some(g) = group {
                        index_of.insert(g, units.len());
                    }
                    units.push((vec![i], label));
                }
            }
        }
        if units.is_empty() {
            return Err(Error::Data(match downstream_site {
                Some(site) => format!("no slice comes from the downstream site {site}"),
                None => "there is no slice to split".into(),
            }));
        }
        let mut rng = Rng::new(seed);
        // Strata: only negative slices (1), only positive (2), both (3), then any with unlabelled slices; the
        // order keeps the per-slice split of a labelled manifest without patients what it always was.
        for stratum_label in [1u8, 2, 3, 4, 5, 6, 7] {
            let mut stratum: Vec<usize> = (0..units.len()).filter(|&u| units[u].1 == stratum_label).collect();
            if stratum.is_empty() {
                continue;
            }
            rng.shuffle(&mut stratum);
            let n = stratum.len() as f64;
            let n_train = (fractions[0] * n).floor() as usize;
            let n_val = (fractions[1] * n).floor() as usize;
            for (k, &u) in stratum.iter().enumerate() {
                let part = if k < n_train {
                    Part::Train
                } else if k < n_train + n_val {
                    Part::Validation
                } else {
                    Part::Test
                };
                for &i in &units[u].0 {
                    parts[i] = part;
                }
            }
        }
        Ok(parts)
    }

    /// Writes the manifest: its columns plus the derived `hematoma`.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        self.write_rows(path, None)
    }

    /// Writes the manifest with its split: the manifest's columns plus `hematoma` and `part`.
    pub fn write_split_csv(&self, parts: &[Part], path: &Path) -> Result<()> {
        self.write_rows(path, Some(parts))
    }

    fn write_rows(&self, path: &Path, parts: Option<&[Part]>) -> Result<()> {
        if let Some(parts) = parts
            && parts.len() != self.records.len()
        {
            return Err(Error::Data(format!("{} parts for {} slices", parts.len(), self.records.len())));
        }
        let fail = |e: String| Error::Data(format!("{}: {e}", path.display()));
        let mut csv = csv::Writer::from_path(path).map_err(|e| fail(e.to_string()))?;
        // The origin columns only when some slice has an origin: manifests of single slices stay as they were.
        let origins = self.records.iter().any(|r| !r.origin.is_empty());
        let unlabelled = self.records.iter().any(|r| r.unlabelled);
        let mut header = COLUMNS[..7].to_vec();
        if origins {
            header.extend(ORIGIN_COLUMNS);
        }
        if unlabelled {
            header.push("unlabelled");
        }
        if parts.is_some() {
            header.push("part");
        }
        csv.write_record(&header).map_err(|e| fail(e.to_string()))?;
        for (i, r) in self.records.iter().enumerate() {
            let m = &r.markers;
            let flags = [m.hypodensity, m.margin_irregularity, m.blend_sign, m.fluid_level, m.any()]
                .map(|f| u8::from(f).to_string());
            let mut row = vec![r.file.clone(), r.site.to_string()];
            row.extend(flags);
            if origins {
                let o = &r.origin;
                row.extend([o.patient.clone(), o.study.clone(), o.series.clone()].map(Option::unwrap_or_default));
                row.push(o.instance.map(|n| n.to_string()).unwrap_or_default());
                row.push(o.position.map(|p| p.to_string()).unwrap_or_default());
            }
            if unlabelled {
                row.push(u8::from(r.unlabelled).to_string());
            }
            if let Some(parts) = parts {
                row.push(parts[i].name().to_string());
            }
            csv.write_record(&row).map_err(|e| fail(e.to_string()))?;
        }
        csv.flush().map_err(|e| Error::io(path, e))
    }

    /// Distinct patients (by [`Origin::group`]) among `rows`; slices without any id count one each.
    fn patients<'a>(rows: impl Iterator<Item = &'a SliceRecord>) -> usize {
        let mut groups = std::collections::HashSet::new();
        let mut alone = 0;
        for r in rows {
            match r.origin.group() {
                Some(g) => {
                    groups.insert(g);
                }
                None => alone += 1,
            }
        }
        groups.len() + alone
    }

    /// Counts per part: slices, patients, with hematoma, without, and each marker (the paper's Tables 1 and
    /// 2), then what the split's unit means for the scores made from it.
    pub fn summary(&self, parts: &[Part], unit: SplitUnit) -> String {
        let mut out = String::from(
            "| part | slices | patients | hematoma | none | hypodensity | margin irregularity | blend sign | fluid level |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for part in Part::ALL {
            let rows: Vec<&SliceRecord> =
                self.records.iter().zip(parts).filter(|(_, p)| **p == part).map(|(r, _)| r).collect();
            let count = |f: &dyn Fn(&Markers) -> bool| rows.iter().filter(|r| f(&r.markers)).count();
            let positives = count(&|m| m.any());
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                part.name(),
                rows.len(),
                Self::patients(rows.iter().copied()),
                positives,
                rows.len() - positives,
                count(&|m| m.hypodensity),
                count(&|m| m.margin_irregularity),
                count(&|m| m.blend_sign),
                count(&|m| m.fluid_level)
            ));
        }
        let unnamed = self.records.iter().filter(|r| r.origin.group().is_none()).count();
        let unlabelled = self.records.iter().filter(|r| r.unlabelled).count();
        if unlabelled > 0 {
            out.push_str(&format!("\n{unlabelled} slices have no label (counted under none above).\n"));
        }
        out.push_str(&format!("\n{}", unit.caveat()));
        if unnamed > 0 {
            out.push_str(&format!(
                "; {unnamed} of {} slices name no patient, study or series and count as patients of their own",
                self.records.len()
            ));
        }
        out.push_str(".\n");
        out
    }

    /// Patients (by [`Origin::group`]) with slices in more than one of train, validation and test: none in
    /// a patient split.
    pub fn patients_in_two_parts(&self, parts: &[Part]) -> usize {
        let mut seen: std::collections::HashMap<&str, Part> = std::collections::HashMap::new();
        let mut leaked = std::collections::HashSet::new();
        for (r, &p) in self.records.iter().zip(parts) {
            if let (Some(g), true) = (r.origin.group(), p != Part::Pretrain)
                && *seen.entry(g).or_insert(p) != p
            {
                leaked.insert(g);
            }
        }
        leaked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_manifests_read_like_csv_ones() {
        let dir = std::env::temp_dir().join(format!("repdiff-manifest-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("labels.json");
        std::fs::write(
            &json,
            r#"[{"file": "a.dcm", "site": 2, "hypodensity": true, "margin_irregularity": 0, "blend_sign": false, "fluid_level": 0},
                {"file": "b.dcm", "site": 1, "hypodensity": 0, "margin_irregularity": 0, "blend_sign": 0, "fluid_level": 0, "hematoma": false}]"#,
        )
        .unwrap();
        let manifest = Manifest::read(&json).unwrap();
        assert_eq!(manifest.records.len(), 2);
        assert!(manifest.records[0].hematoma() && !manifest.records[1].hematoma());
        assert_eq!(manifest.records[0].site, 2);
        std::fs::write(&json, r#"[{"file": "a.dcm", "site": 2, "hypodensity": 2, "margin_irregularity": 0, "blend_sign": 0, "fluid_level": 0}]"#).unwrap();
        let error = Manifest::read(&json).unwrap_err().to_string();
        assert!(error.contains("expected true/false or 0/1"), "{error}");
        std::fs::write(&json, r#"[{"file": "a.dcm", "site": 2, "hypodensity": 1, "margin_irregularity": 0, "blend_sign": 0, "fluid_level": 0, "hematoma": 0}]"#).unwrap();
        assert!(Manifest::read(&json).unwrap_err().to_string().contains("disagrees"));
        std::fs::remove_dir_all(&dir).ok();
    }

    fn synthetic(n: usize) -> Manifest {
        let mut rng = Rng::new(4);
        let records = (0..n)
            .map(|i| SliceRecord {
                file: format!("s{i}.png"),
                site: 1 + i % 3,
                markers: Markers::random(&mut rng, 0.2),
                ..SliceRecord::default()
            })
            .collect();
        Manifest { records }
    }

    #[test]
    fn split_is_the_papers_stratified_and_reproducible() {
        let m = synthetic(3000);
        let parts = m.split(SplitUnit::Slice, Some(1), [0.8, 0.1, 0.1], 7).unwrap();
        assert_eq!(parts, m.split(SplitUnit::Slice, Some(1), [0.8, 0.1, 0.1], 7).unwrap());
        assert_ne!(parts, m.split(SplitUnit::Slice, Some(1), [0.8, 0.1, 0.1], 8).unwrap());
        // Slices that name no patient are patients of their own: the patient split is the per-slice one.
        assert_eq!(parts, m.split(SplitUnit::Patient, Some(1), [0.8, 0.1, 0.1], 7).unwrap());
        for (r, p) in m.records.iter().zip(&parts) {
            assert_eq!(r.site != 1, *p == Part::Pretrain);
        }
        // Each part of the downstream site keeps the label ratio (within one slice of exact per stratum).
        let downstream: Vec<usize> = (0..m.records.len()).filter(|&i| m.records[i].site == 1).collect();
        for label in [false, true] {
            let stratum: Vec<usize> =
                downstream.iter().copied().filter(|&i| m.records[i].hematoma() == label).collect();
            let count = |part| stratum.iter().filter(|&&i| parts[i] == part).count();
            let n = stratum.len() as f64;
            assert_eq!(count(Part::Train), (0.8 * n).floor() as usize);
            assert_eq!(count(Part::Validation), (0.1 * n).floor() as usize);
            assert!((count(Part::Test) as f64 - 0.1 * n).abs() <= 2.0);
        }
        let table = m.summary(&parts, SplitUnit::Slice);
        assert!(table.contains("| pretrain | 2000 | 2000 |"), "{table}");
        assert!(table.contains("slices of one patient may be in both"), "{table}");
        assert!(
            m.split(SplitUnit::Slice, Some(9), [0.8, 0.1, 0.1], 0)
                .unwrap_err()
                .to_string()
                .contains("downstream site 9")
        );
        assert!(m.split(SplitUnit::Slice, Some(1), [0.8, 0.3, 0.1], 0).is_err());
    }

    #[test]
    fn csv_is_read_with_line_numbered_errors() {
        let good = "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,hematoma\na.png,2,0,1,0,0,1\nb.png,1,false,false,false,false,0\n";
        let m = Manifest::from_reader(good.as_bytes()).unwrap();
        assert_eq!(m.records.len(), 2);
        assert!(m.records[0].hematoma() && !m.records[1].hematoma());
        let no_label = "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level\na.png,2,0,0,0,1\n";
        assert!(Manifest::from_reader(no_label.as_bytes()).unwrap().records[0].markers.fluid_level);
        let cases = [
            (
                "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,hematoma\na.png,2,0,1,0,0,0\n",
                "line 2: hematoma = 0",
            ),
            ("file,site,hypodensity,margin_irregularity,blend_sign,fluid_level\na.png,two,0,0,0,0\n", "line 2"),
            ("file,site,hypodensity,margin_irregularity,blend_sign,fluid_level\na.png,1,maybe,0,0,0\n", "maybe"),
            ("file,site,hypodensity\na.png,1,0\n", "line 2"),
            ("file,site,hypodensity,margin_irregularity,blend_sign,fluid_level\n", "no slices"),
        ];
        for (text, needle) in cases {
            let err = Manifest::from_reader(text.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    /// 300 patients of 1 to 12 slices each at three sites; a patient's slices are positive with the
    /// patient's own probability (none, some or all).
    fn patients() -> Manifest {
        let mut rng = Rng::new(11);
        let mut records = Vec::new();
        for p in 0..300 {
            let slices = 1 + rng.below(12);
            let prob = [0.0, 0.3, 1.0][rng.below(3)];
            for k in 0..slices {
                records.push(SliceRecord {
                    file: format!("p{p}_{k}.png"),
                    site: 1 + p % 3,
                    markers: Markers { hypodensity: rng.uniform() < prob, ..Markers::default() },
                    origin: Origin {
                        patient: Some(format!("ANON-{p:04}")),
                        instance: Some(k as i64 + 1),
                        ..Origin::default()
                    },
                    unlabelled: false,
                });
            }
        }
        Manifest { records }
    }

    #[test]
    fn a_patient_split_keeps_each_patient_in_one_part_stratified_by_patient() {
        let m = patients();
        let parts = m.split(SplitUnit::Patient, Some(1), PAPER_SPLIT, 3).unwrap();
        assert_eq!(parts, m.split(SplitUnit::Patient, Some(1), PAPER_SPLIT, 3).unwrap(), "seeded");
        assert_eq!(m.patients_in_two_parts(&parts), 0);
        // The per-slice split of the same slices puts many patients in two parts: the leak it measures.
        let by_slice = m.split(SplitUnit::Slice, Some(1), PAPER_SPLIT, 3).unwrap();
        assert!(m.patients_in_two_parts(&by_slice) > 30, "{}", m.patients_in_two_parts(&by_slice));
        // Per stratum of patients (none, some, all slices positive): floor(0.8 n) in train, floor(0.1 n) in
        // validation, the rest in test.
        let mut strata: std::collections::BTreeMap<u8, Vec<(String, Part)>> = Default::default();
        let mut labels: std::collections::BTreeMap<String, (u8, Part)> = Default::default();
        for (r, &p) in m.records.iter().zip(&parts).filter(|(r, _)| r.site == 1) {
            let e = labels.entry(r.origin.patient.clone().unwrap()).or_insert((0, p));
            e.0 |= if r.hematoma() { 2 } else { 1 };
        }
        for (patient, (label, part)) in labels {
            strata.entry(label).or_default().push((patient, part));
        }
        assert_eq!(strata.len(), 3, "patients of each kind");
        for (label, members) in strata {
            let n = members.len();
            let count = |part| members.iter().filter(|(_, p)| *p == part).count();
            assert_eq!(count(Part::Train), n * 8 / 10, "stratum {label}");
            assert_eq!(count(Part::Validation), n / 10, "stratum {label}");
            assert_eq!(count(Part::Test), n - n * 8 / 10 - n / 10, "stratum {label}");
        }
        let table = m.summary(&parts, SplitUnit::Patient);
        assert!(table.contains("split by patient: no patient has slices in two parts."), "{table}");
        assert!(table.contains("| pretrain |") && !table.contains("name no patient"), "{table}");
    }

    #[test]
    fn origins_are_read_from_a_labels_file_and_written_back() {
        let text = "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,patient,series,instance,position\n\
                    a.png,1,0,0,0,0,P1,S1,1,-12.5\nb.png,1,1,0,0,0,P1,S1,2,-7.5\nc.png,2,0,0,0,0,,,,\n";
        let m = Manifest::from_reader(text.as_bytes()).unwrap();
        assert_eq!(m.records[1].origin.patient.as_deref(), Some("P1"));
        assert_eq!(m.records[1].origin.instance, Some(2));
        assert_eq!(m.records[0].origin.position, Some(-12.5));
        assert!(m.records[2].origin.is_empty(), "empty cells are no origin");
        let dir = std::env::temp_dir().join(format!("repdiff-manifest-origin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("split.csv");
        let parts = m.split(SplitUnit::Patient, Some(1), [0.5, 0.0, 0.5], 0).unwrap();
        assert_eq!(parts[0], parts[1], "one patient, one part");
        m.write_split_csv(&parts, &path).unwrap();
        assert_eq!(Manifest::read_csv(&path).unwrap(), m);
        std::fs::remove_dir_all(&dir).ok();
        let err = Manifest::from_reader(
            "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,patient_id\na.png,1,0,0,0,0,x\n"
                .as_bytes(),
        )
        .unwrap_err();
        assert!(err.contains("name the column `patient`"), "{err}");
        let err = Manifest::from_reader(
            "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,position\na.png,1,0,0,0,0,inf\n"
                .as_bytes(),
        )
        .unwrap_err();
        assert!(err.contains("finite"), "{err}");
    }

    #[test]
    fn a_single_site_split_splits_every_slice_and_unlabelled_slices_are_spread_and_kept() {
        let mut m = patients();
        for (i, r) in m.records.iter_mut().enumerate() {
            r.unlabelled = i % 7 == 0;
        }
        let parts = m.split(SplitUnit::Patient, None, PAPER_SPLIT, 5).unwrap();
        assert!(!parts.contains(&Part::Pretrain), "no site design: nothing pre-trains");
        assert_eq!(m.patients_in_two_parts(&parts), 0);
        for part in [Part::Train, Part::Validation, Part::Test] {
            let unlabelled = m.records.iter().zip(&parts).filter(|(r, p)| **p == part && r.unlabelled).count();
            assert!(unlabelled > 0, "{part:?} gets some of the patients with unlabelled slices");
        }
        let table = m.summary(&parts, SplitUnit::Patient);
        assert!(table.contains("slices have no label"), "{table}");
        let dir = std::env::temp_dir().join(format!("repdiff-manifest-unlabelled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("split.csv");
        m.write_split_csv(&parts, &path).unwrap();
        assert_eq!(Manifest::read_csv(&path).unwrap(), m, "unlabelled survives a round trip");
        std::fs::remove_dir_all(&dir).ok();
        // A user's labels file has no `unlabelled` column: a slice without a label has no row.
        let err = Manifest::from_reader(
            "file,site,hypodensity,margin_irregularity,blend_sign,fluid_level,unlabelled\na.png,1,0,0,0,0,1\n"
                .as_bytes(),
        )
        .unwrap_err();
        assert!(err.contains("unlabelled"), "{err}");
    }
}
