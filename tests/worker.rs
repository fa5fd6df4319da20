//! Workers against a real PostgreSQL (one database per test): wake-ups by NOTIFY and by polling alone,
//! cancellation of running jobs, retries, panics, each job's own compute threads, graceful shutdown,
//! rescue of a dead worker's job, and a `repdiff worker` process killed with SIGKILL mid-training whose job
//! resumes from its checkpoint on another worker (and one killed while measuring a checkpoint, whose
//! successor measures it).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TestDb;
use repdiff_server::jobs::{self, JobSettings};
use repdiff_server::queue::{self, Job, JobState, NewJob};
use repdiff_server::storage::Storage;
use repdiff_server::worker::{Handler, JobContext, JobError, Registry, Worker, WorkerOptions};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("repdiff-worker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(dir: &Path, id: &str) -> WorkerOptions {
    let mut options = WorkerOptions::new(dir.join("scratch"));
    options.id = format!("{id}-{}", std::process::id());
    options.poll_interval = Duration::from_secs(30);
    options.lease = Duration::from_secs(30);
    options.rescue_interval = Duration::from_secs(30);
    options
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("worker stops").unwrap().unwrap();
    }
}

fn start(pool: &PgPool, dir: &Path, registry: Registry, options: WorkerOptions) -> Running {
    let storage = Storage::local(&dir.join("store")).unwrap();
    let (stop, shutdown) = watch::channel(false);
    let worker = Worker::new(pool.clone(), storage, registry, options);
    Running { stop, task: tokio::spawn(worker.run(shutdown)) }
}

