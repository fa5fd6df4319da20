//! `/jobs`, `/runs`, `/job-kinds`, `/presets`. A job is visible to its owner, to everyone when it belongs to
//! a shared experiment, and to admins; anything else is answered 404, as if it did not exist. What jobs
//! make is in `artifacts`; the experiments that group them in `experiments`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use repdiff_api::{
    Job, JobKind, JobPage, JobPatch, JobState, LogLine, MetricSeries, MetricSummary, Preset, Progress, Role, Run,
    RunPage, SubmitJob,
};
use serde::Deserialize;
use sqlx::PgPool;

use super::AppState;
use super::auth::CurrentUser;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::queue::{self, NewJob};
use crate::worker::Input;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/job-kinds", get(job_kinds))
        .route("/presets", get(presets))
        .route("/jobs", get(list_jobs).post(submit_job))
        .route("/runs", get(list_runs))
        .route("/jobs/{id}", get(get_job).patch(patch_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/jobs/{id}/logs", get(job_logs))
        .route("/jobs/{id}/metrics", get(job_metrics))
}

#[derive(Default)]
struct JobFilter {
    id: Option<i64>,
    state: Option<JobState>,
    kind: Option<String>,
    experiment_id: Option<i64>,
    tag: Option<String>,
    pipeline: Option<i64>,
    before: Option<i64>,
    limit: i64,
}

/// The jobs `user` may see that pass `filter`, newest first.
async fn visible_jobs(pool: &PgPool, user: &CurrentUser, filter: &JobFilter) -> sqlx::Result<Vec<Job>> {
    let rows = sqlx::query!(
        r#"SELECT j.id, j.kind, j.params, j.state, u.username AS "owner?", j.experiment_id, j.priority, j.attempt,
                  j.max_attempts, j.cancel_requested, j.tags, j.error, j.result, j.created_at, j.started_at,
                  j.finished_at, j.pipeline_id, j.stage, p.step AS "step?", p.total AS "total?", p.message AS "message?", p.updated_at AS "progress_at?",
                  ARRAY(SELECT d.depends_on FROM job_dependencies d WHERE d.job_id = j.id ORDER BY 1) AS "depends_on!"
           FROM jobs j
           LEFT JOIN users u ON u.id = j.owner_id
           LEFT JOIN job_progress p ON p.job_id = j.id
           WHERE job_visible(j.owner_id, j.experiment_id, j.source_datasets, j.publish_private, $2, $1)
             AND ($3::bigint IS NULL OR j.id = $3)
             AND ($4::text IS NULL OR j.state = $4)
             AND ($5::text IS NULL OR j.kind = $5)
             AND ($6::bigint IS NULL OR j.experiment_id = $6)
             AND ($7::bigint IS NULL OR j.id < $7)
             AND ($9::text IS NULL OR $9 = ANY(j.tags))
             AND ($10::bigint IS NULL OR j.pipeline_id = $10)
           ORDER BY j.id DESC
           LIMIT $8"#,
        user.is_admin(),
        user.id,
        filter.id,
        filter.state.map(JobState::as_str),
        filter.kind,
        filter.experiment_id,
        filter.before,
        filter.limit,
        filter.tag,
        filter.pipeline,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Job {
            id: r.id,
            kind: r.kind,
            params: r.params,
            state: queue::state_of(&r.state),
            owner: r.owner,
            experiment_id: r.experiment_id,
            priority: r.priority,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            cancel_requested: r.cancel_requested,
            tags: r.tags,
            error: r.error,
            result: r.result,
            progress: match (r.step, r.total, r.message, r.progress_at) {
                (Some(step), Some(total), Some(message), Some(updated_at)) => {
                    Some(Progress { step, total, message, updated_at })
                }
                _ => None,
            },
            depends_on: r.depends_on,
            pipeline_id: r.pipeline_id,
            stage: r.stage,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
        .collect())
}

/// The job if `user` may see it, else 404.
pub(super) async fn visible_job(pool: &PgPool, user: &CurrentUser, id: i64) -> ApiResult<Job> {
    let filter = JobFilter { id: Some(id), limit: 1, ..JobFilter::default() };
    visible_jobs(pool, user, &filter).await?.pop().ok_or_else(|| ApiError::not_found("job", id))
}

/// A visible job that `user` may also change (owner or admin), else 403.
async fn own_job(pool: &PgPool, user: &CurrentUser, id: i64, to: &str) -> ApiResult<Job> {
    let job = visible_job(pool, user, id).await?;
    if !user.is_admin() && job.owner.as_deref() != Some(user.username.as_str()) {
        return Err(ApiError::forbidden(format!("only its owner or an admin may {to} job {id}")));
    }
    Ok(job)
}

#[utoipa::path(get, path = "/api/v1/job-kinds", tag = "jobs", responses((status = 200, body = Vec<JobKind>)))]
pub async fn job_kinds(State(state): State<AppState>, _user: CurrentUser) -> Json<Vec<JobKind>> {
    Json(state.registry.kinds().into_iter().map(|kind| JobKind { kind }).collect())
}

/// The run configurations a `pretrain` job may name, in full (launch forms show their values).
#[utoipa::path(get, path = "/api/v1/presets", tag = "jobs", responses((status = 200, body = Vec<Preset>)))]
pub async fn presets(_user: CurrentUser) -> ApiResult<Json<Vec<Preset>>> {
    let mut out = Vec::new();
    for name in repdiff_engine::config::PRESETS {
        let config = repdiff_engine::config::RunConfig::preset(name).map_err(ApiError::internal)?;
        let config = serde_json::to_value(config).map_err(ApiError::internal)?;
        out.push(Preset { name: name.to_string(), config });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// queued, running, succeeded, failed or cancelled.
    #[param(value_type = Option<String>)]
    state: Option<JobState>,
    kind: Option<String>,
    experiment_id: Option<i64>,
    /// Only jobs with this tag.
    tag: Option<String>,
    /// Only the stages of this pipeline (a `reproduce` job).
    pipeline: Option<i64>,
    /// Only jobs with a smaller id (the previous page's `next_before`).
    before: Option<i64>,
    /// 1 to 200; default 50.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, body = JobPage), (status = 422, body = repdiff_api::ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> ApiResult<Json<JobPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 200"));
    }
    let filter = JobFilter {
        id: None,
        state: q.state,
        kind: q.kind,
        experiment_id: q.experiment_id,
        tag: q.tag,
        pipeline: q.pipeline,
        before: q.before,
        limit: limit + 1,
    };
    let mut jobs = visible_jobs(&state.pool, &user, &filter).await?;
    let next_before = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(Json(JobPage { jobs, next_before }))
}

/// Jobs as a runs table: each with the last, minimum and maximum of every metric (and their steps), for
/// comparing runs of an experiment. Same filters and pages as `GET /jobs`.
#[utoipa::path(get, path = "/api/v1/runs", tag = "jobs", params(JobQuery),
    responses((status = 200, body = RunPage), (status = 422, body = repdiff_api::ErrorBody)))]
