//! `/artifacts`, `/jobs/{id}/artifacts`, `/checkpoints`, `/samples`: what jobs made, visible as the job that
//! made it is (see `jobs`), and its content.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use repdiff_api::Artifact;
use serde::Deserialize;
use sqlx::PgPool;

use super::AppState;
use super::auth::CurrentUser;
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use super::jobs::visible_job;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs/{id}/artifacts", get(job_artifacts))
        .route("/checkpoints", get(list_checkpoints))
        .route("/samples", get(list_samples))
        .route("/artifacts/{id}", get(get_artifact))
        .route("/artifacts/{id}/content", get(artifact_content))
}

fn artifact_view(a: crate::artifacts::Artifact) -> Artifact {
    Artifact {
        url: format!("/api/v1/artifacts/{}/content", a.id),
        id: a.id,
        job_id: a.job_id,
        kind: a.kind,
        key: a.key,
        media_type: a.media_type,
        size: a.size,
        meta: a.meta,
        created_at: a.created_at,
        updated_at: a.updated_at,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ArtifactQuery {
    /// Only artifacts of this kind (`checkpoint`, `sample_image`, `grid`, ...).
    kind: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/artifacts", tag = "artifacts", params(ArtifactQuery),
    responses((status = 200, body = Vec<Artifact>), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn job_artifacts(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ArtifactQuery>,
) -> ApiResult<Json<Vec<Artifact>>> {
    visible_job(&state.pool, &user, id).await?;
    let artifacts = crate::artifacts::for_job(&state.pool, id, q.kind.as_deref()).await?;
    Ok(Json(artifacts.into_iter().map(artifact_view).collect()))
}

/// Checkpoints of the training jobs `user` may see, newest first (what sample and fine-tune jobs start
/// from).
#[utoipa::path(get, path = "/api/v1/checkpoints", tag = "artifacts", responses((status = 200, body = Vec<Artifact>)))]
pub async fn list_checkpoints(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Vec<Artifact>>> {
    let rows = sqlx::query_as!(
        crate::artifacts::Artifact,
        r#"SELECT a.id, a.key, a.job_id, a.kind, a.media_type, a.size, a.meta, a.created_at, a.updated_at
           FROM artifacts a JOIN jobs j ON j.id = a.job_id
           WHERE a.kind = 'checkpoint' AND job_visible(j.owner_id, j.experiment_id, j.source_datasets, j.publish_private, $2, $1)
           ORDER BY a.updated_at DESC LIMIT 500"#,
        user.is_admin(),
        user.id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.into_iter().map(artifact_view).collect()))
}

/// What the gallery lists.
#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    /// Sample images (one per sample).
    #[default]
    Sample,
    /// Counterfactual rows (a scan, its denoising under each class, their difference: Fig. 10).
    Counterfactual,
    /// Denoising trajectories (a sampling run's x0 predictions, a row per sample: Fig. 11).
    Trajectory,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SampleQuery {
    /// sample (default), counterfactual or trajectory.
    kind: Option<SampleKind>,
    /// The job that made them.
    job: Option<i64>,
    /// The training job whose checkpoint they were drawn from.
    from_job: Option<i64>,
    class: Option<i64>,
    /// The step of that checkpoint.
    checkpoint_step: Option<i64>,
    /// Only images with a larger artifact id (the last id of the previous page).
    after: Option<i64>,
    /// 1 to 1000; default 200.
    limit: Option<i64>,
}

/// The gallery's images: samples, counterfactual rows or trajectories (`kind`), filtered by the job that
/// made them, the training job whose checkpoint they came from, class and checkpoint step.
#[utoipa::path(get, path = "/api/v1/samples", tag = "artifacts", params(SampleQuery),
    responses((status = 200, body = Vec<Artifact>), (status = 422, body = repdiff_api::ErrorBody)))]
pub async fn list_samples(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<SampleQuery>,
) -> ApiResult<Json<Vec<Artifact>>> {
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 1000"));
    }
    let (artifact_kind, job_kind) = match q.kind.unwrap_or_default() {
        SampleKind::Sample => ("sample_image", None),
        SampleKind::Counterfactual => ("figure", Some("counterfactual")),
        SampleKind::Trajectory => ("trajectory", None),
    };
    let rows = sqlx::query_as!(
        crate::artifacts::Artifact,
        r#"SELECT a.id, a.key, a.job_id, a.kind, a.media_type, a.size, a.meta, a.created_at, a.updated_at
           FROM artifacts a JOIN jobs j ON j.id = a.job_id
           WHERE a.kind = $9 AND ($10::text IS NULL OR j.kind = $10)
             AND job_visible(j.owner_id, j.experiment_id, j.source_datasets, j.publish_private, $2, $1)
             AND ($3::bigint IS NULL OR a.job_id = $3)
             AND ($4::bigint IS NULL OR (a.meta->>'from_job')::bigint = $4)
             AND ($5::bigint IS NULL OR (a.meta->>'class')::bigint = $5)
             AND ($6::bigint IS NULL OR (a.meta->>'checkpoint_step')::bigint = $6)
             AND a.id > $7
           ORDER BY a.id LIMIT $8"#,
        user.is_admin(),
        user.id,
        q.job,
        q.from_job,
        q.class,
        q.checkpoint_step,
        q.after.unwrap_or(0),
        limit,
        artifact_kind,
        job_kind
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.into_iter().map(artifact_view).collect()))
}

async fn visible_artifact(pool: &PgPool, user: &CurrentUser, id: i64) -> ApiResult<crate::artifacts::Artifact> {
    let artifact = crate::artifacts::get(pool, id).await?.ok_or_else(|| ApiError::not_found("artifact", id))?;
    match artifact.job_id {
        Some(job) => {
            visible_job(pool, user, job).await.map_err(|_| ApiError::not_found("artifact", id))?;
        }
        None if !user.is_admin() => return Err(ApiError::not_found("artifact", id)),
        None => {}
    }
    Ok(artifact)
}

#[utoipa::path(get, path = "/api/v1/artifacts/{id}", tag = "artifacts",
    responses((status = 200, body = Artifact), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn get_artifact(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Artifact>> {
    Ok(Json(artifact_view(visible_artifact(&state.pool, &user, id).await?)))
}

/// The artifact's bytes, streamed from the store.
#[utoipa::path(get, path = "/api/v1/artifacts/{id}/content", tag = "artifacts",
    responses((status = 200, content_type = "application/octet-stream", description = "the file"),
              (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn artifact_content(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Response> {
    let artifact = visible_artifact(&state.pool, &user, id).await?;
    let (size, stream) = state.storage.stream(&artifact.key).await?;
    let name = artifact.key.rsplit('/').next().unwrap_or("artifact").replace('"', "");
    let mut response = Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other))).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&artifact.media_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
