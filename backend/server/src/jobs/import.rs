//! `import`: scans already on the worker's side (a PACS export, a mounted share) into a dataset, as the
//! upload endpoint does for files sent over HTTP: each file through the engine's de-identifying import,
//! refused files listed with their reason. Only folders under the deployment's import roots
//! (`--import-root`) can be named, so a job cannot read arbitrary files of the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use repdiff_engine::dataset::Labels;
use repdiff_engine::imaging::deid::DeidKey;
use repdiff_engine::manifest::Manifest;
use serde::{Deserialize, Serialize};

use crate::scans;
use crate::worker::{Handler, Input, JobContext, JobError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    pub dataset: i64,
    /// A file or folder under an import root (relative to the first root, or absolute).
    pub path: String,
    /// A manifest (CSV or JSON) under an import root whose `file` column names files relative to `path`.
    #[serde(default)]
    pub labels: Option<String>,
    /// The site of files without a label row (default 0).
    #[serde(default)]
    pub site: usize,
}

pub struct Import {
    pub roots: Vec<PathBuf>,
    pub deid_key: Arc<DeidKey>,
}

/// Files not to import: label files, notes, hidden files (as `repdiff import` skips them).
fn is_scan(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    !name.starts_with('.') && ![".csv", ".json", ".txt", ".md"].iter().any(|ext| name.ends_with(ext))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_scan(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl Import {
    /// `path` resolved under an import root, or why not.
    fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let first = self.roots.first().ok_or("this deployment has no import roots (repdiff worker --import-root)")?;
        let candidate = if Path::new(path).is_absolute() { PathBuf::from(path) } else { first.join(path) };
        let real = candidate.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        let inside = self.roots.iter().filter_map(|r| r.canonicalize().ok()).any(|root| real.starts_with(root));
        if inside { Ok(real) } else { Err(format!("{path} is outside the import roots")) }
    }
}

impl Handler for Import {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: ImportParams = super::parse("import", params)?;
        self.resolve(&p.path)?;
        if let Some(labels) = &p.labels {
            self.resolve(labels)?;
        }
        Ok(())
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        serde_json::from_value::<ImportParams>(params.clone())
            .map(|p| vec![Input::OwnDataset(p.dataset)])
            .unwrap_or_default()
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: ImportParams = ctx.params()?;
        let source = self.resolve(&p.path).map_err(JobError::Permanent)?;
        let manifest = match &p.labels {
            Some(labels) => {
                let path = self.resolve(labels).map_err(JobError::Permanent)?;
                Manifest::read(&path)?
            }
            None => Manifest::default(),
        };
        let mut files = Vec::new();
        if source.is_dir() {
            walk(&source, &mut files).map_err(|e| JobError::Retryable(format!("{}: {e}", source.display())))?;
        } else {
            files.push(source.clone());
        }
        let staging = ctx.scratch.join("staging");
        let (mut slices, mut duplicates, mut refused) = (0usize, 0usize, Vec::new());
        for (i, file) in files.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                return Err(JobError::Cancelled);
            }
            // Labels name files relative to the imported folder; the engine matches by file name.
            let relative = file.strip_prefix(&source).unwrap_or(file).to_string_lossy().replace('\\', "/");
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut labels = manifest.clone();
            for record in &mut labels.records {
                if let Some(rest) = record.file.strip_prefix(&relative) {
                    record.file = format!("{name}{rest}");
                }
            }
            // The engine works beside its input: copy the file into scratch (the source may be read-only).
            let staged = staging.join(format!("{i:06}")).join(&name);
            std::fs::create_dir_all(staged.parent().expect("has a parent"))
                .and_then(|_| std::fs::copy(file, &staged))
                .map_err(|e| JobError::Retryable(format!("{}: {e}", file.display())))?;
            match scans::import_file(&staged, Labels::from_manifest(labels).or_unlabelled(p.site), &self.deid_key) {
                Ok(imported) => {
                    let stored = ctx
                        .block_on(scans::store(ctx.pool(), &ctx.storage, p.dataset, &relative, imported))
                        .map_err(|e| JobError::Retryable(e.to_string()))?;
                    slices += stored.ids.len();
                    duplicates += stored.duplicates;
                }
                Err(reason) => {
                    ctx.log("warn", &format!("{relative}: {reason}"));
                    refused.push(serde_json::json!({ "file": relative, "error": reason }));
                }
            }
            let _ = std::fs::remove_dir_all(staged.parent().expect("has a parent"));
            ctx.progress(i as u64 + 1, files.len() as u64, "importing");
        }
        Ok(serde_json::json!({ "files": files.len(), "slices": slices, "duplicates": duplicates, "refused": refused }))
    }
}
