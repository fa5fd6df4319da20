//! The job queue, in PostgreSQL. Guarantees, each provoked by a test in `tests/queue.rs`:
//! - a queued job is claimed by exactly one worker (`FOR UPDATE SKIP LOCKED`), highest priority first,
//!   then oldest;
//! - a claim is a lease: the worker renews it by heartbeating; a job whose lease runs out (its worker
//!   died or hung) is put back in the queue by the rescuer, or failed when it has used its attempts;
//! - a failed attempt is retried after an exponential backoff (1 s after the first attempt, doubling to at
//!   most 2^11 s), up to `max_attempts`;
//! - cancelling a queued job finishes it at once; cancelling a running one asks its worker, which learns
//!   it from its next heartbeat and stops through the engine's cancel token;
//! - submitting twice with one idempotency key makes one job;
//! - a job that depends on others is claimed only once all of them succeeded; when one of them ends failed
//!   or cancelled, the job (and what waits on it) is cancelled, naming the job it waited on; retrying that
//!   job queues them again (migration 0006's trigger keeps this true whatever ends a job);
//! - workers wake on `NOTIFY` and also poll, so a missed notification delays a job by one poll interval.
//!
//! River (riverqueue) was the model; its Rust port has no heartbeats, and rescuing a days-long training
//! job that way takes a timeout longer than the job, where a lease gets a dead worker's job back in
//! minutes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// The channel workers LISTEN on; the payload is the job kind.
pub const CHANNEL: &str = "repdiff_jobs";

/// A job's state: queued -> running -> succeeded | failed | cancelled (the API's type).
pub use repdiff_api::JobState;

/// The state column as a [`JobState`] (the table's CHECK constraint allows only the five names).
pub(crate) fn state_of(text: &str) -> JobState {
    JobState::parse(text).unwrap_or(JobState::Failed)
}

#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub params: serde_json::Value,
    pub state: JobState,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_after: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job row as sqlx reads it (the state is text in the table).
struct JobRow {
    id: i64,
    kind: String,
    params: serde_json::Value,
    state: String,
    priority: i16,
    attempt: i32,
    max_attempts: i32,
    run_after: DateTime<Utc>,
    idempotency_key: Option<String>,
    worker_id: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    error: Option<String>,
    result: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Job {
        Job {
            id: r.id,
            kind: r.kind,
            params: r.params,
            state: state_of(&r.state),
            priority: r.priority,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            run_after: r.run_after,
            idempotency_key: r.idempotency_key,
            worker_id: r.worker_id,
            lease_expires_at: r.lease_expires_at,
            cancel_requested: r.cancel_requested,
            error: r.error,
            result: r.result,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// What to submit.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub kind: String,
    pub params: serde_json::Value,
    pub priority: i16,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
    /// The user who submitted it (`None` for jobs made by the CLI or tests).
    pub owner_id: Option<i64>,
    pub experiment_id: Option<i64>,
    /// Jobs that must succeed before this one may run (earlier jobs: ids already submitted).
    pub depends_on: Vec<i64>,
    /// An id reserved with [`reserve_ids`] (a pipeline's stages are planned with their ids); else the next.
    pub id: Option<i64>,
    /// The pipeline this job is a stage of, and the stage's name in it.
    pub stage_of: Option<(i64, String)>,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, params: serde_json::Value) -> Self {
        NewJob {
            kind: kind.into(),
            params,
            priority: 0,
            max_attempts: 3,
            idempotency_key: None,
            owner_id: None,
            experiment_id: None,
            depends_on: Vec::new(),
            id: None,
            stage_of: None,
        }
    }
}

/// Submits a job (and wakes a worker). With an idempotency key already used, returns that job instead.
pub async fn submit(pool: &PgPool, job: &NewJob) -> sqlx::Result<Job> {
    Ok(submit_once(pool, job).await?.0)
}

/// [`submit`], also saying whether this call made the job (`false`: its idempotency key was used before).
pub async fn submit_once(pool: &PgPool, job: &NewJob) -> sqlx::Result<(Job, bool)> {
    let mut tx = pool.begin().await?;
    let submitted = insert(&mut tx, job).await?;
    tx.commit().await?;
    Ok(submitted)
}

/// `n` job ids, ascending, for jobs inserted later in the same transaction (a graph planned with its ids).
pub async fn reserve_ids(tx: &mut PgConnection, n: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        r#"SELECT nextval(pg_get_serial_sequence('jobs', 'id')) AS "id!" FROM generate_series(1, $1::bigint) ORDER BY 1"#,
        n
    )
    .fetch_all(&mut *tx)
    .await
}

