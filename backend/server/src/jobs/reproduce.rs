//! `reproduce`: the paper's whole pipeline as a job: `repdiff reproduce` run by the worker as a child
//! process (its steps are child processes too, side by side), on a dataset of the server or on synthetic
//! phantoms. Its output lines are the job's logs and its `progress:` lines the job's progress; the
//! result is the Table 5 and Table 6 analogues (`table6.json`), with the Markdown report and the figures as
//! artifacts.
//!
//! The pipeline's working folder is copied to the store as it goes (after every finished step, and every
//! [`SYNC_EVERY`] the files that changed, such as a training step's checkpoint), as `work` artifacts; a
//! later attempt (a retry, or a rescue after its worker died) restores it first, so it keeps every finished
//! step and resumes training from the last checkpoint copied. Cancelling sends the pipeline SIGINT: each
//! running step saves its checkpoint and stops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use repdiff_api::jobs::ReproduceParams;

use crate::worker::{Input, JobContext, JobError, Task};

/// How often the working folder's changed files are copied to the store while a step runs.
pub const SYNC_EVERY: Duration = Duration::from_secs(60);

/// Files younger than this are left for the next copy: a report being written is not copied half-done.
const SETTLE: Duration = Duration::from_secs(2);

/// What is not copied: the phantoms (generated again, identically, from the seed), a dataset's slices
/// (fetched again from the store), the cache of real-image features, and files being written; of every
/// seed's folder (`seed-K/`) too.
fn skipped(relative: &str) -> bool {
    let relative = match relative.split_once('/') {
        Some((seed, rest)) if seed.strip_prefix("seed-").is_some_and(|k| k.parse::<u64>().is_ok()) => rest,
        _ => relative,
    };
    relative.starts_with("data/")
        || relative.starts_with("feature-cache/")
        || relative.ends_with(".tmp")
        || relative.ends_with(".partial")
}

/// The arguments of `repdiff reproduce` after the data and folders.
fn arguments(p: &ReproduceParams) -> Vec<String> {
    let mut args = vec![
        "--preset".to_string(),
        p.preset.clone(),
        "--downstream-site".into(),
        p.downstream_site.to_string(),
        "--jobs".into(),
        p.jobs.to_string(),
        "--seed".into(),
        p.seed.to_string(),
    ];
    for (flag, value) in [
        ("--phantoms", p.phantoms),
        ("--pretrain-steps", p.pretrain_steps),
        ("--finetune-steps", p.finetune_steps),
        ("--supervised-epochs", p.supervised_epochs),
        ("--draws", p.draws),
        ("--eval-samples", p.eval_samples),
        ("--class-samples", p.class_samples),
        ("--seeds", p.seeds),
    ] {
        if let Some(v) = value {
            args.extend([flag.to_string(), v.to_string()]);
        }
    }
    if let Some(precision) = p.matmul_precision {
        args.extend(["--matmul-precision".to_string(), super::inputs::matmul_precision(precision).name().to_string()]);
    }
    args
}

pub struct Reproduce {
    pub weights_dir: PathBuf,
    /// The `repdiff` binary that runs the pipeline.
    pub exe: PathBuf,
}

impl Task for Reproduce {
    type Spec = ReproduceParams;

    fn reads(&self, p: &ReproduceParams) -> Vec<Input> {
        p.dataset.map(Input::Dataset).into_iter().collect()
    }

    fn run(&self, p: ReproduceParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let out = ctx.scratch.join("reproduce");
        let mut work = WorkFolder { root: out.clone(), copied: HashMap::new() };
        let restored = work.restore(ctx)?;
        if restored > 0 {
            ctx.log("info", &format!("restored {restored} files of the earlier attempt: finished steps are kept"));
        }
        let mut args = vec!["reproduce".to_string(), "--out".into(), out.to_string_lossy().into_owned()];
        if let Some(dataset) = p.dataset {
            ctx.progress(0, 1, "fetching the dataset's scans");
            let manifest = super::inputs::fetch_scans(ctx, dataset, None)?;
            let folder = manifest.parent().unwrap_or(&ctx.scratch).to_string_lossy().into_owned();
            args.extend(["--data".to_string(), folder]);
        }
        args.extend(["--weights-dir".to_string(), self.weights_dir.to_string_lossy().into_owned()]);
        args.extend(arguments(&p));
        ctx.progress(0, 1, "preparing the data, the split and the latents");
        ctx.log("info", &format!("$ repdiff {}", args[..].join(" ")));
        let outcome = run_pipeline(ctx, &self.exe, &args, &mut work);
        // Whatever happened, what the pipeline finished goes to the store for the next attempt.
        let synced = work.sync(ctx, true);
        let ended = outcome?;
        synced?;
        match ended {
            Ended::Cancelled => Err(JobError::Cancelled),
            Ended::Succeeded(steps) => finish(ctx, &out, steps),
        }
    }
}

enum Ended {
    /// With the number of steps the pipeline ran.
    Succeeded(u64),
    Cancelled,
}

