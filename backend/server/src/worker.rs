//! Workers: the processes (or tasks inside `repdiff serve`) that claim jobs from the queue and run them.
//!
//! One worker runs up to `concurrency` jobs at once. For each job it
//! - runs the kind's [`Handler`] off the async runtime (models compute for hours; the runtime stays free for
//!   heartbeats and the database), on a rayon pool of the job's own with its share of the cores (the
//!   machine's rayon threads over `concurrency`);
//! - renews the job's lease every third of the lease, and turns what the heartbeat learns into the engine's
//!   [`CancelToken`]: a user's cancel request, or the lease lost to the rescuer;
//! - records the outcome: succeeded, failed (retried with backoff), cancelled; a job interrupted by the
//!   worker's own shutdown goes back to the queue without using an attempt.
//!
//! Between jobs it sleeps until a `NOTIFY` on [`queue::CHANNEL`] or the poll interval, whichever is first,
//! and every `rescue_interval` it runs the rescuer, so any live worker gets a dead one's jobs back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use repdiff_api::jobs::Invalid;
use repdiff_engine::train::CancelToken;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::artifacts::{self, NewArtifact};
use crate::queue::{self, Job, Lease, Outcome};
use crate::storage::Storage;

/// How a job attempt went wrong.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Another attempt may succeed (I/O, a lost connection): retried with backoff.
    #[error("{0}")]
    Retryable(String),
    /// No attempt can succeed (invalid parameters, data that does not fit the model): failed at once.
    #[error("{0}")]
    Permanent(String),
    /// The job stopped because its cancel token was set.
    #[error("cancelled")]
    Cancelled,
}

impl From<repdiff_engine::Error> for JobError {
    fn from(e: repdiff_engine::Error) -> JobError {
        use repdiff_engine::Error as E;
        match e {
            E::Cancelled { .. } => JobError::Cancelled,
            E::Io { .. } | E::Candle(_) => JobError::Retryable(e.to_string()),
            _ => JobError::Permanent(e.to_string()),
        }
    }
}

impl From<crate::storage::StorageError> for JobError {
    fn from(e: crate::storage::StorageError) -> JobError {
        match e {
            crate::storage::StorageError::NotFound(_) | crate::storage::StorageError::InvalidKey { .. } => {
                JobError::Permanent(e.to_string())
            }
            _ => JobError::Retryable(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> JobError {
        JobError::Retryable(format!("database: {e}"))
    }
}

/// Something a job reads that belongs to someone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// An artifact by key.
    Artifact(String),
    /// A dataset's scans.
    Dataset(i64),
    /// A dataset's scans as labelled data: the parts of these splits (all its scans when none is given).
    /// The API refuses the job while any of them is unlabelled, naming how many.
    LabelledDataset(i64, Vec<repdiff_api::jobs::SplitSpec>),
    /// Another job's result (a classify job's chosen timestep).
    JobResult(i64),
    /// A dataset the job adds to: the submitter must own it.
    OwnDataset(i64),
}

/// One job kind: checks parameters at submission and runs the job on a worker.
pub trait Handler: Send + Sync + 'static {
    /// Whether `params` are valid for this kind; the API refuses a job whose parameters are not, with
    /// this message.
    fn validate(&self, params: &serde_json::Value) -> Result<(), Invalid>;

    /// What a job with (valid) `params` reads: the API lets a user submit it only when they may read
    /// every one.
    fn reads(&self, _params: &serde_json::Value) -> Vec<Input> {
        Vec::new()
    }

    /// Whether a job with (valid) `params` fits what a job may use, given the metadata of the artifacts it
    /// reads (`metas`, by key: a checkpoint's carries its run's configuration); the API refuses it with
    /// this message otherwise, before anything is allocated.
    fn admit(&self, _params: &serde_json::Value, _metas: &HashMap<String, serde_json::Value>) -> Result<(), String> {
        Ok(())
    }

    /// Runs one attempt. Called on a thread of the attempt's own rayon pool (its parallel loops stay in that
    /// pool); long loops check `ctx.cancel` every step. A handler that can resume (training) looks for its
    /// own earlier checkpoint first: an attempt after a crash continues from it.
    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError>;
}

/// A job kind written against its typed spec (defined in `repdiff-api`, shared with the browser and the
/// OpenAPI document): what [`Registry::task`] registers. The spec arrives parsed and validated; a task adds
/// only what depends on the deployment (weights present, memory) and the work itself.
pub trait Task: Send + Sync + 'static {
    type Spec: DeserializeOwned + Validate + Send;

