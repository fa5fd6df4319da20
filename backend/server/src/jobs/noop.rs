//! `noop`: does nothing for `sleep_ms` (in cancellable slices). For benchmarking the queue and checking a
//! deployment's workers end to end without a model.

use serde::Deserialize;

use crate::worker::{Handler, JobContext, JobError};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoopParams {
    pub sleep_ms: u64,
    /// After sleeping, abort the worker process (as a failed allocation does): how the tests check that a
    /// job's crash is the job's alone. Accepted only where REPDIFF_TEST_HOOKS=1.
    pub abort: bool,
}

/// Whether this process accepts the test hooks (`noop`'s `abort`).
fn test_hooks() -> bool {
    std::env::var("REPDIFF_TEST_HOOKS").is_ok_and(|v| v == "1")
}

pub struct Noop;

impl Handler for Noop {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: NoopParams = super::parse("noop", params)?;
        if p.sleep_ms > 3_600_000 {
            return Err("sleep_ms is at most an hour".into());
        }
        if p.abort && !test_hooks() {
            return Err("abort is a test hook, off in this deployment".into());
        }
        Ok(())
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let p: NoopParams = ctx.params()?;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(p.sleep_ms);
        while std::time::Instant::now() < until {
            if ctx.cancel.is_cancelled() {
                return Err(JobError::Cancelled);
            }
            std::thread::sleep(
                until.saturating_duration_since(std::time::Instant::now()).min(std::time::Duration::from_millis(20)),
            );
        }
        if p.abort && test_hooks() {
            eprintln!("memory allocation of 4000000000000 bytes failed (noop's abort test hook)");
            std::process::abort();
        }
        Ok(serde_json::json!({ "slept_ms": p.sleep_ms }))
    }
}