/// Runs `repdiff ARGS`, its lines to the job's logs and progress, copying the working folder as it goes;
/// SIGINT to the pipeline when the job is cancelled.
fn run_pipeline(ctx: &mut JobContext, exe: &Path, args: &[String], work: &mut WorkFolder) -> Result<Ended, JobError> {
    let mut command = Command::new(exe);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    #[cfg(unix)]
    {
        // Its own process group, its steps in it too: one signal reaches them all.
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    crate::process::die_with_parent(&mut command);
    let mut child = command.spawn().map_err(|e| JobError::Permanent(format!("cannot start {}: {e}", exe.display())))?;
    let (lines, received) = mpsc::channel::<String>();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(lines);
    let mut last_sync = Instant::now();
    let mut step_finished: Option<Instant> = None;
    let mut signalled = false;
    let mut steps = 0;
    // The last lines, for the error of a failed run.
    let mut tail: Vec<String> = Vec::new();
    loop {
        match received.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                if let Some(progress) = line.strip_prefix(crate::process::PIPELINE_PROGRESS) {
                    if let Some((done, total, what)) = parse_progress(progress) {
                        ctx.progress(done, total, what);
                        steps = total;
                        if done > 0 {
                            // The finished step's files, once they have settled.
                            step_finished.get_or_insert_with(Instant::now);
                        }
                    }
                    continue;
                }
                if line.trim().is_empty() {
                    continue;
                }
                ctx.log("info", &line);
                if tail.len() == 20 {
                    tail.remove(0);
                }
                tail.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if ctx.cancel.is_cancelled() && !signalled {
            signalled = true;
            ctx.log("info", "stopping: every running step saves its checkpoint");
            #[cfg(unix)]
            // SAFETY: signals the process group the child leads.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGINT);
            }
            #[cfg(not(unix))]
            let _ = child.kill();
        }
        if last_sync.elapsed() >= SYNC_EVERY || step_finished.is_some_and(|at| at.elapsed() > SETTLE) {
            // Files that had only just changed are copied once they settle.
            let left = work.sync_while_running(ctx);
            last_sync = Instant::now();
            step_finished = left.then(Instant::now);
        }
    }
    let status = child.wait().map_err(|e| JobError::Retryable(format!("waiting for the pipeline: {e}")))?;
    if signalled {
        return Ok(Ended::Cancelled);
    }
    if status.success() {
        return Ok(Ended::Succeeded(steps));
    }
    // The error the pipeline printed last, else its last lines.
    let message = match tail.iter().rposition(|l| l.starts_with("error: ")) {
        Some(i) => tail[i..].join("\n"),
        None => tail[tail.len().saturating_sub(5)..].join("\n"),
    };
    let message = format!("the pipeline failed ({status}): {message}");
    // 2: the command line was refused, which no retry changes.
    Err(if status.code() == Some(2) { JobError::Permanent(message) } else { JobError::Retryable(message) })
}

/// `3/17 pre-train (rep)` as (3, 17, "pre-train (rep)").
fn parse_progress(text: &str) -> Option<(u64, u64, &str)> {
    let (counts, what) = text.split_once(' ').unwrap_or((text, ""));
    let (done, total) = counts.split_once('/')?;
    Some((done.parse().ok()?, total.parse().ok()?, what))
}

/// The finished pipeline's tables as the result; the report and figures as artifacts.
fn finish(ctx: &mut JobContext, out: &Path, steps: u64) -> Result<serde_json::Value, JobError> {
    let read = |name: &str| {
        std::fs::read_to_string(out.join(name))
            .map_err(|e| JobError::Retryable(format!("the pipeline wrote no {name}: {e}")))
    };
    let report: repdiff_api::ReproduceReport =
        serde_json::from_str(&read("table6.json")?).map_err(|e| JobError::Retryable(format!("table6.json: {e}")))?;
    ctx.publish(&out.join("table6.md"), "table6.md", "report", "text/markdown", serde_json::json!({}))?;
    ctx.publish(&out.join("table6.json"), "table6.json", "report_data", "application/json", serde_json::json!({}))?;
    let figure = out.join("counterfactuals/counterfactuals.png");
    if figure.exists() {
        let title = "Counterfactuals of test scans: original | class 0 | class 1 | difference";
        ctx.publish(&figure, "counterfactuals.png", "figure", "image/png", serde_json::json!({ "title": title }))?;
    }
    ctx.progress(steps.max(1), steps.max(1), "steps: the pipeline is done");
    serde_json::to_value(report).map_err(|e| JobError::Permanent(format!("the report: {e}")))
}

/// The pipeline's working folder and what of it the store holds (size and time of each file copied).
struct WorkFolder {
    root: PathBuf,
    copied: HashMap<String, (u64, SystemTime)>,
}