async fn wait_for(pool: &PgPool, id: i64, within: Duration, done: impl Fn(&Job) -> bool) -> Job {
    let started = Instant::now();
    loop {
        let job = queue::get(pool, id).await.unwrap().unwrap();
        if done(&job) {
            return job;
        }
        assert!(
            started.elapsed() < within,
            "job {id} still {:?} (attempt {}) after {within:?}",
            job.state,
            job.attempt
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The messages of a job's log at `level`, oldest first.
async fn log_lines(pool: &PgPool, id: i64, level: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT message FROM job_logs WHERE job_id = $1 AND level = $2 ORDER BY id")
        .bind(id)
        .bind(level)
        .fetch_all(pool)
        .await
        .unwrap()
}

fn noop(sleep_ms: u64) -> NewJob {
    NewJob::new("noop", json!({ "sleep_ms": sleep_ms }))
}

fn noops() -> Registry {
    jobs::registry(&JobSettings::default()).only(&["noop".to_string()]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_run_every_job_exactly_once() {
    let db = TestDb::new("worker_many").await;
    let dir = tempdir("many");
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut opts = options(&dir, &format!("w{w}"));
        opts.concurrency = 2;
        opts.poll_interval = Duration::from_millis(200);
        workers.push(start(&db.pool, &dir, noops(), opts));
    }
    let mut ids = Vec::new();
    for _ in 0..120 {
        ids.push(queue::submit(&db.pool, &noop(0)).await.unwrap().id);
    }
    for id in ids {
        let job = wait_for(&db.pool, id, Duration::from_secs(30), |j| j.state.is_final()).await;
        assert_eq!((job.state, job.attempt), (JobState::Succeeded, 1), "job {id}");
    }
    for w in workers {
        w.shutdown().await;
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_worker_at_once_and_polling_covers_a_missed_notify() {
    let db = TestDb::new("worker_wake").await;
    let dir = tempdir("wake");
    // Listening, with a poll interval far longer than the test: only NOTIFY can wake it in time.
    let listening = start(&db.pool, &dir, noops(), options(&dir, "listener"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = queue::submit(&db.pool, &noop(0)).await.unwrap().id;
    wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state == JobState::Succeeded).await;
    listening.shutdown().await;

    // Not listening at all (every NOTIFY missed): the poll still picks the job up.
    let mut opts = options(&dir, "poller");
    opts.listen = false;
    opts.poll_interval = Duration::from_millis(300);
    let polling = start(&db.pool, &dir, noops(), opts);
    let id = queue::submit(&db.pool, &noop(0)).await.unwrap().id;
    wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state == JobState::Succeeded).await;
    polling.shutdown().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_it_by_notify_or_by_heartbeat() {
    let db = TestDb::new("worker_cancel").await;
    let dir = tempdir("cancel");
    for listen in [true, false] {
        let mut opts = options(&dir, if listen { "cancel-listen" } else { "cancel-heartbeat" });
        opts.listen = listen;
        opts.poll_interval = Duration::from_millis(200);
        // Without NOTIFY the request arrives with the next heartbeat (every third of the lease).
        opts.lease = Duration::from_millis(900);
        let worker = start(&db.pool, &dir, noops(), opts);
        let id = queue::submit(&db.pool, &noop(60_000)).await.unwrap().id;
        wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state == JobState::Running).await;
        queue::cancel(&db.pool, id).await.unwrap();
        // The job sleeps for a minute unless stopped, so finishing within the deadline means it was stopped.
        let job = wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state.is_final()).await;
        assert_eq!(job.state, JobState::Cancelled, "listen={listen}");
        worker.shutdown().await;
    }
    db.drop().await;
}

/// Fails its first attempt, succeeds on the next.
struct Flaky;

impl Handler for Flaky {
    fn validate(&self, _: &serde_json::Value) -> Result<(), repdiff_api::jobs::Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        if ctx.job.attempt == 1 {
            return Err(JobError::Retryable("the first attempt always fails".into()));
        }
        Ok(json!({ "attempt": ctx.job.attempt }))
    }
}

struct Panics;

impl Handler for Panics {
    fn validate(&self, _: &serde_json::Value) -> Result<(), repdiff_api::jobs::Invalid> {
        Ok(())
    }

    fn run(&self, _: &mut JobContext) -> Result<serde_json::Value, JobError> {
        panic!("a bug in a handler")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_after_backoff_and_a_panic_fails_only_its_job() {
    let db = TestDb::new("worker_retry").await;
    let dir = tempdir("retry");
    let mut registry = noops();
    registry.register("flaky", Flaky).register("panics", Panics);
    let mut opts = options(&dir, "retry");
    opts.poll_interval = Duration::from_millis(100);
    let worker = start(&db.pool, &dir, registry, opts);

    let started = Instant::now();
    let id = queue::submit(&db.pool, &NewJob::new("flaky", json!({}))).await.unwrap().id;
    let job = wait_for(&db.pool, id, Duration::from_secs(10), |j| j.state.is_final()).await;
    assert_eq!((job.state, job.attempt), (JobState::Succeeded, 2));
    assert!(started.elapsed() >= Duration::from_secs(1), "the retry waited for its 1 s backoff");
    assert_eq!(log_lines(&db.pool, id, "error").await, ["the first attempt always fails"]);
    let me = format!("retry-{}", std::process::id());
    let placed = [format!("attempt 1 of 3 on worker {me}"), format!("attempt 2 of 3 on worker {me}")];
    assert_eq!(log_lines(&db.pool, id, "info").await, placed);

    let mut panicking = NewJob::new("panics", json!({}));
    panicking.max_attempts = 1;
    let id = queue::submit(&db.pool, &panicking).await.unwrap().id;
    let job = wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.as_deref().unwrap_or("").contains("panicked: a bug in a handler"), "{:?}", job.error);
    // The worker survived it.
    let id = queue::submit(&db.pool, &noop(0)).await.unwrap().id;
    wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state == JobState::Succeeded).await;
    worker.shutdown().await;
    db.drop().await;
}

/// Says where it computes: whether its handler runs inside a rayon pool, the pool's size, and the threads a
/// parallel loop of it ran on.
struct ReportsItsThreads;

impl Handler for ReportsItsThreads {
    fn validate(&self, _: &serde_json::Value) -> Result<(), repdiff_api::jobs::Invalid> {
        Ok(())
    }

    fn run(&self, _: &mut JobContext) -> Result<serde_json::Value, JobError> {
        use rayon::prelude::*;
        let loop_threads: std::collections::BTreeSet<String> = (0..64)
            .into_par_iter()
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                std::thread::current().name().unwrap_or("unnamed").to_string()
            })
            .collect();
        Ok(json!({
            "in_pool": rayon::current_thread_index().is_some(),
            "pool_threads": rayon::current_num_threads(),
            "loop_threads": loop_threads,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_computes_on_a_pool_of_its_own_with_its_share_of_the_threads() {
    let db = TestDb::new("worker_threads").await;
    let dir = tempdir("threads");
    let mut registry = noops();
    registry.register("threads", ReportsItsThreads);
    let mut opts = options(&dir, "threads");
    opts.concurrency = 2;
    opts.poll_interval = Duration::from_millis(100);
    let worker = start(&db.pool, &dir, registry, opts);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(queue::submit(&db.pool, &NewJob::new("threads", json!({}))).await.unwrap().id);
    }
    // Called outside any pool: the global pool's size, which the two jobs share.
    let share = (rayon::current_num_threads() / 2).max(1);
    for id in ids {
        let job = wait_for(&db.pool, id, Duration::from_secs(10), |j| j.state.is_final()).await;
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.error);
        let result = job.result.unwrap();
        assert_eq!(result["in_pool"], json!(true), "the handler runs on one of its pool's threads: {result}");
        assert_eq!(result["pool_threads"], json!(share), "{result}");
        let loop_threads: Vec<String> = serde_json::from_value(result["loop_threads"].clone()).unwrap();
        assert!(
            !loop_threads.is_empty() && loop_threads.iter().all(|t| t.starts_with(&format!("job-{id}-"))),
            "job {id}'s parallel loop ran on {loop_threads:?}"
        );
    }
    worker.shutdown().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_a_running_job_to_the_queue_and_a_live_worker_rescues_a_dead_ones() {
    let db = TestDb::new("worker_rescue").await;
    let dir = tempdir("rescue");
    let mut opts = options(&dir, "leaving");
    opts.poll_interval = Duration::from_millis(100);
    let worker = start(&db.pool, &dir, noops(), opts);
    let id = queue::submit(&db.pool, &noop(60_000)).await.unwrap().id;
    wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state == JobState::Running).await;
    worker.shutdown().await;
    let job = queue::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 0), "released without using an attempt");
    queue::cancel(&db.pool, id).await.unwrap();

    // A worker that claimed a job and died (its lease runs out at once): the next live worker's rescuer
    // puts it back and runs it.
    let id = queue::submit(&db.pool, &noop(0)).await.unwrap().id;
    let ghost = queue::claim(&db.pool, "ghost", &["noop".to_string()], Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(ghost.id, id);
    let mut opts = options(&dir, "rescuer");
    opts.rescue_interval = Duration::from_millis(200);
    opts.poll_interval = Duration::from_millis(100);
    let rescuer = start(&db.pool, &dir, noops(), opts);
    let job = wait_for(&db.pool, id, Duration::from_secs(5), |j| j.state.is_final()).await;
    assert_eq!((job.state, job.attempt), (JobState::Succeeded, 2));
    rescuer.shutdown().await;
    db.drop().await;
}

/// A tiny pixel-space DiT config that trains at tens of steps per second on two cores.
fn tiny_run(steps: usize, checkpoint_every: usize) -> serde_json::Value {
    let mut config = repdiff_engine::config::RunConfig::preset("tiny-cpu").unwrap();
    let m = &mut config.model;
    (m.input_size, m.patch_size, m.hidden_size, m.depth, m.num_heads) = (16, 4, 64, 2, 2);
    config.train.steps = steps;
    config.train.batch_size = 8;
    config.train.checkpoint_every = checkpoint_every;
    json!({ "config": config })
}

/// A `repdiff worker` process, killed when dropped, so a failing test leaves none behind.
struct WorkerProcess(std::process::Child);

impl std::ops::Deref for WorkerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for WorkerProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker_process(db: &TestDb, dir: &Path, lease_secs: &str) -> WorkerProcess {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_repdiff"))
        .args(["worker", "--lease-secs", lease_secs, "--poll-secs", "0.2", "--rescue-secs", "0.5"])
        .arg("--data-dir")
        .arg(dir)
        .env("DATABASE_URL", &db.url)
        .env("REPDIFF_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start repdiff worker");
    WorkerProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_training_loses_only_the_steps_since_its_last_checkpoint() {
    let db = TestDb::new("worker_sigkill").await;
    let dir = tempdir("sigkill");
    let (steps, every) = (400, 50);
    let params = json!({ "run": tiny_run(steps, every), "data": { "toy": { "n": 64 } } });
    jobs::validate(&jobs::registry(&JobSettings::default()), "pretrain", &params).unwrap();
    let id = queue::submit(&db.pool, &NewJob::new("pretrain", params)).await.unwrap().id;

    let mut first = spawn_worker_process(&db, &dir, "2");
    // Kill it once a checkpoint is published and training has gone past it.
    let started = Instant::now();
    let killed_at = loop {
        let checkpoint: Option<i64> = sqlx::query_scalar(
            "SELECT (meta->>'step')::bigint FROM artifacts WHERE job_id = $1 AND kind = 'checkpoint'",
        )
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        let progress: Option<i64> = sqlx::query_scalar("SELECT step FROM job_progress WHERE job_id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
        if let (Some(c), Some(p)) = (checkpoint, progress)
            && p > c
            && (p as usize) < steps
        {
            break p;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint within 2 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    first.kill().unwrap(); // SIGKILL: no chance to checkpoint or release the job
    first.wait().unwrap();
    assert_eq!(queue::get(&db.pool, id).await.unwrap().unwrap().state, JobState::Running);

    let mut second = spawn_worker_process(&db, &dir, "30");
    let job = wait_for(&db.pool, id, Duration::from_secs(180), |j| j.state.is_final()).await;
    assert_eq!((job.state, job.attempt), (JobState::Succeeded, 2), "{:?}", job.error);
    // The job's log places each attempt on its worker process (hostname-pid).
    let placed: Vec<String> =
        log_lines(&db.pool, id, "info").await.into_iter().filter(|l| l.starts_with("attempt ")).collect();
    assert_eq!(placed.len(), 2, "{placed:?}");
    for (line, (attempt, pid)) in placed.iter().zip([(1, first.id()), (2, second.id())]) {
        let on = format!("attempt {attempt} of 3 on worker ");
        assert!(line.starts_with(&on) && line.ends_with(&format!("-{pid}")), "{placed:?}");
    }
    let result = job.result.unwrap();
    let resumed = result["resumed_from"].as_u64().expect("the second attempt resumed") as usize;
    assert!(resumed > 0 && resumed.is_multiple_of(every) && resumed < killed_at as usize, "{resumed} {killed_at}");
    assert_eq!(result["step"], steps);
    // Every step's loss exactly once (steps replayed after the resume overwrote their first values).
    let (count, min, max): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), min(step), max(step) FROM job_metrics WHERE job_id = $1 AND name = 'loss'")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((count, min, max), (steps as i64, 1, steps as i64));
    let checkpoints: Vec<i64> =
        sqlx::query_scalar("SELECT (meta->>'step')::bigint FROM artifacts WHERE job_id = $1 AND kind = 'checkpoint'")
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(checkpoints, vec![steps as i64], "one checkpoint row, at the end");

    // The same worker samples from the trained model; the images land in the store.
    let sample = json!({ "checkpoint": { "job": id }, "num": 4, "steps": 5, "seed": 3 });
    let sample_id = queue::submit(&db.pool, &NewJob::new("sample", sample)).await.unwrap().id;
    let job = wait_for(&db.pool, sample_id, Duration::from_secs(60), |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.error);
    let images = repdiff_server::artifacts::for_job(&db.pool, sample_id, Some("sample_image")).await.unwrap();
    assert_eq!(images.len(), 4);
    for image in &images {
        let bytes = std::fs::read(dir.join("artifacts").join(&image.key)).unwrap();
        assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 16);
    }

    // SIGTERM: a graceful stop.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let status = second.wait().unwrap();
    assert!(status.success(), "{status:?}");
    db.drop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Loses its job to another worker mid-run (as a worker stalled past its lease would), then tries to
/// publish an artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_measuring_a_checkpoint_has_it_measured_on_resume() {
    let db = TestDb::new("worker_kill_eval").await;
    let dir = tempdir("kill-eval");
    let (steps, every) = (100, 50);
    let eval = json!({ "every": every, "num": 6, "max_real": 48, "steps": 5, "extractor": "random" });
    let params = json!({ "run": tiny_run(steps, every), "data": { "toy": { "n": 48 } }, "eval": eval });
    jobs::validate(&jobs::registry(&JobSettings::default()), "pretrain", &params).unwrap();
    let id = queue::submit(&db.pool, &NewJob::new("pretrain", params)).await.unwrap().id;

    // Kill the worker while it measures the checkpoint at step 50 (after publishing it).
    let mut first = spawn_worker_process(&db, &dir, "2");
    let started = Instant::now();
    loop {
        let message: Option<String> = sqlx::query_scalar("SELECT message FROM job_progress WHERE job_id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
        if message.is_some_and(|m| m.starts_with(&format!("evaluating step {every}:"))) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no evaluation within 2 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let measured = |step: i64| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM job_metrics WHERE job_id = $1 AND step = $2 AND name <> ALL($3)",
        )
        .bind(id)
        .bind(step)
        .bind(["loss", "mse", "vb", "grad_norm"].map(String::from).to_vec())
        .fetch_one(&db.pool)
    };
    assert_eq!(measured(every as i64).await.unwrap(), 0, "killed before the measurement was recorded");

    let mut second = spawn_worker_process(&db, &dir, "30");
    let job = wait_for(&db.pool, id, Duration::from_secs(180), |j| j.state.is_final()).await;
    assert_eq!((job.state, job.attempt), (JobState::Succeeded, 2), "{:?}", job.error);
    assert_eq!(job.result.unwrap()["resumed_from"], every);
    // Both checkpoints measured: all seven metrics (random-network names) at step 50 and at step 100.
    for step in [every, steps] {
        assert_eq!(measured(step as i64).await.unwrap(), 7, "step {step}");
    }
    second.kill().unwrap();
    second.wait().unwrap();
    db.drop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

struct PublishesAfterLosingItsLease;

impl Handler for PublishesAfterLosingItsLease {
    fn validate(&self, _: &serde_json::Value) -> Result<(), repdiff_api::jobs::Invalid> {
        Ok(())
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let steal = sqlx::query("UPDATE jobs SET worker_id = 'another-worker' WHERE id = $1").bind(ctx.job.id);
        ctx.block_on(steal.execute(ctx.pool())).unwrap();
        let file = ctx.scratch.join("checkpoint.bin");
        std::fs::write(&file, b"stale weights").unwrap();
        ctx.publish(&file, "checkpoint.bin", "checkpoint", "application/octet-stream", json!({}))?;
        Ok(json!({}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_publishes_and_records_nothing() {
    let db = TestDb::new("worker_lost_lease").await;
    let dir = tempdir("lost_lease");
    let mut registry = noops();
    registry.register("stale", PublishesAfterLosingItsLease);
    let mut opts = options(&dir, "stale");
    opts.poll_interval = Duration::from_millis(100);
    let worker = start(&db.pool, &dir, registry, opts);
    let id = queue::submit(&db.pool, &NewJob::new("stale", json!({}))).await.unwrap().id;
    // The handler ran (its job now names the other worker) and our worker is idle again.
    wait_for(&db.pool, id, Duration::from_secs(5), |j| j.worker_id.as_deref() == Some("another-worker")).await;
    let next = queue::submit(&db.pool, &noop(0)).await.unwrap().id;
    wait_for(&db.pool, next, Duration::from_secs(5), |j| j.state == JobState::Succeeded).await;
    let job = queue::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((job.state, job.worker_id.as_deref()), (JobState::Running, Some("another-worker")));
    let artifacts = repdiff_server::artifacts::for_job(&db.pool, id, None).await.unwrap();
    assert!(artifacts.is_empty(), "published after losing the lease: {artifacts:?}");
    assert!(!dir.join("store/jobs").join(id.to_string()).exists());
    worker.shutdown().await;
    db.drop().await;
}

/// Submits a `reproduce` pipeline as the API does; returns its job's id.
async fn submit_pipeline(db: &TestDb, params: serde_json::Value) -> i64 {
    let registry = jobs::registry(&JobSettings::default());
    let (job, created) =
        repdiff_server::pipeline::submit(&db.pool, &registry, &NewJob::new("reproduce", params), false)
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
    assert!(created);
    job.id
}

/// A pipeline's stages: (id, stage, state, attempt, started, finished), in order.
async fn stages_of(
    pool: &PgPool,
    pipeline: i64,
) -> Vec<(i64, String, String, i32, Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>)> {
    sqlx::query_as(
        "SELECT id, stage, state, attempt, started_at, finished_at FROM jobs WHERE pipeline_id = $1 ORDER BY id",
    )
    .bind(pipeline)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_its_stages_on_two_workers_at_once_and_a_killed_one_loses_only_its_stage_since_its_checkpoint()
{
    let db = TestDb::new("worker_pipeline").await;
    let dir = tempdir("pipeline-kill");
    let params = json!({ "phantoms": 96, "pretrain_steps": 200, "finetune_steps": 2, "draws": 2,
                         "supervised_epochs": 1, "eval_samples": 0, "class_samples": 0 });
    let id = submit_pipeline(&db, params).await;
    let stages = stages_of(&db.pool, id).await;
    assert_eq!(stages.len(), 10, "{stages:?}");

    // Two workers, one job at a time each. Kill the one that runs a pre-training stage once that stage has
    // published a checkpoint and trained past it.
    let mut workers = [spawn_worker_process(&db, &dir, "2"), spawn_worker_process(&db, &dir, "2")];
    let started = Instant::now();
    let (victim, killed_at, on) = loop {
        let row: Option<(i64, i64, String)> = sqlx::query_as(
            r#"SELECT j.id, p.step, j.worker_id FROM jobs j
               JOIN artifacts a ON a.job_id = j.id AND a.kind = 'checkpoint'
               JOIN job_progress p ON p.job_id = j.id
               WHERE j.pipeline_id = $1 AND j.kind = 'pretrain' AND j.state = 'running'
                 AND p.step > (a.meta->>'step')::bigint AND p.step < 200
               LIMIT 1"#,
        )
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some(found) = row {
            break found;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no pre-training checkpoint within 2 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let worker = workers.iter_mut().find(|w| on.ends_with(&format!("-{}", w.id()))).expect("one of the two");
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let third = spawn_worker_process(&db, &dir, "30");

    let job = wait_for(&db.pool, id, Duration::from_secs(300), |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.error);
    assert_eq!(job.result.unwrap()["table6"].as_array().unwrap().len(), 5);
    let stages = stages_of(&db.pool, id).await;
    // Only the killed stage ran twice, and it went on from its checkpoint.
    for (stage, name, state, attempt, ..) in &stages {
        assert_eq!(state, "succeeded", "{name}");
        assert_eq!(*attempt, if *stage == victim { 2 } else { 1 }, "{name}");
    }
    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE id = $1").bind(victim).fetch_one(&db.pool).await.unwrap();
    let resumed = result["resumed_from"].as_u64().expect("the second attempt resumed");
    assert!(resumed > 0 && resumed < killed_at as u64, "resumed at {resumed}, killed at {killed_at}");
    // Independent stages ran at the same time on the two workers.
    let overlapping = stages.iter().enumerate().any(|(i, a)| {
        stages[i + 1..].iter().any(|b| match (a.4, a.5, b.4, b.5) {
            (Some(a0), Some(a1), Some(b0), Some(b1)) => a0 < b1 && b0 < a1,
            _ => false,
        })
    });
    assert!(overlapping, "no two stages ran at once: {stages:?}");
    drop((workers, third));
    db.drop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pipeline_cancels_its_stages_and_the_running_ones_keep_their_checkpoint() {
    let db = TestDb::new("worker_pipeline_cancel").await;
    let dir = tempdir("pipeline-cancel");
    let params = json!({ "phantoms": 96, "pretrain_steps": 1_000_000, "eval_samples": 0, "class_samples": 0 });
    let id = submit_pipeline(&db, params).await;
    let worker = spawn_worker_process(&db, &dir, "5");
    // Cancel once a pre-training stage is training (its data drawn and encoded, losses logged).
    let started = Instant::now();
    let running = loop {
        let running: Option<i64> = sqlx::query_scalar(
            r#"SELECT j.id FROM jobs j
               WHERE j.pipeline_id = $1 AND j.kind = 'pretrain' AND j.state = 'running'
                 AND EXISTS (SELECT 1 FROM job_metrics m WHERE m.job_id = j.id AND m.name = 'loss')"#,
        )
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some(stage) = running {
            break stage;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "pre-training did not start within 2 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    queue::cancel(&db.pool, id).await.unwrap();
    let job = wait_for(&db.pool, running, Duration::from_secs(60), |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Cancelled, "{:?}", job.error);
    // Every stage is cancelled; the one that was training saved its checkpoint on the way out.
    let stages = stages_of(&db.pool, id).await;
    assert!(stages.iter().all(|s| s.2 == "cancelled"), "{stages:?}");
    assert_eq!(queue::get(&db.pool, id).await.unwrap().unwrap().state, JobState::Cancelled);
    let checkpoints = repdiff_server::artifacts::for_job(&db.pool, running, Some("checkpoint")).await.unwrap();
    assert_eq!(checkpoints.len(), 1, "the running stage's checkpoint is kept");
    // Retrying the pipeline puts every stage that did not finish back in the queue with it.
    drop(worker);
    assert_eq!(queue::retry(&db.pool, id).await.unwrap().unwrap().state, JobState::Queued);
    let stages = stages_of(&db.pool, id).await;
    assert!(stages.iter().all(|s| s.2 == "queued"), "{stages:?}");
    db.drop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