    /// What this deployment refuses of a valid spec (missing weights, data an engine cannot read).
    fn check(&self, _spec: &Self::Spec) -> Result<(), Invalid> {
        Ok(())
    }

    /// What a job of this spec reads (see [`Handler::reads`]).
    fn reads(&self, _spec: &Self::Spec) -> Vec<Input> {
        Vec::new()
    }

    /// Whether the job fits what a job may use (see [`Handler::admit`]).
    fn admit(&self, _spec: &Self::Spec, _metas: &HashMap<String, serde_json::Value>) -> Result<(), String> {
        Ok(())
    }

    /// Runs one attempt (see [`Handler::run`]).
    fn run(&self, spec: Self::Spec, ctx: &mut JobContext) -> Result<serde_json::Value, JobError>;
}

/// A spec's own checks (every kind's in `repdiff_api::jobs`).
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

macro_rules! validate_specs {
    ($($spec:ident),* $(,)?) => {
        $(impl Validate for repdiff_api::jobs::$spec {
            fn validate(&self) -> Result<(), Invalid> {
                repdiff_api::jobs::$spec::validate(self)
            }
        })*
    };
}
validate_specs!(
    NoopParams,
    ImportParams,
    EncodeParams,
    PretrainParams,
    FinetuneParams,
    SampleParams,
    CounterfactualParams,
    ClassifyParams,
    EvaluateParams,
    ProbeParams,
    SupervisedParams,
    ReproduceParams,
);

/// A [`Task`] as a [`Handler`]: parses the stored parameters into its spec.
struct Typed<T> {
    kind: String,
    task: T,
}

impl<T: Task> Typed<T> {
    fn spec(&self, params: &serde_json::Value) -> Result<T::Spec, Invalid> {
        let spec: T::Spec = serde_json::from_value(params.clone())
            .map_err(|e| Invalid::new("", format!("invalid parameters for a {} job: {e}", self.kind)))?;
        spec.validate()?;
        Ok(spec)
    }
}

impl<T: Task> Handler for Typed<T> {
    fn validate(&self, params: &serde_json::Value) -> Result<(), Invalid> {
        self.task.check(&self.spec(params)?)
    }

    fn reads(&self, params: &serde_json::Value) -> Vec<Input> {
        self.spec(params).map(|spec| self.task.reads(&spec)).unwrap_or_default()
    }

    fn admit(&self, params: &serde_json::Value, metas: &HashMap<String, serde_json::Value>) -> Result<(), String> {
        self.task.admit(&self.spec(params).map_err(|e| e.to_string())?, metas)
    }

    fn run(&self, ctx: &mut JobContext) -> Result<serde_json::Value, JobError> {
        let spec = self.spec(&ctx.job.params).map_err(|e| JobError::Permanent(e.to_string()))?;
        self.task.run(spec, ctx)
    }
}

/// The job kinds a worker runs, by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register(&mut self, kind: &str, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.to_string(), Arc::new(handler));
        self
    }

    /// Registers a kind written as a typed [`Task`].
    pub fn task(&mut self, kind: &str, task: impl Task) -> &mut Self {
        self.register(kind, Typed { kind: kind.to_string(), task })
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(kind)
    }

    /// The kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    /// Keeps only the named kinds (a GPU worker that only trains, say); unknown names are an error.
    pub fn only(mut self, kinds: &[String]) -> Result<Registry, String> {
        if let Some(unknown) = kinds.iter().find(|k| !self.handlers.contains_key(*k)) {
            return Err(format!("unknown job kind {unknown:?}; this worker knows {}", self.kinds().join(", ")));
        }
        self.handlers.retain(|k, _| kinds.contains(k));
        Ok(self)
    }
}

/// Why a running job's cancel token was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum StopCause {
    None = 0,
    User = 1,
    Shutdown = 2,
    LeaseLost = 3,
}

#[derive(Clone)]
struct Running {
    cancel: CancelToken,
    cause: Arc<AtomicU8>,
}