impl WorkFolder {
    /// Downloads the files earlier attempts copied; returns how many.
    fn restore(&mut self, ctx: &mut JobContext) -> Result<usize, JobError> {
        let stored = ctx.block_on(crate::artifacts::for_job(ctx.pool(), ctx.job.id, Some("work")))?;
        for artifact in &stored {
            let Some(relative) = artifact.meta.get("path").and_then(|p| p.as_str()) else { continue };
            if relative.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
                continue;
            }
            let local = self.root.join(relative);
            ctx.block_on(ctx.storage.download(&artifact.key, &local))?;
            self.copied.insert(relative.to_string(), stamp(&local)?);
        }
        Ok(stored.len())
    }

    /// [`WorkFolder::sync`] while the pipeline runs: a failure is logged and the next copy tries again
    /// (a lost lease cancels the job, which stops the pipeline). Returns whether files were left for
    /// having changed just now.
    fn sync_while_running(&mut self, ctx: &mut JobContext) -> bool {
        match self.sync(ctx, false) {
            Ok(left) => left > 0,
            Err(e) => {
                ctx.log("warn", &format!("copying the working files to the store: {e}"));
                true
            }
        }
    }

    /// Copies the files that are new or changed since the last copy to the store, oldest first (what a
    /// step finished goes before what depends on it). While the pipeline runs (`finished` false) a file
    /// that changed in the last [`SETTLE`] is left for the next copy, as one being written is not copied
    /// half-done; returns how many were left.
    fn sync(&mut self, ctx: &mut JobContext, finished: bool) -> Result<usize, JobError> {
        let mut files = Vec::new();
        list_files(&self.root, &self.root, &mut files);
        let mut changed: Vec<_> = files
            .into_iter()
            .filter(|(relative, _)| !skipped(relative))
            .filter_map(|(relative, local)| stamp(&local).ok().map(|s| (relative, local, s)))
            .filter(|(relative, _, stamp)| self.copied.get(relative) != Some(stamp))
            .collect();
        changed.sort_by_key(|(_, _, (_, modified))| *modified);
        let now = SystemTime::now();
        let mut left = 0;
        for (relative, local, stamp) in changed {
            if !finished && now.duration_since(stamp.1).map_or(true, |age| age < SETTLE) {
                left += 1;
                continue;
            }
            let meta = serde_json::json!({ "path": relative });
            ctx.publish(&local, &format!("work/{relative}"), "work", "application/octet-stream", meta)?;
            self.copied.insert(relative, stamp);
        }
        Ok(left)
    }
}

fn stamp(path: &Path) -> Result<(u64, SystemTime), JobError> {
    let meta = std::fs::metadata(path).map_err(|e| JobError::Retryable(format!("{}: {e}", path.display())))?;
    Ok((meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// Every file under `dir`, with its path relative to `root` ('/'-separated).
fn list_files(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => list_files(root, &path, files),
            Ok(t) if t.is_file() => {
                if let Ok(relative) = path.strip_prefix(root) {
                    let parts: Vec<_> = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect();
                    files.push((parts.join("/"), path));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: serde_json::Value) -> Result<(), String> {
        let spec = repdiff_api::jobs::JobSpec::from_parts("reproduce", json)?;
        spec.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn parameters_are_checked_as_the_command_would() {
        assert!(params(serde_json::json!({})).is_ok());
        assert!(params(serde_json::json!({ "preset": "huge" })).unwrap_err().starts_with("preset: "));
        assert!(params(serde_json::json!({ "dataset": 3, "phantoms": 100 })).unwrap_err().contains("not both"));
        assert_eq!(params(serde_json::json!({ "draws": 0 })).unwrap_err(), "draws: is 1 to 4096, got 0");
        assert_eq!(params(serde_json::json!({ "jobs": 0 })).unwrap_err(), "jobs: is 1 to 64, got 0");
        assert_eq!(params(serde_json::json!({ "seeds": 0 })).unwrap_err(), "seeds: is 1 to 100, got 0");
        assert!(params(serde_json::json!({ "drawz": 3 })).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn the_arguments_carry_every_given_setting_and_no_other() {
        let p: ReproduceParams =
            serde_json::from_value(serde_json::json!({ "phantoms": 96, "draws": 2, "eval_samples": 0, "seeds": 3 }))
                .unwrap();
        let args = arguments(&p).join(" ");
        assert_eq!(
            args,
            "--preset tiny-cpu --downstream-site 1 --jobs 2 --seed 0 --phantoms 96 --draws 2 --eval-samples 0 --seeds 3"
        );
    }

    #[test]
    fn progress_lines_are_read_and_other_lines_are_not() {
        assert_eq!(parse_progress("3/17 pre-train (rep)"), Some((3, 17, "pre-train (rep)")));
        assert_eq!(parse_progress("0/9"), Some((0, 9, "")));
        assert_eq!(parse_progress("three of 17"), None);
    }

    #[test]
    fn regenerable_and_half_written_files_are_not_copied() {
        for path in [
            "data/manifest.csv",
            "feature-cache/x.safetensors",
            "pretrain-rep/checkpoint.safetensors.tmp",
            "seed-3/data/manifest.csv",
            "seed-3/feature-cache/x.safetensors",
        ] {
            assert!(skipped(path), "{path}");
        }
        for path in [
            "pretrain-rep/checkpoint.safetensors",
            "classify-rep.json",
            "latents-train.safetensors",
            "seed-3/pretrain-rep/checkpoint.safetensors",
            "seed-x/data/manifest.csv",
        ] {
            assert!(!skipped(path), "{path}");
        }
    }
}