/// Makes job `id` wait on `depends_on` too (jobs inserted earlier in the same transaction).
pub async fn add_dependencies(tx: &mut PgConnection, id: i64, depends_on: &[i64]) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO job_dependencies (job_id, depends_on) SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
        id,
        depends_on
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// [`submit_once`] inside a transaction: the job is queued when the transaction commits.
pub async fn insert(tx: &mut PgConnection, job: &NewJob) -> sqlx::Result<(Job, bool)> {
    let (pipeline_id, stage) = job.stage_of.clone().unzip();
    let inserted = sqlx::query_as!(
        JobRow,
        r#"INSERT INTO jobs (id, kind, params, priority, max_attempts, idempotency_key, owner_id, experiment_id,
                             pipeline_id, stage)
           VALUES (COALESCE($8, nextval(pg_get_serial_sequence('jobs', 'id'))), $1, $2, $3, $4, $5, $6, $7, $9, $10)
           ON CONFLICT (idempotency_key) DO NOTHING
           RETURNING id, kind, params, state, priority, attempt, max_attempts, run_after, idempotency_key,
                     worker_id, lease_expires_at, cancel_requested, error, result, created_at, started_at,
                     finished_at"#,
        job.kind,
        job.params,
        job.priority,
        job.max_attempts,
        job.idempotency_key,
        job.owner_id,
        job.experiment_id,
        job.id,
        pipeline_id,
        stage,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let created = inserted.is_some();
    let row = match inserted {
        Some(row) => {
            sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, job.kind).execute(&mut *tx).await?;
            if job.depends_on.is_empty() {
                row
            } else {
                sqlx::query!(
                    "INSERT INTO job_dependencies (job_id, depends_on) SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
                    row.id,
                    &job.depends_on
                )
                .execute(&mut *tx)
                .await?;
                // A dependency that has already failed or been cancelled: this job can never run.
                sqlx::query_as!(
                    JobRow,
                    r#"UPDATE jobs SET state = 'cancelled', finished_at = now(), blocked_by = failed.id,
                           error = format('waits on job #%s, which %s', failed.id,
                                          CASE failed.state WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END)
                       FROM (SELECT p.id, p.state FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on
                             WHERE d.job_id = $1 AND p.state IN ('failed', 'cancelled') ORDER BY p.id LIMIT 1) failed
                       WHERE jobs.id = $1
                       RETURNING jobs.id, kind, params, jobs.state, priority, attempt, max_attempts, run_after,
                                 idempotency_key, worker_id, lease_expires_at, cancel_requested, error, result,
                                 created_at, started_at, finished_at"#,
                    row.id
                )
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(row)
            }
        }
        None => {
            let key = job.idempotency_key.as_deref().unwrap_or_default();
            sqlx::query_as!(
                JobRow,
                r#"SELECT id, kind, params, state, priority, attempt, max_attempts, run_after, idempotency_key,
                          worker_id, lease_expires_at, cancel_requested, error, result, created_at, started_at,
                          finished_at
                   FROM jobs WHERE idempotency_key = $1"#,
                key
            )
            .fetch_one(&mut *tx)
            .await?
        }
    };
    Ok((row.into(), created))
}

pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query_as!(
        JobRow,
        r#"SELECT id, kind, params, state, priority, attempt, max_attempts, run_after, idempotency_key,
                  worker_id, lease_expires_at, cancel_requested, error, result, created_at, started_at,
                  finished_at
           FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Job::from))
}

/// Claims the most urgent runnable job of one of `kinds` for `worker`, leased for `lease`.
pub async fn claim(pool: &PgPool, worker: &str, kinds: &[String], lease: Duration) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query_as!(
        JobRow,
        r#"UPDATE jobs
           SET state = 'running', attempt = attempt + 1, worker_id = $1,
               lease_expires_at = now() + make_interval(secs => $2), started_at = coalesce(started_at, now())
           WHERE id = (
               SELECT id FROM jobs j
               WHERE state = 'queued' AND run_after <= now() AND kind = ANY($3)
                 AND NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on
                                 WHERE d.job_id = j.id AND p.state <> 'succeeded')
               ORDER BY priority DESC, run_after, id
               LIMIT 1
               FOR UPDATE SKIP LOCKED
           )
           RETURNING id, kind, params, state, priority, attempt, max_attempts, run_after, idempotency_key,
                     worker_id, lease_expires_at, cancel_requested, error, result, created_at, started_at,
                     finished_at"#,
        worker,
        lease.as_secs_f64(),
        kinds,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Job::from))
}