pub async fn list_runs(
    State(state): State<AppState>,
    user: CurrentUser,
    query: ApiQuery<JobQuery>,
) -> ApiResult<Json<RunPage>> {
    let Json(page) = list_jobs(State(state.clone()), user, query).await?;
    let ids: Vec<i64> = page.jobs.iter().map(|j| j.id).collect();
    let rows = sqlx::query!(
        r#"SELECT job_id, name, count(*) AS "points!", max(step) AS "last_step!",
                  (array_agg(value ORDER BY step DESC))[1] AS "last!",
                  min(value) AS "min!", (array_agg(step ORDER BY value, step))[1] AS "min_step!",
                  max(value) AS "max!", (array_agg(step ORDER BY value DESC, step))[1] AS "max_step!"
           FROM job_metrics WHERE job_id = ANY($1) GROUP BY job_id, name ORDER BY job_id, name"#,
        &ids
    )
    .fetch_all(&state.pool)
    .await?;
    let runs = page
        .jobs
        .into_iter()
        .map(|job| {
            let metrics = rows
                .iter()
                .filter(|r| r.job_id == job.id)
                .map(|r| MetricSummary {
                    name: r.name.clone(),
                    points: r.points,
                    last_step: r.last_step,
                    last: r.last,
                    min: r.min,
                    min_step: r.min_step,
                    max: r.max,
                    max_step: r.max_step,
                })
                .collect();
            Run { job, metrics }
        })
        .collect();
    Ok(Json(RunPage { runs, next_before: page.next_before }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    responses((status = 200, body = Job), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Job>> {
    Ok(Json(visible_job(&state.pool, &user, id).await?))
}

/// Whether `user` may read the artifact stored under `key` (through the job that made it).
async fn can_read_key(pool: &PgPool, user: &CurrentUser, key: &str) -> sqlx::Result<bool> {
    let found = sqlx::query_scalar!(
        r#"SELECT a.id FROM artifacts a JOIN jobs j ON j.id = a.job_id
           WHERE a.key = $1 AND job_visible(j.owner_id, j.experiment_id, j.source_datasets, j.publish_private, $3, $2)"#,
        key,
        user.is_admin(),
        user.id
    )
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// Queues a job. With an `Idempotency-Key` header, submitting again with the same key returns the job
/// the first submission made (status 200 instead of 201).
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = SubmitJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "submit at most once per key")),
    responses((status = 201, body = Job), (status = 200, body = Job, description = "the job an earlier submission with this Idempotency-Key made"),
              (status = 403, body = repdiff_api::ErrorBody), (status = 422, body = repdiff_api::ErrorBody)))]
pub async fn submit_job(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    // Parsed here rather than by the extractor: an unknown kind or a misspelt parameter is `invalid_params`.
    let job: SubmitJob = serde_json::from_value(body).map_err(|e| ApiError::invalid_params(e.to_string()))?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => {
            let key = value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 200);
            Some(key.ok_or_else(|| ApiError::invalid("Idempotency-Key is 1-200 visible ASCII characters"))?)
        }
        None => None,
    };
    let (job, created) = submit(&state, &user, &job, idempotency_key).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(job)))
}

