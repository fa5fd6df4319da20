//! How `repdiff reproduce` runs its steps: one after the other in this process, or several at once as
//! child `repdiff` processes, each started when its prerequisites are done, with its share of the cores.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use repdiff_engine::train::CancelToken;
use repdiff_server::process::PIPELINE_PROGRESS;

use super::{path, strings};

/// Runs `repdiff ARGS` in this process, after printing it.
pub(super) fn step(title: &str, args: &[String], timings: &mut Vec<(String, f64)>) -> Result<()> {
    println!("\n== {title}\n$ repdiff {}", args.join(" "));
    let started = Instant::now();
    let cli = crate::cli::Cli::try_parse_from(std::iter::once("repdiff".to_string()).chain(args.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("{title}: {e}"))?;
    crate::cli::run(cli).with_context(|| title.to_string())?;
    timings.push((title.to_string(), started.elapsed().as_secs_f64()));
    Ok(())
}

/// Where a seed's steps stand among all the seeds' of a run (`--seeds`): how many steps the seeds before
/// it finished, and how many seeds come after it (counted as many steps as this one plans).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Tally {
    pub before: usize,
    pub later_seeds: usize,
}

impl Tally {
    /// Announces a finished step (`progress: 3/17 pre-train (rep)`), as [`PIPELINE_PROGRESS`] says, `done`
    /// of this seed's `total`.
    fn announce(self, done: usize, total: usize, what: &str) {
        let (done, total) = (self.before + done, self.before + total * (1 + self.later_seeds));
        println!("{PIPELINE_PROGRESS}{done}/{total} {what}");
    }
}

const INTERRUPTED: &str = "interrupted: finished steps and checkpoints are kept; run the same command again to go on";

/// One `repdiff` command of the pipeline.
pub(super) struct Step {
    /// Names the step for its prerequisites and tags its output lines when steps run side by side.
    tag: String,
    title: String,
    args: Vec<String>,
    /// Tags of the steps that must have finished first (a step not in the plan, done by an earlier run,
    /// counts as finished).
    after: Vec<String>,
}

impl Step {
    pub(super) fn new(tag: impl Into<String>, title: impl Into<String>, args: Vec<String>, after: &[&str]) -> Self {
        let after = after.iter().map(|t| t.to_string()).collect();
        Step { tag: tag.into(), title: title.into(), args, after }
    }

    /// `repdiff ARGS --out REPORT`, or nothing when REPORT exists (a finished step of an earlier run).
    pub(super) fn unless_done(
        report: &Path,
        tag: impl Into<String>,
        title: impl Into<String>,
        mut args: Vec<String>,
        after: &[&str],
    ) -> Option<Self> {
        if report.exists() {
            return None;
        }
        args.extend(strings(&["--out", &path(report)]));
        Some(Step::new(tag, title, args, after))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Progress {
    Waiting,
    Running,
    Done,
    /// Failed, or left out because a prerequisite failed.
    Failed,
}

/// What the workers share: each step's progress, the finished steps' times, the failures.
struct Board {
    progress: Vec<Progress>,
    timings: Vec<(String, f64)>,
    failures: Vec<anyhow::Error>,
}

impl Board {
    /// The first waiting step whose prerequisites are done, marked running. Steps whose prerequisites
    /// failed are marked failed on the way.
    fn claim(&mut self, steps: &[Step]) -> Option<usize> {
        let progress_of = |board: &Board, tag: &str| steps.iter().position(|s| s.tag == tag).map(|i| board.progress[i]);
        for (i, step) in steps.iter().enumerate() {
            if self.progress[i] != Progress::Waiting {
                continue;
            }
            let needs: Vec<_> = step.after.iter().map(|t| (t, progress_of(self, t))).collect();
            if let Some((failed, _)) = needs.iter().find(|(_, p)| *p == Some(Progress::Failed)) {
                self.progress[i] = Progress::Failed;
                self.failures.push(anyhow::anyhow!("{} left out: it needs {failed}, which failed", step.title));
            } else if needs.iter().all(|(_, p)| p.is_none_or(|p| p == Progress::Done)) {
                self.progress[i] = Progress::Running;
                return Some(i);
            }
        }
        None
    }
}

/// Runs the steps: with `jobs` 1 in order in this process; else up to `jobs` at once, each the first step
/// (in order) whose prerequisites are done, as a child `repdiff` process with its share of the cores and
/// its output lines tagged. A failed step stops only what needs it: the others finish what a rerun keeps.
pub(super) fn run_steps(steps: &[Step], jobs: usize, timings: &mut Vec<(String, f64)>, tally: Tally) -> Result<()> {
    tally.announce(0, steps.len(), "steps planned");
    if jobs <= 1 || steps.len() <= 1 {
        for (i, s) in steps.iter().enumerate() {
            step(&s.title, &s.args, timings)?;
            tally.announce(i + 1, steps.len(), &s.title);
            if crate::cli::interrupted() {
                bail!(INTERRUPTED);
            }
        }
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / jobs).max(1);
    println!("\n(up to {jobs} steps at once, {threads} CPU thread(s) each)");
    let board =
        Mutex::new(Board { progress: vec![Progress::Waiting; steps.len()], timings: Vec::new(), failures: Vec::new() });
    let changed = Condvar::new();
    // Ctrl-C reaches the running steps too (one process group): they save and stop; here it only stops
    // starting new ones. A second Ctrl-C kills.
    let interrupted = crate::cli::interrupt::cancel_on_signal();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(steps.len()) {
            scope.spawn(|| {
                while let Some(i) = next_step(&board, &changed, steps, &interrupted) {
                    let started = Instant::now();
                    let result = run_child(&steps[i], threads);
                    let mut board = board.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    match result {
                        Ok(()) => {
                            board.progress[i] = Progress::Done;
                            board.timings.push((steps[i].title.clone(), started.elapsed().as_secs_f64()));
                            tally.announce(board.timings.len(), steps.len(), &steps[i].title);
                        }
                        Err(e) => {
                            board.progress[i] = Progress::Failed;
                            board.failures.push(e);
                        }
                    }
                    changed.notify_all();
                }
            });
        }
    });
    let board = board.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    timings.extend(board.timings);
    if interrupted.is_cancelled() {
        bail!(INTERRUPTED);
    }
    if board.failures.is_empty() {
        return Ok(());
    }
    bail!("{}", board.failures.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("\n"))
}