/// What a heartbeat learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Renewed; keep going.
    Held,
    /// Renewed, but a user asked to cancel the job.
    CancelRequested,
    /// The job is no longer this worker's (rescued after a missed lease, or finished): stop, write nothing.
    Lost,
}

/// Renews `worker`'s lease on job `id` for another `lease`.
pub async fn heartbeat(pool: &PgPool, id: i64, worker: &str, lease: Duration) -> sqlx::Result<Lease> {
    let renewed = sqlx::query_scalar!(
        r#"UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE id = $1 AND worker_id = $2 AND state = 'running'
           RETURNING cancel_requested"#,
        id,
        worker,
        lease.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(match renewed {
        Some(true) => Lease::CancelRequested,
        Some(false) => Lease::Held,
        None => Lease::Lost,
    })
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    /// Failed; retried after a backoff while attempts remain.
    Failed(String),
    /// Failed in a way another attempt cannot fix (bad parameters): no retry.
    FailedPermanently(String),
    Cancelled,
}

/// Records the end of `worker`'s attempt at job `id`. Returns the job's new state, or `None` when the job
/// was no longer this worker's (its lease was lost): then nothing is written.
pub async fn finish(pool: &PgPool, id: i64, worker: &str, outcome: &Outcome) -> sqlx::Result<Option<JobState>> {
    let (state, error, result, retry) = match outcome {
        Outcome::Succeeded(result) => ("succeeded", None, Some(result.clone()), false),
        Outcome::Failed(error) => ("failed", Some(error.as_str()), None, true),
        Outcome::FailedPermanently(error) => ("failed", Some(error.as_str()), None, false),
        Outcome::Cancelled => ("cancelled", None, None, false),
    };
    let state = sqlx::query_scalar!(
        r#"UPDATE jobs SET
               state = CASE WHEN $4 AND attempt < max_attempts AND NOT cancel_requested THEN 'queued' ELSE $3 END,
               run_after = CASE WHEN $4 AND attempt < max_attempts
                                THEN now() + make_interval(secs => power(2, least(attempt - 1, 11))::float8)
                                ELSE run_after END,
               error = $5, result = $6, worker_id = NULL, lease_expires_at = NULL,
               finished_at = CASE WHEN $4 AND attempt < max_attempts AND NOT cancel_requested
                                  THEN NULL ELSE now() END
           WHERE id = $1 AND worker_id = $2 AND state = 'running'
           RETURNING state"#,
        id,
        worker,
        state,
        retry,
        error,
        result,
    )
    .fetch_optional(pool)
    .await?;
    Ok(state.map(|s| state_of(&s)))
}

/// Cancels job `id`: a queued job at once, a running one by asking its worker. Returns the job as it is
/// now, or `None` if there is no such job.
pub async fn cancel(pool: &PgPool, id: i64) -> sqlx::Result<Option<Job>> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        JobRow,
        r#"UPDATE jobs SET
               cancel_requested = (state = 'running') OR cancel_requested,
               state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
               finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END
           WHERE id = $1
           RETURNING id, kind, params, state, priority, attempt, max_attempts, run_after, idempotency_key,
                     worker_id, lease_expires_at, cancel_requested, error, result, created_at, started_at,
                     finished_at"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = &row {
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, format!("cancel:{}", row.id)).execute(&mut *tx).await?;
        // A pipeline's stages go with it: the queued ones now, the running ones at their next check.
        sqlx::query!(
            r#"WITH stopped AS (
                   UPDATE jobs SET
                       cancel_requested = (state = 'running') OR cancel_requested,
                       state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                       finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END
                   WHERE pipeline_id = $1 AND state IN ('queued', 'running')
                   RETURNING id, state)
               SELECT pg_notify($2, 'cancel:' || id) FROM stopped WHERE state = 'running'"#,
            row.id,
            CHANNEL
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(row.map(Job::from))
}