impl Running {
    fn stop(&self, cause: StopCause) {
        // The first cause wins: a shutdown after a user's cancel is still a cancel.
        let _ = self.cause.compare_exchange(StopCause::None as u8, cause as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.cancel.cancel();
    }

    fn cause(&self) -> StopCause {
        match self.cause.load(Ordering::SeqCst) {
            1 => StopCause::User,
            2 => StopCause::Shutdown,
            3 => StopCause::LeaseLost,
            _ => StopCause::None,
        }
    }
}

/// What a handler gets: the job, its cancel token, a scratch folder, and ways to report progress, metrics,
/// logs and artifacts. Progress is written at most every `PROGRESS_EVERY`; metrics are batched.
pub struct JobContext {
    pub job: Job,
    pub cancel: CancelToken,
    /// A folder of this attempt's own, removed when the attempt ends.
    pub scratch: PathBuf,
    pub storage: Storage,
    pool: PgPool,
    runtime: tokio::runtime::Handle,
    /// This worker's id and lease, to confirm the job is still ours before publishing.
    worker: String,
    lease: Duration,
    last_progress: Option<Instant>,
    metrics: Vec<(String, i64, f64)>,
    last_flush: Instant,
}

const PROGRESS_EVERY: Duration = Duration::from_millis(250);
const METRICS_EVERY: Duration = Duration::from_secs(1);

impl JobContext {
    /// The job's parameters as `T`; invalid ones fail the job permanently.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.job.params.clone())
            .map_err(|e| JobError::Permanent(format!("invalid parameters for a {} job: {e}", self.job.kind)))
    }

    /// Runs a future on the runtime from the handler's thread.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Reports progress (throttled; the last step of a phase is always written).
    pub fn progress(&mut self, step: u64, total: u64, message: &str) {
        if step < total && self.last_progress.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last_progress = Some(Instant::now());
        let result = self.block_on(queue::set_progress(&self.pool, self.job.id, step as i64, total as i64, message));
        if let Err(e) = result {
            tracing::warn!(job = self.job.id, "progress not recorded: {e}");
        }
    }

    /// Records a metric point (batched; written within a second, and at the end of the attempt).
    pub fn metric(&mut self, name: &str, step: u64, value: f64) -> Result<(), JobError> {
        if value.is_finite() {
            self.metrics.push((name.to_string(), step as i64, value));
        }
        if self.last_flush.elapsed() >= METRICS_EVERY || self.metrics.len() >= 1000 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the batched metrics now.
    pub fn flush(&mut self) -> Result<(), JobError> {
        self.last_flush = Instant::now();
        if self.metrics.is_empty() {
            return Ok(());
        }
        let points = std::mem::take(&mut self.metrics);
        self.block_on(queue::record_metrics(&self.pool, self.job.id, &points))?;
        Ok(())
    }

    /// Whether this job already holds metric `name` at `step` (batched points count once written).
    pub fn has_metric(&mut self, name: &str, step: u64) -> Result<bool, JobError> {
        self.flush()?;
        Ok(self.block_on(queue::has_metric(&self.pool, self.job.id, name, step as i64))?)
    }

    pub fn log(&self, level: &str, message: &str) {
        tracing::info!(job = self.job.id, "{message}");
        if let Err(e) = self.block_on(queue::log(&self.pool, self.job.id, level, message)) {
            tracing::warn!(job = self.job.id, "log line not recorded: {e}");
        }
    }

    /// The key of this job's artifact `name`: `jobs/<id>/<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("jobs/{}/{name}", self.job.id)
    }

    /// Uploads a local file as this job's artifact `name` and records it (replacing an earlier upload of
    /// the same name, such as the previous checkpoint). Returns the key. Metrics reported before it are
    /// written first: a checkpoint at step k means steps up to k are never replayed, so their metrics
    /// must already be stored when a crash makes the next attempt resume from it.
    pub fn publish(
        &mut self,
        local: &std::path::Path,
        name: &str,
        kind: &str,
        media_type: &str,
        meta: serde_json::Value,
    ) -> Result<String, JobError> {
        self.flush()?;
        // A worker that stalled past its lease must not overwrite what the job's new worker publishes
        // (an older checkpoint over a newer one): renewing the lease also confirms it is still held.
        if self.block_on(queue::heartbeat(&self.pool, self.job.id, &self.worker, self.lease))? == Lease::Lost {
            self.cancel.cancel();
            return Err(JobError::Retryable("the job's lease was lost; not publishing".into()));
        }
        let key = self.key(name);
        let size = self.block_on(self.storage.upload(local, &key))?;
        let artifact = NewArtifact {
            key: key.clone(),
            job_id: Some(self.job.id),
            kind: kind.into(),
            media_type: media_type.into(),
            size: size as i64,
            meta,
        };
        self.block_on(artifacts::record(&self.pool, &artifact))?;
        Ok(key)
    }

