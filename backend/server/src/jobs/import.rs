//! `import`: scans already on the worker's side (a PACS export, a mounted share) into a dataset, as the
//! upload endpoint does for files sent over HTTP: each file through the engine's de-identifying import,
//! refused files listed with their reason. Only folders under the deployment's import roots
//! (`--import-root`) can be named, so a job cannot read arbitrary files of the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use repdiff_api::jobs::{ImportParams, Invalid};
use repdiff_engine::dataset::Labels;
use repdiff_engine::imaging::deid::DeidKey;
use repdiff_engine::manifest::Manifest;

use crate::scans;
use crate::worker::{Input, JobContext, JobError, Task};

pub struct Import {
    pub roots: Vec<PathBuf>,
    pub deid_key: Arc<DeidKey>,
}

/// Files not to import: label files, notes, hidden files (as `repdiff import` skips them).
fn is_scan(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    !name.starts_with('.') && ![".csv", ".json", ".txt", ".md"].iter().any(|ext| name.ends_with(ext))
}

/// The scan files under `dir`, in name order. Links are followed only to files inside `roots` (their
/// real paths); linked folders are not entered (a link to a parent would never end, one to /etc would
/// read it). What was skipped is counted in `skipped`, never named: it may lie outside the roots.
fn walk(dir: &Path, roots: &[PathBuf], out: &mut Vec<PathBuf>, skipped: &mut usize) -> std::io::Result<()> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (path, kind) = (entry.path(), entry.file_type()?);
        if kind.is_dir() {
            walk(&path, roots, out, skipped)?;
        } else if kind.is_symlink() {
            match path.canonicalize() {
                Ok(real) if real.is_file() && roots.iter().any(|root| real.starts_with(root)) && is_scan(&path) => {
                    out.push(real)
                }
                _ => *skipped += 1,
            }
        } else if is_scan(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl Import {
    /// The import roots' real paths.
    fn real_roots(&self) -> Vec<PathBuf> {
        self.roots.iter().filter_map(|r| r.canonicalize().ok()).collect()
    }

    /// `path` resolved under an import root, or why not. One message for a path outside the roots and one
    /// that does not exist: the answer must not tell which paths exist on the machine.
    fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let first = self.roots.first().ok_or("this deployment has no import roots (repdiff worker --import-root)")?;
        let candidate = if Path::new(path).is_absolute() { PathBuf::from(path) } else { first.join(path) };
        let real =
            candidate.canonicalize().ok().filter(|real| self.real_roots().iter().any(|root| real.starts_with(root)));
        real.ok_or_else(|| format!("{path:?} is not a file or folder under the import roots"))
    }
}

impl Task for Import {
    type Spec = ImportParams;

    fn check(&self, p: &ImportParams) -> Result<(), Invalid> {
        self.resolve(&p.path).map_err(|e| Invalid::new("path", e))?;
        match &p.labels {
            Some(labels) => self.resolve(labels).map(|_| ()).map_err(|e| Invalid::new("labels", e)),
            None => Ok(()),
        }
    }

    fn reads(&self, p: &ImportParams) -> Vec<Input> {
        vec![Input::OwnDataset(p.dataset)]
    }

    fn run(&self, p: ImportParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let source = self.resolve(&p.path).map_err(JobError::Permanent)?;
        let manifest = match &p.labels {
            Some(labels) => {
                let path = self.resolve(labels).map_err(JobError::Permanent)?;
                Manifest::read(&path)?
            }
            None => Manifest::default(),
        };
        let (mut files, mut skipped) = (Vec::new(), 0);
        if source.is_dir() {
            walk(&source, &self.real_roots(), &mut files, &mut skipped)
                .map_err(|e| JobError::Retryable(format!("{}: {e}", p.path)))?;
        } else {
            files.push(source.clone());
        }
        if skipped > 0 {
            ctx.log("warn", &format!("skipped {skipped} link(s) to folders, or to files outside the import roots"));
        }
        let keep_names = ctx
            .block_on(
                sqlx::query_scalar!("SELECT keep_file_names FROM datasets WHERE id = $1", p.dataset)
                    .fetch_one(ctx.pool()),
            )
            .map_err(|e| JobError::Retryable(e.to_string()))?;
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
            let labels = match p.labels {
                // With a labels file, a file it has no row for is refused, not imported unlabelled.
                Some(_) => Labels::from_manifest(labels),
                None => Labels::from_manifest(labels).or_unlabelled(p.site),
            };
            // The engine works beside its input: copy the file into scratch (the source may be read-only).
            let staged = staging.join(format!("{i:06}")).join(&name);
            std::fs::create_dir_all(staged.parent().expect("has a parent"))
                .and_then(|_| std::fs::copy(file, &staged))
                .map_err(|e| JobError::Retryable(format!("{relative}: {e}")))?;
            match scans::import_file(&staged, &relative, labels, &self.deid_key) {
                Ok(imported) => {
                    let naming = if keep_names { scans::Naming::Kept(&relative) } else { scans::Naming::Pseudonym };
                    // Each file lands whole or not at all: its rows in one transaction, its objects
                    // removed again if that fails.
                    let stored = ctx
                        .block_on(async {
                            let mut objects = scans::NewObjects::new(&ctx.storage);
                            let mut tx = ctx.pool().begin().await?;
                            let stored = scans::store(&mut tx, &mut objects, p.dataset, naming, imported).await?;
                            tx.commit().await?;
                            objects.keep();
                            Ok::<_, scans::StoreError>(stored)
                        })
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