/// Puts a failed or cancelled job back in the queue with one more attempt, and with it the jobs its end
/// cancelled (those that wait on it, on down); for a pipeline, also its stages that failed or were cancelled.
/// `None` if it is not final.
pub async fn retry(pool: &PgPool, id: i64) -> sqlx::Result<Option<Job>> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        JobRow,
        r#"UPDATE jobs SET state = 'queued', run_after = now(), cancel_requested = false, error = NULL,
               finished_at = NULL, blocked_by = NULL, max_attempts = greatest(max_attempts, attempt + 1)
           WHERE id = $1 AND state IN ('failed', 'cancelled')
           RETURNING id, kind, params, state, priority, attempt, max_attempts, run_after, idempotency_key,
                     worker_id, lease_expires_at, cancel_requested, error, result, created_at, started_at,
                     finished_at"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = &row {
        sqlx::query!(
            r#"WITH RECURSIVE blocked AS (
                   SELECT id FROM jobs WHERE blocked_by = $1 AND state = 'cancelled'
                   UNION
                   SELECT j.id FROM jobs j JOIN blocked b ON j.blocked_by = b.id WHERE j.state = 'cancelled'
               )
               UPDATE jobs SET state = 'queued', run_after = now(), error = NULL, finished_at = NULL,
                               blocked_by = NULL
               WHERE id IN (SELECT id FROM blocked)"#,
            id
        )
        .execute(&mut *tx)
        .await?;
        // A pipeline retried: its stages that failed or were cancelled run again (the finished ones stay).
        sqlx::query!(
            r#"UPDATE jobs SET state = 'queued', run_after = now(), cancel_requested = false, error = NULL,
                   finished_at = NULL, blocked_by = NULL, max_attempts = greatest(max_attempts, attempt + 1)
               WHERE pipeline_id = $1 AND state IN ('failed', 'cancelled')"#,
            id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, row.kind).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(row.map(Job::from))
}

/// The rescuer: running jobs whose lease ran out go back to the queue (or fail, out of attempts).
/// Returns how many were rescued and how many failed.
pub async fn rescue_expired(pool: &PgPool) -> sqlx::Result<(u64, u64)> {
    let rows = sqlx::query!(
        r#"UPDATE jobs SET
               state = CASE WHEN cancel_requested THEN 'cancelled'
                            WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
               error = CASE WHEN attempt < max_attempts AND NOT cancel_requested THEN error
                            ELSE 'the worker stopped heartbeating (lease expired)' END,
               finished_at = CASE WHEN attempt < max_attempts AND NOT cancel_requested THEN NULL ELSE now() END,
               worker_id = NULL, lease_expires_at = NULL, run_after = now()
           WHERE state = 'running' AND lease_expires_at < now()
           RETURNING state, kind"#
    )
    .fetch_all(pool)
    .await?;
    let requeued = rows.iter().filter(|r| r.state == "queued").count() as u64;
    for row in rows.iter().filter(|r| r.state == "queued") {
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, row.kind).execute(pool).await?;
    }
    Ok((requeued, rows.len() as u64 - requeued))
}