/// Queues `submit` for `user` with every check the API makes (the kind's parameters, the inputs the user
/// may read, the experiment, the limits); a pipeline with its stages. With an idempotency key used before
/// by the same user, returns the job that made (`false`). The API's `POST /jobs` and the command line's
/// `repdiff run`/`reproduce` submit through here.
pub async fn submit(
    state: &AppState,
    user: &CurrentUser,
    submit: &SubmitJob,
    idempotency_key: Option<&str>,
) -> ApiResult<(Job, bool)> {
    user.require(Role::Researcher, "running jobs")?;
    let (kind, params) = (submit.spec.kind(), submit.spec.params());
    // The spec's own checks, then this deployment's (the kind's task runs both).
    crate::jobs::validate(&state.registry, kind, &params).map_err(ApiError::invalid_field)?;
    let handler = state.registry.get(kind).expect("validate knows the kind");
    // What the job derives from: the datasets it reads, and those the jobs whose artifacts it reads derive
    // from (who may see the run in a shared experiment depends on them).
    let mut sources = Vec::new();
    let mut metas = std::collections::HashMap::new();
    // Jobs whose artifacts this one reads but which have not written them yet: it waits on them.
    let mut implied = Vec::new();
    for input in handler.reads(&params) {
        match input {
            Input::Artifact(key) => {
                if can_read_key(&state.pool, user, &key).await? {
                    sources.extend(sources_of_key(&state.pool, &key).await?);
                    if let Some(meta) = crate::artifacts::meta_of(&state.pool, &key).await? {
                        metas.insert(key, meta);
                    }
                } else if let Some((producer, its_sources)) = unfinished_producer(&state.pool, user, &key).await? {
                    implied.push(producer);
                    sources.extend(its_sources);
                } else {
                    return Err(ApiError::invalid_params(format!("there is no artifact {key:?} that you may read")));
                }
            }
            Input::JobResult(id) => {
                let producer = visible_job(&state.pool, user, id)
                    .await
                    .map_err(|_| ApiError::invalid_params(format!("there is no job {id} that you may see")))?;
                if !producer.state.is_final() {
                    implied.push(id);
                }
                sources.extend(sources_of_job(&state.pool, id).await?);
            }
            Input::Dataset(id) => {
                super::datasets::visible_dataset(&state.pool, user, id)
                    .await
                    .map_err(|_| ApiError::invalid_params(format!("there is no dataset {id} that you may read")))?;
                sources.push(id);
            }
            Input::LabelledDataset(id, splits) => {
                super::datasets::visible_dataset(&state.pool, user, id)
                    .await
                    .map_err(|_| ApiError::invalid_params(format!("there is no dataset {id} that you may read")))?;
                let unlabelled = crate::scans::unlabelled_in(&state.pool, id, &splits)
                    .await?
                    .map_err(|e| ApiError::invalid_params(format!("dataset {id}: {e}")))?;
                if let Some((unlabelled, total, split)) = unlabelled {
                    let part =
                        split.map(|s| format!(" in the {} part of its split", s.reads().name())).unwrap_or_default();
                    return Err(ApiError::invalid_params(format!(
                        "dataset {id} has {unlabelled} unlabelled slices{part} (of {total}): this job learns or scores \
                         labels, so every slice it reads needs one; label them on the dataset page (or PATCH \
                         /api/v1/scans/ID, or upload a labels file), or pick a part without them"
                    )));
                }
                sources.push(id);
            }
            Input::OwnDataset(id) => {
                super::datasets::own_dataset(&state.pool, user, id, "import into")
                    .await
                    .map_err(|_| ApiError::invalid_params(format!("there is no dataset {id} that you may change")))?;
                sources.push(id);
            }
        }
    }
    sources.sort_unstable();
    sources.dedup();
    handler.admit(&params, &metas).map_err(ApiError::invalid_params)?;
    if let Some(experiment) = submit.experiment_id {
        let experiment = super::experiments::visible_experiment(&state.pool, user, experiment).await?;
        if !user.is_admin() && experiment.owner != user.username && !experiment.members.contains(&user.username) {
            return Err(ApiError::forbidden(format!(
                "only the owner and members of experiment {} run jobs in it; ask {} to add you",
                experiment.id, experiment.owner
            )));
        }
    }
    let tags = repdiff_api::check_tags(&submit.tags).map_err(ApiError::invalid)?;
    if !(-100..=100).contains(&submit.priority) {
        return Err(ApiError::invalid("priority is -100 to 100"));
    }
    let max_attempts = submit.max_attempts.unwrap_or(3);
    if !(1..=20).contains(&max_attempts) {
        return Err(ApiError::invalid("max_attempts is 1 to 20"));
    }
    // Keys are per user: two users' "job-1" are different jobs.
    let idempotency_key = idempotency_key.map(|key| format!("{}:{key}", user.id));
    let mut depends_on = [submit.depends_on.clone(), implied].concat();
    depends_on.sort_unstable();
    depends_on.dedup();
    if depends_on.len() > 1000 {
        return Err(ApiError::invalid("depends_on lists at most 1000 jobs"));
    }
    for &id in &depends_on {
        visible_job(&state.pool, user, id)
            .await
            .map_err(|_| ApiError::invalid(format!("depends_on: there is no job {id} that you may see")))?;
    }
    let new = NewJob {
        kind: kind.to_string(),
        params,
        priority: submit.priority,
        max_attempts,
        idempotency_key,
        owner_id: Some(user.id),
        experiment_id: submit.experiment_id,
        depends_on,
        id: None,
        stage_of: None,
    };
    let (queued, created) = match &submit.spec {
        // The paper's pipeline: its stages as jobs of their own, and this one waiting on them.
        repdiff_api::jobs::JobSpec::Reproduce(_) => {
            let dino = state.config.weights_dir.join(repdiff_engine::dino::WEIGHTS_FILE).exists();
            crate::pipeline::submit(&state.pool, &state.registry, &new, dino).await.map_err(|e| match e {
                crate::pipeline::Refused::Invalid(invalid) => ApiError::invalid_field(invalid),
                crate::pipeline::Refused::Db(e) => e.into(),
            })?
        }
        _ => queue::submit_once(&state.pool, &new).await?,
    };
    if created {
        // A pipeline's stages are the pipeline's: the same tags, sources and consent.
        sqlx::query!(
            r#"UPDATE jobs SET source_datasets = $2, publish_private = $3, tags = $4
               WHERE id = $1 OR pipeline_id = $1"#,
            queued.id,
            &sources,
            submit.publish_private,
            &tags
        )
        .execute(&state.pool)
        .await?;
    }
    Ok((visible_job(&state.pool, user, queued.id).await?, created))
}