    /// Downloads the artifact `key` into the scratch folder under `name`.
    pub fn fetch(&self, key: &str, name: &str) -> Result<PathBuf, JobError> {
        let local = self.scratch.join(name);
        self.block_on(self.storage.download(key, &local))?;
        Ok(local)
    }

    /// The database (for handlers that read rows, such as a dataset's scans).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the artifact `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool, JobError> {
        Ok(self.block_on(self.storage.size(key))?.is_some())
    }
}

/// How a worker behaves.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Unique among live workers: it owns the leases (hostname-pid by default).
    pub id: String,
    pub concurrency: usize,
    /// How long a claim lasts without a heartbeat. A dead worker's job is back in the queue after at most
    /// this plus `rescue_interval`.
    pub lease: Duration,
    /// How often to look for jobs when no notification comes.
    pub poll_interval: Duration,
    pub rescue_interval: Duration,
    /// Wake on NOTIFY (off only to test the polling fallback).
    pub listen: bool,
    /// Where attempts get their scratch folders.
    pub scratch: PathBuf,
}

/// This machine's name, the first half of a worker's id.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

impl WorkerOptions {
    pub fn new(scratch: PathBuf) -> WorkerOptions {
        WorkerOptions {
            id: format!("{}-{}", hostname(), std::process::id()),
            concurrency: 1,
            lease: Duration::from_secs(120),
            poll_interval: Duration::from_secs(5),
            rescue_interval: Duration::from_secs(30),
            listen: true,
            scratch,
        }
    }
}

pub struct Worker {
    pool: PgPool,
    storage: Storage,
    registry: Arc<Registry>,
    options: WorkerOptions,
}

impl Worker {
    pub fn new(pool: PgPool, storage: Storage, registry: Registry, options: WorkerOptions) -> Worker {
        Worker { pool, storage, registry: Arc::new(registry), options }
    }

    /// Runs until `shutdown` turns true; then asks running jobs to stop (they checkpoint and go back to
    /// the queue) and waits for them.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let kinds = self.registry.kinds();
        tracing::info!(worker = %self.options.id, kinds = ?kinds, "worker started");
        remove_dead_scratch(&self.options.scratch, &self.options.id);
        let running: Arc<Mutex<HashMap<i64, Running>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let mut listener = if self.options.listen { self.listen().await } else { None };
        let mut next_rescue = Instant::now();
        while !*shutdown.borrow() {
            if Instant::now() >= next_rescue {
                next_rescue = Instant::now() + self.options.rescue_interval;
                match queue::rescue_expired(&self.pool).await {
                    Ok((0, 0)) => {}
                    Ok((requeued, failed)) => tracing::warn!(requeued, failed, "rescued jobs whose worker stopped"),
                    Err(e) => tracing::warn!("rescuer: {e}"),
                }
            }
            while tasks.len() < self.options.concurrency.max(1) {
                match queue::claim(&self.pool, &self.options.id, &kinds, self.options.lease).await {
                    Ok(Some(job)) => {
                        let entry = Running { cancel: CancelToken::default(), cause: Arc::default() };
                        running.lock().expect("running map").insert(job.id, entry.clone());
                        let attempt = Attempt {
                            pool: self.pool.clone(),
                            storage: self.storage.clone(),
                            registry: self.registry.clone(),
                            options: self.options.clone(),
                            running: entry,
                        };
                        let running = running.clone();
                        tasks.spawn(async move {
                            let id = job.id;
                            attempt.execute(job).await;
                            running.lock().expect("running map").remove(&id);
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("claim: {e}");
                        break;
                    }
                }
            }
            if listener.is_none() && self.options.listen {
                listener = self.listen().await;
            }
            let wake = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|n| Some(n.payload().to_string())),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(self.options.poll_interval) => {}
                note = wake => match note {
                    Ok(Some(payload)) => {
                        if let Some(id) = payload.strip_prefix("cancel:").and_then(|id| id.parse::<i64>().ok())
                            && let Some(job) = running.lock().expect("running map").get(&id)
                        {
                            job.stop(StopCause::User);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("LISTEN connection lost ({e}); polling until it is back");
                        listener = None;
                    }
                },
            }
        }
        let stopping: Vec<Running> = running.lock().expect("running map").values().cloned().collect();
        if !stopping.is_empty() {
            tracing::info!("shutting down: stopping {} running job(s) at their next step", stopping.len());
        }
        for job in stopping {
            job.stop(StopCause::Shutdown);
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!(worker = %self.options.id, "worker stopped");
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        let result = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(queue::CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        result.map_err(|e| tracing::warn!("cannot LISTEN ({e}); polling every {:?}", self.options.poll_interval)).ok()
    }
}

/// Runs `f` on a rayon pool of `threads` threads of its own (named after `job`), dropped when it returns.
/// The engine's parallel loops inside then split among the pool's threads; called from the blocking thread
/// instead, each loop was handed to the global pool while that thread slept (two context switches per loop:
/// a 1,500-step tiny-cpu pretrain job took 11% longer), and jobs running at once shared, and could steal,
/// each other's threads. If no thread can be started, `f` runs here.
fn on_own_threads<T: Send>(threads: usize, job: i64, f: impl FnOnce() -> T + Send) -> T {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(move |i| format!("job-{job}-{i}"));
    match pool.build() {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!(job, "no threads for the job's own pool ({e}); it runs on the shared one");
            f()
        }
    }
}

/// One attempt at one job.
struct Attempt {
    pool: PgPool,
    storage: Storage,
    registry: Arc<Registry>,
    options: WorkerOptions,
    running: Running,
}

impl Attempt {
    fn without_paths(&self, error: &str) -> String {
        without_paths(error, &self.options.scratch)
    }