/// Progress of a running job (upserted: one row per job).
pub async fn set_progress(pool: &PgPool, id: i64, step: i64, total: i64, message: &str) -> sqlx::Result<()> {
    sqlx::query!(
        r#"INSERT INTO job_progress (job_id, step, total, message) VALUES ($1, $2, $3, $4)
           ON CONFLICT (job_id) DO UPDATE SET step = $2, total = $3, message = $4, updated_at = now()"#,
        id,
        step,
        total,
        message
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Metric points (name, step, value); a step reported again (after a resume) replaces the old value.
pub async fn record_metrics(pool: &PgPool, id: i64, points: &[(String, i64, f64)]) -> sqlx::Result<()> {
    let names: Vec<String> = points.iter().map(|p| p.0.clone()).collect();
    let steps: Vec<i64> = points.iter().map(|p| p.1).collect();
    let values: Vec<f64> = points.iter().map(|p| p.2).collect();
    sqlx::query!(
        r#"INSERT INTO job_metrics (job_id, name, step, value)
           SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::float8[])
           ON CONFLICT (job_id, name, step) DO UPDATE SET value = excluded.value"#,
        id,
        &names,
        &steps,
        &values
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether the job has a value of metric `name` at `step` (a resumed attempt asks what the last one
/// finished).
pub async fn has_metric(pool: &PgPool, id: i64, name: &str, step: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM job_metrics WHERE job_id = $1 AND name = $2 AND step = $3) AS "recorded!""#,
        id,
        name,
        step
    )
    .fetch_one(pool)
    .await
}

pub async fn log(pool: &PgPool, id: i64, level: &str, message: &str) -> sqlx::Result<()> {
    sqlx::query!("INSERT INTO job_logs (job_id, level, message) VALUES ($1, $2, $3)", id, level, message)
        .execute(pool)
        .await?;
    Ok(())
}

/// The jobs `worker` is running.
pub async fn running_on(pool: &PgPool, worker: &str) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!("SELECT id FROM jobs WHERE state = 'running' AND worker_id = $1 ORDER BY id", worker)
        .fetch_all(pool)
        .await
}

/// Gives a running job back to the queue without using an attempt or its place in the queue (its worker
/// is shutting down; a resumable job continues from its checkpoint on the next worker, before the jobs
/// queued after it). A job cancelled meanwhile ends cancelled. Returns the job's new state, or `None`
/// when it was not `worker`'s.
pub async fn release(pool: &PgPool, id: i64, worker: &str) -> sqlx::Result<Option<JobState>> {
    Ok(give_back(pool, Some((id, worker))).await?.first().copied())
}

/// Gives every running job back to the queue at once, as [`release`] does: for a database that only this
/// process uses (`repdiff reproduce`'s own), whose earlier process was killed with its jobs running. A
/// shared queue waits for the leases instead ([`rescue_expired`]): another worker may be alive. Returns how
/// many went back.
pub async fn release_all(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(give_back(pool, None).await?.len() as u64)
}

/// [`release`] of job `id` if `worker` runs it, else of every running job; the new states.
async fn give_back(pool: &PgPool, of: Option<(i64, &str)>) -> sqlx::Result<Vec<JobState>> {
    let (id, worker) = of.unzip();
    let rows = sqlx::query!(
        r#"UPDATE jobs SET
               state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
               attempt = CASE WHEN cancel_requested THEN attempt ELSE greatest(attempt - 1, 0) END,
               finished_at = CASE WHEN cancel_requested THEN now() ELSE NULL END,
               worker_id = NULL, lease_expires_at = NULL
           WHERE state = 'running' AND ($1::bigint IS NULL OR (id = $1 AND worker_id = $2))
           RETURNING state, kind"#,
        id,
        worker
    )
    .fetch_all(pool)
    .await?;
    for row in rows.iter().filter(|r| r.state == "queued") {
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, row.kind).execute(pool).await?;
    }
    Ok(rows.iter().map(|r| state_of(&r.state)).collect())
}

/// A job or a pipeline's stage as someone following it reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Followed {
    pub id: i64,
    /// The stage's name in its pipeline, else the job's kind.
    pub name: String,
    pub state: JobState,
    pub error: Option<String>,
    /// Step, total and message of its last progress report.
    pub progress: Option<(i64, i64, String)>,
    /// From its first start to its end.
    pub seconds: Option<f64>,
}

/// Job `id` and, for a pipeline, its stages, in id order.
pub async fn followed(pool: &PgPool, id: i64) -> sqlx::Result<Vec<Followed>> {
    let rows = sqlx::query!(
        r#"SELECT j.id, COALESCE(j.stage, j.kind) AS "name!", j.state, j.error, p.step AS "step?",
                  p.total AS "total?", p.message AS "message?",
                  EXTRACT(EPOCH FROM j.finished_at - j.started_at)::float8 AS seconds
           FROM jobs j LEFT JOIN job_progress p ON p.job_id = j.id
           WHERE j.id = $1 OR j.pipeline_id = $1
           ORDER BY j.id"#,
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Followed {
            id: r.id,
            name: r.name,
            state: state_of(&r.state),
            error: r.error,
            progress: r.step.zip(r.total).zip(r.message).map(|((s, t), m)| (s, t, m)),
            seconds: r.seconds,
        })
        .collect())
}

/// The log lines of job `id` and of its stages after log line `after`: (line id, job id, level, message).
pub async fn followed_logs(pool: &PgPool, id: i64, after: i64) -> sqlx::Result<Vec<(i64, i64, String, String)>> {
    let rows = sqlx::query!(
        r#"SELECT l.id, l.job_id, l.level, l.message FROM job_logs l JOIN jobs j ON j.id = l.job_id
           WHERE (j.id = $1 OR j.pipeline_id = $1) AND l.id > $2
           ORDER BY l.id"#,
        id,
        after
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.job_id, r.level, r.message)).collect())
}
