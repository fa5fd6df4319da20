//! `noop`: does nothing for `sleep_ms` (in cancellable slices). For benchmarking the queue and checking a
//! deployment's workers end to end without a model.

use serde::Deserialize;

use crate::worker::{Handler, JobContext, JobError};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoopParams {
    pub sleep_ms: u64,
}

pub struct Noop;

impl Handler for Noop {
    fn validate(&self, params: &serde_json::Value) -> Result<(), String> {
        let p: NoopParams = super::parse("noop", params)?;
        if p.sleep_ms > 3_600_000 {
            return Err("sleep_ms is at most an hour".into());
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
        Ok(serde_json::json!({ "slept_ms": p.sleep_ms }))
    }
}
