//! Dataset manifests (per-slice site and the four hematoma markers) and the paper's split: every site but
//! the downstream one is pre-training data; the downstream site is split train/validation/test 8:1:1,
//! stratified by the binary label and seeded, so a split is reproducible from (manifest, site, seed).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::phantom::Markers;
use crate::rng::Rng;
use crate::{Error, Result};

/// One slice of a manifest.
/// The paper's split of the downstream site's slices: train, validation, test (per label).
pub const PAPER_SPLIT: [f64; 3] = [0.8, 0.1, 0.1];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub file: String,
    pub site: usize,
    #[serde(flatten)]
    pub markers: Markers,
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

/// The columns a labels file may have; any other is refused by name (a `patient` column would otherwise
/// be dropped without a word).
pub const COLUMNS: [&str; 7] =
    ["file", "site", "hypodensity", "margin_irregularity", "blend_sign", "fluid_level", "hematoma"];

/// The largest site number (sites are stored as 32-bit integers; no study has a million).
pub const MAX_SITE: usize = 1_000_000;

/// Refuses a column that is not one of [`COLUMNS`] (or of `extra`), saying what to do with the common ones.
fn check_column(name: &str, extra: &[&str]) -> std::result::Result<(), String> {
    if COLUMNS.contains(&name) || extra.contains(&name) {
        return Ok(());
    }
    let hint = match name.to_ascii_lowercase().as_str() {
        "label" => ": give the four markers (the label is any of them)",
        "patient" | "patient_id" | "patientid" | "name" => {
            ": patient identifiers are not stored (DICOM pseudonymises its own)"
        }
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

/// A JSON manifest row: the CSV's columns as fields, flags as booleans or 0/1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
            records.push(SliceRecord { file: row.file, site: row.site, markers });
        }
        if records.is_empty() {
            return Err("the manifest has no slices".into());
        }
        Ok(Manifest { records })
    }

    /// A manifest the engine wrote (an import's, or a split's with its `part` column).
    pub fn read_csv(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::parse_csv(file, &["part"]).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
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
            records.push(SliceRecord { file: row.file, site: row.site, markers });
        }
        if records.is_empty() {
            return Err("the manifest has no slices".into());
        }
        Ok(Manifest { records })
    }

    /// The paper's split: sites other than `downstream_site` -> pre-training; the downstream site's slices ->
    /// train/validation/test in proportions `fractions` (e.g. 0.8/0.1/0.1), stratified by label.
    pub fn split(&self, downstream_site: usize, fractions: [f64; 3], seed: u64) -> Result<Vec<Part>> {
        let total: f64 = fractions.iter().sum();
        if fractions.iter().any(|f| *f < 0.0) || (total - 1.0).abs() > 1e-9 {
            return Err(Error::Config(format!("split fractions must be non-negative and sum to 1, got {fractions:?}")));
        }
        let mut parts = vec![Part::Pretrain; self.records.len()];
        let mut rng = Rng::new(seed);
        let mut found = false;
        for label in [false, true] {
            let mut stratum: Vec<usize> = (0..self.records.len())
                .filter(|&i| self.records[i].site == downstream_site && self.records[i].hematoma() == label)
                .collect();
            found |= !stratum.is_empty();
            rng.shuffle(&mut stratum);
            let n = stratum.len() as f64;
            let n_train = (fractions[0] * n).floor() as usize;
            let n_val = (fractions[1] * n).floor() as usize;
            for (k, &i) in stratum.iter().enumerate() {
                parts[i] = if k < n_train {
                    Part::Train
                } else if k < n_train + n_val {
                    Part::Validation
                } else {
                    Part::Test
                };
            }
        }
        if !found {
            return Err(Error::Data(format!("no slice comes from the downstream site {downstream_site}")));
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
        let mut header =
            vec!["file", "site", "hypodensity", "margin_irregularity", "blend_sign", "fluid_level", "hematoma"];
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
            if let Some(parts) = parts {
                row.push(parts[i].name().to_string());
            }
            csv.write_record(&row).map_err(|e| fail(e.to_string()))?;
        }
        csv.flush().map_err(|e| Error::io(path, e))
    }

    /// Counts per part: slices, with hematoma, without, and each marker (the paper's Tables 1 and 2).
    pub fn summary(&self, parts: &[Part]) -> String {
        let mut out = String::from(
            "| part | slices | hematoma | none | hypodensity | margin irregularity | blend sign | fluid level |\n|---|---|---|---|---|---|---|---|\n",
        );
        for part in Part::ALL {
            let rows: Vec<&SliceRecord> =
                self.records.iter().zip(parts).filter(|(_, p)| **p == part).map(|(r, _)| r).collect();
            let count = |f: &dyn Fn(&Markers) -> bool| rows.iter().filter(|r| f(&r.markers)).count();
            let positives = count(&|m| m.any());
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                part.name(),
                rows.len(),
                positives,
                rows.len() - positives,
                count(&|m| m.hypodensity),
                count(&|m| m.margin_irregularity),
                count(&|m| m.blend_sign),
                count(&|m| m.fluid_level)
            ));
        }
        out
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
            })
            .collect();
        Manifest { records }
    }

    #[test]
    fn split_is_the_papers_stratified_and_reproducible() {
        let m = synthetic(3000);
        let parts = m.split(1, [0.8, 0.1, 0.1], 7).unwrap();
        assert_eq!(parts, m.split(1, [0.8, 0.1, 0.1], 7).unwrap());
        assert_ne!(parts, m.split(1, [0.8, 0.1, 0.1], 8).unwrap());
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
        let table = m.summary(&parts);
        assert!(table.contains("| pretrain | 2000 |"), "{table}");
        assert!(m.split(9, [0.8, 0.1, 0.1], 0).unwrap_err().to_string().contains("downstream site 9"));
        assert!(m.split(1, [0.8, 0.3, 0.1], 0).is_err());
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
}