    async fn execute(self, job: Job) {
        let id = job.id;
        let worker = self.options.id.clone();
        tracing::info!(job = id, kind = %job.kind, attempt = job.attempt, "job started");
        // The job's own log says where each attempt ran: with several workers (a GPU machine, the
        // server's CPU) a retried or rescued job's lines are otherwise hard to place.
        let placed = format!("attempt {} of {} on worker {worker}", job.attempt, job.max_attempts);
        if let Err(e) = queue::log(&self.pool, id, "info", &placed).await {
            tracing::warn!(job = id, "cannot log the attempt: {e}");
        }
        let heartbeat =
            tokio::spawn(heartbeat(self.pool.clone(), id, worker.clone(), self.options.lease, self.running.clone()));
        let scratch = self.options.scratch.join(&worker).join(format!("job-{id}"));
        let result = match self.registry.get(&job.kind).cloned() {
            None => Err(JobError::Permanent(format!("this worker has no handler for {:?} jobs", job.kind))),
            Some(handler) => {
                let mut ctx = JobContext {
                    job,
                    cancel: self.running.cancel.clone(),
                    scratch: scratch.clone(),
                    storage: self.storage.clone(),
                    pool: self.pool.clone(),
                    runtime: tokio::runtime::Handle::current(),
                    worker: worker.clone(),
                    lease: self.options.lease,
                    last_progress: None,
                    metrics: Vec::new(),
                    last_flush: Instant::now(),
                };
                let threads = (rayon::current_num_threads() / self.options.concurrency.max(1)).max(1);
                let ran = tokio::task::spawn_blocking(move || {
                    if let Err(e) = std::fs::create_dir_all(&ctx.scratch) {
                        return Err(JobError::Retryable(format!("{}: {e}", ctx.scratch.display())));
                    }
                    let result = on_own_threads(threads, id, || handler.run(&mut ctx));
                    // Metrics of the last second are written whatever the outcome.
                    let flushed = ctx.flush();
                    result.and_then(|value| flushed.map(|()| value))
                })
                .await;
                match ran {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => {
                        let payload = e.into_panic();
                        let message = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(JobError::Retryable(format!("the job panicked: {message}")))
                    }
                    Err(e) => Err(JobError::Retryable(format!("the job's thread failed: {e}"))),
                }
            }
        };
        heartbeat.abort();
        if let Err(e) = tokio::fs::remove_dir_all(&scratch).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(job = id, "cannot remove {}: {e}", scratch.display());
        }
        let cause = self.running.cause();
        let outcome = match (result, cause) {
            (_, StopCause::LeaseLost) => {
                tracing::warn!(job = id, "lease lost (the job was rescued): its result is not recorded");
                return;
            }
            (Ok(value), _) => Outcome::Succeeded(value),
            (Err(_), StopCause::Shutdown) => {
                match queue::release(&self.pool, id, &worker).await {
                    Ok(_) => tracing::info!(job = id, "returned to the queue (worker shutting down)"),
                    Err(e) => tracing::warn!(job = id, "cannot return the job to the queue ({e}); the rescuer will"),
                }
                return;
            }
            (Err(JobError::Cancelled), _) | (Err(_), StopCause::User) => Outcome::Cancelled,
            (Err(JobError::Permanent(e)), _) => Outcome::FailedPermanently(self.without_paths(&e)),
            (Err(JobError::Retryable(e)), _) => Outcome::Failed(self.without_paths(&e)),
        };
        if let Outcome::Failed(e) | Outcome::FailedPermanently(e) = &outcome
            && let Err(log_error) = queue::log(&self.pool, id, "error", e).await
        {
            tracing::warn!(job = id, "cannot log the failure: {log_error}");
        }
        match queue::finish(&self.pool, id, &worker, &outcome).await {
            Ok(Some(state)) => tracing::info!(job = id, state = state.as_str(), "job finished"),
            Ok(None) => tracing::warn!(job = id, "the job was no longer ours when it finished"),
            Err(e) => tracing::error!(job = id, "cannot record the outcome ({e}); the rescuer will retry the job"),
        }
    }
}