/// The job that will write `key` (`jobs/<id>/...`) when it is one `user` may see that has not finished
/// yet, with the datasets it derives from: a job that reads the key can wait on it.
async fn unfinished_producer(pool: &PgPool, user: &CurrentUser, key: &str) -> sqlx::Result<Option<(i64, Vec<i64>)>> {
    let Some(id) =
        key.strip_prefix("jobs/").and_then(|rest| rest.split_once('/')).and_then(|(id, _)| id.parse::<i64>().ok())
    else {
        return Ok(None);
    };
    let producer = sqlx::query!(
        r#"SELECT j.id, j.source_datasets FROM jobs j
           WHERE j.id = $1 AND j.state IN ('queued', 'running')
             AND job_visible(j.owner_id, j.experiment_id, j.source_datasets, j.publish_private, $2, $3)"#,
        id,
        user.id,
        user.is_admin()
    )
    .fetch_optional(pool)
    .await?;
    Ok(producer.map(|p| (p.id, p.source_datasets)))
}

/// The datasets job `id` derives from.
async fn sources_of_job(pool: &PgPool, id: i64) -> sqlx::Result<Vec<i64>> {
    let sources =
        sqlx::query_scalar!("SELECT source_datasets FROM jobs WHERE id = $1", id).fetch_optional(pool).await?;
    Ok(sources.unwrap_or_default())
}

