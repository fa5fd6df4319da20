//! `repdiff run SPEC.json`: one job of any kind from its typed spec, exactly as `POST /api/v1/jobs` takes
//! it (`{"kind": "supervised", "params": {...}}`, with `tags`, `depends_on` and the rest), submitted with
//! the API's checks to the queue of a data folder (`repdiff serve`'s: its datasets and runs can be named,
//! as `--as` one of its users) and run by a worker in this process. Prints the job's progress and log
//! lines, then its result; `--out` receives the result and the artifacts. The same spec again finds the
//! same job: an interrupted one goes on from its last checkpoint, a finished one is shown again.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use repdiff_api::{JobState, SubmitJob};
use repdiff_server::queue;

use super::local::{Ended, Local, on_local_queue};
use super::worker::WorkerArgs;

#[derive(Args)]
pub struct RunArgs {
    /// The job as JSON: the body of `POST /api/v1/jobs` (`kind`, `params`, optionally `tags`,
    /// `experiment_id`, `priority`, `max_attempts`, `depends_on`).
    spec: PathBuf,
    /// Submit as this user of the data folder (their datasets and runs; default its own `cli` user).
    #[arg(long = "as")]
    user: Option<String>,
    /// Write the result (result.json) and the job's artifacts here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    queue: WorkerArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    super::init_logging_from(tracing_subscriber::filter::LevelFilter::WARN);
    let text = std::fs::read_to_string(&args.spec).with_context(|| format!("reading {}", args.spec.display()))?;
    let job: SubmitJob = serde_json::from_str(&text).with_context(|| format!("{}", args.spec.display()))?;
    on_local_queue(args.queue.clone(), async |local| run_job(local, &args, &job).await)
}

/// Submits `job` (or finds it, submitted before with the same spec), runs it and shows its result;
/// returns whether it was interrupted.
async fn run_job(local: &Local, args: &RunArgs, job: &SubmitJob) -> Result<bool> {
    let user = local.user(args.user.as_deref()).await?;
    let key = format!("run:{}", serde_json::to_string(job)?);
    let (submitted, created) = local.submit(&user, job, &key).await?;
    let id = submitted.id;
    if created {
        println!("Job {id} ({}) submitted as {}", submitted.kind, user.username);
    } else {
        println!("Job {id} ({}), submitted before with this spec, is {}", submitted.kind, submitted.state.as_str());
        if matches!(submitted.state, JobState::Failed | JobState::Cancelled) {
            println!("It runs again: a training job goes on from its last checkpoint");
            queue::retry(&local.pool, id).await?;
        }
    }
    let ended = match local.follow(id).await? {
        Ended::Interrupted => return Ok(true),
        Ended::Finished(ended) => ended,
    };
    if ended.state != JobState::Succeeded {
        bail!("job {id} {}: {}", ended.state.as_str(), ended.error.unwrap_or_default());
    }
    let result = ended.result.unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("result.json"), serde_json::to_string_pretty(&result)?)?;
        let artifacts = repdiff_server::artifacts::for_job(&local.pool, id, None).await?;
        for artifact in &artifacts {
            let name = artifact.key.rsplit('/').next().unwrap_or(&artifact.key);
            local.storage.download(&artifact.key, &out.join(name)).await?;
        }
        println!("Wrote result.json and {} artifact(s) to {}", artifacts.len(), out.display());
    }
    Ok(false)
}