/// Waits for the next step this worker may start and claims it; None once none is left to start, or after
/// an interrupt.
fn next_step(board: &Mutex<Board>, changed: &Condvar, steps: &[Step], interrupted: &CancelToken) -> Option<usize> {
    let mut board = board.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        if interrupted.is_cancelled() {
            break;
        }
        if let Some(i) = board.claim(steps) {
            return Some(i);
        }
        if !board.progress.contains(&Progress::Waiting) {
            break;
        }
        board = changed.wait(board).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    // Nothing left to start: the other workers may be waiting on what was just settled.
    changed.notify_all();
    None
}

/// Runs a step as a child `repdiff` process with `threads` CPU threads, its output lines tagged.
fn run_child(s: &Step, threads: usize) -> Result<()> {
    let tag = &s.tag;
    println!("\n[{tag}] == {}\n[{tag}] $ repdiff {}", s.title, s.args.join(" "));
    let exe = std::env::current_exe().context("locating the repdiff binary")?;
    let mut command = Command::new(exe);
    command.args(&s.args).stdout(Stdio::piped()).stderr(Stdio::piped());
    repdiff_server::process::die_with_parent(&mut command);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        command.env("RAYON_NUM_THREADS", threads.to_string());
    }
    let mut child = command.spawn().with_context(|| format!("starting {}", s.title))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|scope| {
        scope.spawn(|| forward(stdout, tag, false));
        scope.spawn(|| forward(stderr, tag, true));
    });
    let status = child.wait().with_context(|| s.title.clone())?;
    if !status.success() {
        bail!("{} failed ({status}); its output is above, tagged [{tag}]", s.title);
    }
    Ok(())
}

/// Copies a child's output line by line, each line tagged.
fn forward(stream: Option<impl Read>, tag: &str, to_stderr: bool) {
    let Some(stream) = stream else { return };
    for line in BufReader::new(stream).split(b'\n').map_while(std::io::Result::ok) {
        let line = String::from_utf8_lossy(&line);
        let tagged = match line.trim_end() {
            "" => format!("[{tag}]"),
            text => format!("[{tag}] {text}"),
        };
        if to_stderr {
            eprintln!("{tagged}");
        } else {
            println!("{tagged}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(n: usize) -> Board {
        Board { progress: vec![Progress::Waiting; n], timings: Vec::new(), failures: Vec::new() }
    }

    #[test]
    fn steps_are_claimed_in_order_once_their_prerequisites_are_done() {
        let steps = [
            Step::new("pretrain", "pre-train", vec![], &[]),
            Step::new("finetune", "fine-tune", vec![], &["pretrain"]),
            Step::new("baseline", "baseline", vec![], &[]),
            // Done by an earlier run, so not in the plan: counts as finished.
            Step::new("probe", "probe", vec![], &["an earlier run's step"]),
        ];
        let mut b = board(steps.len());
        assert_eq!(b.claim(&steps), Some(0));
        assert_eq!(b.claim(&steps), Some(2), "the fine-tuning waits for its pre-training");
        assert_eq!(b.claim(&steps), Some(3));
        assert_eq!(b.claim(&steps), None);
        b.progress[0] = Progress::Done;
        assert_eq!(b.claim(&steps), Some(1));
        assert!(b.failures.is_empty());
    }

    #[test]
    fn a_failed_step_leaves_out_what_needs_it_and_nothing_else() {
        let steps = [
            Step::new("pretrain", "pre-train", vec![], &[]),
            Step::new("finetune", "fine-tune", vec![], &["pretrain"]),
            Step::new("classify", "classify", vec![], &["finetune"]),
            Step::new("baseline", "baseline", vec![], &[]),
        ];
        let mut b = board(steps.len());
        assert_eq!(b.claim(&steps), Some(0));
        b.progress[0] = Progress::Failed;
        assert_eq!(b.claim(&steps), Some(3), "the baseline still runs");
        assert_eq!(b.progress[..3], [Progress::Failed; 3]);
        let messages: Vec<String> = b.failures.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages,
            [
                "fine-tune left out: it needs pretrain, which failed",
                "classify left out: it needs finetune, which failed"
            ]
        );
        assert_eq!(b.claim(&steps), None);
    }
}