/// The datasets the job that made artifact `key` derives from.
async fn sources_of_key(pool: &PgPool, key: &str) -> sqlx::Result<Vec<i64>> {
    let sources = sqlx::query_scalar!(
        "SELECT j.source_datasets FROM artifacts a JOIN jobs j ON j.id = a.job_id WHERE a.key = $1",
        key
    )
    .fetch_optional(pool)
    .await?;
    Ok(sources.unwrap_or_default())
}

async fn set_tags(pool: &PgPool, id: i64, tags: &[String]) -> sqlx::Result<()> {
    sqlx::query!("UPDATE jobs SET tags = $2 WHERE id = $1", id, tags).execute(pool).await?;
    Ok(())
}

/// Changes a job's tags (its owner or an admin).
#[utoipa::path(patch, path = "/api/v1/jobs/{id}", tag = "jobs", request_body = JobPatch,
    responses((status = 200, body = Job), (status = 403, body = repdiff_api::ErrorBody),
              (status = 404, body = repdiff_api::ErrorBody), (status = 422, body = repdiff_api::ErrorBody)))]
pub async fn patch_job(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<JobPatch>,
) -> ApiResult<Json<Job>> {
    own_job(&state.pool, &user, id, "change").await?;
    if let Some(tags) = patch.tags {
        let tags = repdiff_api::check_tags(&tags).map_err(ApiError::invalid)?;
        set_tags(&state.pool, id, &tags).await?;
    }
    Ok(Json(visible_job(&state.pool, &user, id).await?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    responses((status = 200, body = Job), (status = 403, body = repdiff_api::ErrorBody),
              (status = 404, body = repdiff_api::ErrorBody), (status = 409, body = repdiff_api::ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Job>> {
    let job = own_job(&state.pool, &user, id, "cancel").await?;
    if job.state.is_final() {
        return Err(ApiError::conflict(format!("job {id} has already finished ({})", job.state.as_str())));
    }
    queue::cancel(&state.pool, id).await?;
    Ok(Json(visible_job(&state.pool, &user, id).await?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    responses((status = 200, body = Job), (status = 409, body = repdiff_api::ErrorBody)))]
pub async fn retry_job(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Job>> {
    user.require(Role::Researcher, "running jobs")?;
    own_job(&state.pool, &user, id, "retry").await?;
    if queue::retry(&state.pool, id).await?.is_none() {
        return Err(ApiError::conflict(format!("job {id} is not failed or cancelled")));
    }
    Ok(Json(visible_job(&state.pool, &user, id).await?))
}

/// Server-sent events: `event: job` with the job as JSON whenever it changes (progress, state), ending
/// after it is final.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    responses((status = 200, content_type = "text/event-stream", body = Job), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn job_events(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = visible_job(&state.pool, &user, id).await?;
    let interval = state.config.event_interval;
    let stream = futures_util::stream::unfold(
        (Some(first), None::<String>, false, state.pool.clone(), user),
        move |(next, last, done, pool, user)| async move {
            if done {
                return None;
            }
            let mut job = next;
            loop {
                let current = match job.take() {
                    Some(job) => job,
                    None => {
                        tokio::time::sleep(interval).await;
                        match visible_job(&pool, &user, id).await {
                            Ok(job) => job,
                            // Gone (deleted) or the database is down: end the stream; clients reconnect.
                            Err(_) => return None,
                        }
                    }
                };
                let text = serde_json::to_string(&current).unwrap_or_default();
                if last.as_deref() != Some(text.as_str()) {
                    let finished = current.state.is_final();
                    let event = Event::default().event("job").data(text.clone());
                    return Some((Ok(event), (None, Some(text), finished, pool, user)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines after this line id (for tailing).
    after: Option<i64>,
    /// 1 to 1000; default 200.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", tag = "jobs", params(LogQuery),
    responses((status = 200, body = Vec<LogLine>), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn job_logs(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Json<Vec<LogLine>>> {
    visible_job(&state.pool, &user, id).await?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 1000"));
    }
    let lines = sqlx::query_as!(
        LogLine,
        "SELECT id, at, level, message FROM job_logs WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        id,
        q.after.unwrap_or(0),
        limit
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(lines))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MetricQuery {
    /// One metric (`loss`, `mse`, `vb`, `grad_norm`, ...); default all.
    name: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/metrics", tag = "jobs", params(MetricQuery),
    responses((status = 200, body = Vec<MetricSeries>), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn job_metrics(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<MetricQuery>,
) -> ApiResult<Json<Vec<MetricSeries>>> {
    visible_job(&state.pool, &user, id).await?;
    let rows = sqlx::query!(
        r#"SELECT name, array_agg(step ORDER BY step) AS "steps!", array_agg(value ORDER BY step) AS "values!"
           FROM job_metrics WHERE job_id = $1 AND ($2::text IS NULL OR name = $2)
           GROUP BY name ORDER BY name"#,
        id,
        q.name
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.into_iter().map(|r| MetricSeries { name: r.name, steps: r.steps, values: r.values }).collect()))
}
