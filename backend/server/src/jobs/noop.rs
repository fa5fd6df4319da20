//! `noop`: does nothing for `sleep_ms` (in cancellable slices). For benchmarking the queue and checking a
//! deployment's workers end to end without a model.

use repdiff_api::jobs::{Invalid, NoopParams};

use crate::worker::{JobContext, JobError, Task};

/// Whether this process accepts the test hooks (`noop`'s `abort`).
fn test_hooks() -> bool {
    std::env::var("REPDIFF_TEST_HOOKS").is_ok_and(|v| v == "1")
}

pub struct Noop;

impl Task for Noop {
    type Spec = NoopParams;

    fn check(&self, p: &NoopParams) -> Result<(), Invalid> {
        match p.abort && !test_hooks() {
            true => Err(Invalid::new("abort", "a test hook, off in this deployment")),
            false => Ok(()),
        }
    }

    fn run(&self, p: NoopParams, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
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
