//! `repdiff serve`'s worker slots run in a child process (`repdiff worker`), supervised, so that no job can
//! take the API server down: an allocation that fails aborts the process that makes it, and a panic in a
//! native library or a GPU driver can end it too. When the child dies, the jobs it was running end with
//! the cause (the signal or exit status and its last words on stderr, such as "memory allocation of
//! 4000000000000 bytes failed") instead of "stopped heartbeating" two minutes later, and a new child takes
//! the next jobs. A child stopped from outside (SIGTERM, SIGINT) gives its jobs back to the queue itself;
//! one killed outright (SIGKILL, as the kernel's OOM killer does) has its jobs retried while attempts
//! remain.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

use crate::queue::{self, Outcome};

/// How to start the worker process.
#[derive(Clone, Debug)]
pub struct WorkerProcess {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// Lines of the child's stderr kept to explain its death.
const LAST_WORDS: usize = 40;
/// How long a stopping child may take to checkpoint and give its jobs back before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(120);

/// Runs `process` until `shutdown` turns true, starting a new one whenever it dies (after 1 s, doubling up
/// to a minute while children die young). Returns once the last child has stopped. Blocking: run it on a
/// thread of its own; `runtime` runs its database calls.
pub fn supervise(
    pool: PgPool,
    process: WorkerProcess,
    runtime: tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
) {
    let host = crate::worker::hostname();
    let mut backoff = Duration::from_secs(1);
    while !*shutdown.borrow() {
        let mut command = Command::new(&process.exe);
        command.args(&process.args).stdin(Stdio::null()).stderr(Stdio::piped());
        crate::process::die_with_parent(&mut command);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!("cannot start the worker process {}: {e}", process.exe.display());
                if wait_or_shutdown(&shutdown, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        let worker = format!("{host}-{}", child.id());
        tracing::info!("worker process {worker} started");
        let (last_words, reader) = relay_stderr(&mut child);
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if *shutdown.borrow() => {
                    stop(&mut child);
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => {
                    tracing::error!("waiting for worker process {worker}: {e}");
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        let _ = reader.join();
        let Some(status) = status else { break };
        if *shutdown.borrow() && status.success() {
            break;
        }
        let cause = describe(&status, &last_words.lock().expect("last words"));
        tracing::error!("worker process {worker} ended: {cause}");
        if let Err(e) = runtime.block_on(end_jobs_of(&pool, &worker, &status, &cause)) {
            tracing::error!("recording the end of worker {worker}'s jobs: {e} (the rescuer will re-queue them)");
        }
        backoff = if started.elapsed() > Duration::from_secs(60) { Duration::from_secs(1) } else { backoff };
        if wait_or_shutdown(&shutdown, backoff) {
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// Sleeps `duration` unless `shutdown` turns true first; whether it did.
fn wait_or_shutdown(shutdown: &watch::Receiver<bool>, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if *shutdown.borrow() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    *shutdown.borrow()
}

/// Copies the child's stderr to ours line by line, keeping the last [`LAST_WORDS`].
fn relay_stderr(child: &mut Child) -> (Arc<Mutex<VecDeque<String>>>, std::thread::JoinHandle<()>) {
    let last_words: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let stderr = child.stderr.take();
    let kept = last_words.clone();
    let reader = std::thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            let mut kept = kept.lock().expect("last words");
            if kept.len() == LAST_WORDS {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    });
    (last_words, reader)
}

/// Asks the child to stop (its jobs checkpoint and go back to the queue), and kills it after the grace.
fn stop(child: &mut Child) {
    #[cfg(unix)]
    // SAFETY: signalling our own child, which has not been waited for yet.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let until = Instant::now() + STOP_GRACE;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::warn!("the worker process did not stop within {STOP_GRACE:?}; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// The signal that ended the process, if one did.
fn signal_of(status: &ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal()
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

fn signal_name(signal: i32) -> &'static str {
    #[cfg(unix)]
    {
        match signal {
            libc::SIGABRT => "SIGABRT",
            libc::SIGKILL => "SIGKILL",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            _ => "a signal",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = signal;
        "a signal"
    }
}

/// "killed by signal 6 (SIGABRT): memory allocation of 4000000000000 bytes failed": how the process
/// ended, with the last line on its stderr that says why (a failed allocation, a panic, a fatal error).
pub fn describe(status: &ExitStatus, last_words: &VecDeque<String>) -> String {
    let how = match (signal_of(status), status.code()) {
        (Some(signal), _) => format!("killed by signal {signal} ({})", signal_name(signal)),
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => "ended".to_string(),
    };
    const REASONS: [&str; 5] =
        ["memory allocation of", "panicked at", "fatal runtime error", "out of memory", "CUDA_ERROR"];
    let why = last_words.iter().rev().find(|line| REASONS.iter().any(|r| line.contains(r)));
    match why {
        Some(line) => format!("{how}: {}", line.trim()),
        None => how,
    }
}

/// Ends the running jobs of the dead worker `worker`: back to the queue without using an attempt when it
/// was stopped (SIGTERM, SIGINT), retried while attempts remain when it was killed outright or shared its
/// process with other jobs, and failed for good when it alone was running in a process that aborted or
/// crashed (the same parameters would end the same way).
async fn end_jobs_of(pool: &PgPool, worker: &str, status: &ExitStatus, cause: &str) -> sqlx::Result<()> {
    let running = queue::running_on(pool, worker).await?;
    let signal = signal_of(status);
    #[cfg(unix)]
    let (stopped, killed) = (matches!(signal, Some(libc::SIGTERM | libc::SIGINT)), signal == Some(libc::SIGKILL));
    #[cfg(not(unix))]
    let (stopped, killed) = (false, signal.is_some());
    for &id in &running {
        if stopped {
            queue::log(pool, id, "warn", &format!("its worker process was stopped ({cause}); back to the queue"))
                .await?;
            queue::release(pool, id, worker).await?;
            continue;
        }
        let message = match running.len() {
            1 => format!("the worker process running this job died: {cause}"),
            n => format!("the worker process running this job and {} other(s) died: {cause}", n - 1),
        };
        queue::log(pool, id, "error", &message).await?;
        let outcome = match running.len() == 1 && !killed {
            true => Outcome::FailedPermanently(message),
            false => Outcome::Failed(message),
        };
        queue::finish(pool, id, worker, &outcome).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_death_is_described_with_its_signal_and_last_words() {
        use std::os::unix::process::ExitStatusExt;
        let words: VecDeque<String> = ["INFO claimed job 7", "memory allocation of 4000000000000 bytes failed", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            describe(&ExitStatus::from_raw(libc::SIGABRT), &words),
            "killed by signal 6 (SIGABRT): memory allocation of 4000000000000 bytes failed"
        );
        assert_eq!(describe(&ExitStatus::from_raw(3 << 8), &VecDeque::new()), "exited with status 3");
    }
}