/// An error for a job's owner, with the worker machine's folders named by role instead of by path
/// (`<scratch>/job-12/...`): users see what failed, not where the server keeps its files.
fn without_paths(error: &str, scratch: &std::path::Path) -> String {
    let real = scratch.canonicalize().unwrap_or_else(|_| scratch.to_path_buf());
    let mut out = error.replace(&real.display().to_string(), "<scratch>");
    out = out.replace(&scratch.display().to_string(), "<scratch>");
    let temp = std::env::temp_dir().display().to_string();
    out.replace(temp.trim_end_matches('/'), "<tmp>")
}

/// Renews the lease every third of it until aborted; stops the job when it is cancelled or lost.
async fn heartbeat(pool: PgPool, id: i64, worker: String, lease: Duration, running: Running) {
    let mut last_renewed = Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        match queue::heartbeat(&pool, id, &worker, lease).await {
            Ok(Lease::Held) => last_renewed = Instant::now(),
            Ok(Lease::CancelRequested) => {
                last_renewed = Instant::now();
                running.stop(StopCause::User);
            }
            Ok(Lease::Lost) => {
                running.stop(StopCause::LeaseLost);
                return;
            }
            Err(e) => {
                tracing::warn!(job = id, "heartbeat failed: {e}");
                // Past the lease the rescuer may have handed the job to another worker: stop writing.
                if last_renewed.elapsed() >= lease {
                    running.stop(StopCause::LeaseLost);
                    return;
                }
            }
        }
    }
}

/// Removes the scratch folders of workers on this machine whose process is gone (killed mid-job: their
/// checkpoints are in the store; what is left locally is garbage).
fn remove_dead_scratch(root: &std::path::Path, own_id: &str) {
    let Some((host, _)) = own_id.rsplit_once('-') else { return };
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((their_host, pid)) = name.rsplit_once('-') else { continue };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        if their_host != host || name == own_id {
            continue;
        }
        #[cfg(unix)]
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        #[cfg(not(unix))]
        let alive = true;
        if !alive && let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!("cannot remove {}: {e}", entry.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_errors_name_no_server_folder() {
        let scratch = std::path::Path::new("/srv/repdiff/scratch");
        let temp = std::env::temp_dir().display().to_string();
        let error = format!("data: /srv/repdiff/scratch/job-3/split.csv: line 1; staged in {temp}/repdiff-upload-1-ab");
        let cleaned = super::without_paths(&error, scratch);
        assert!(!cleaned.contains("/srv") && !cleaned.contains(temp.trim_end_matches('/')), "{cleaned}");
        assert!(cleaned.contains("<scratch>/job-3/split.csv") && cleaned.contains("<tmp>/repdiff-upload"), "{cleaned}");
    }
}
