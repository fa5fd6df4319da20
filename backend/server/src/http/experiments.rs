//! `/experiments`: named groups of runs, private to their owner and members unless shared.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use repdiff_api::{Experiment, NewExperiment, ResourcePatch, Role};
use sqlx::PgPool;

use super::AppState;
use super::auth::CurrentUser;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/experiments", get(list_experiments).post(create_experiment))
        .route("/experiments/{id}", get(get_experiment).patch(patch_experiment))
        .route("/experiments/{id}/members/{username}", axum::routing::put(add_member).delete(remove_member))
}

struct ExperimentRow {
    id: i64,
    owner: String,
    name: String,
    description: String,
    shared: bool,
    members: Vec<String>,
    created_at: DateTime<Utc>,
}

impl From<ExperimentRow> for Experiment {
    fn from(r: ExperimentRow) -> Experiment {
        Experiment {
            id: r.id,
            owner: r.owner,
            name: r.name,
            description: r.description,
            shared: r.shared,
            members: r.members,
            created_at: r.created_at,
        }
    }
}

/// Experiments `user` may see (all, or the one `id`): their own, shared ones, those they are a member of.
async fn visible_experiments(pool: &PgPool, user: &CurrentUser, id: Option<i64>) -> sqlx::Result<Vec<Experiment>> {
    let rows = sqlx::query_as!(
        ExperimentRow,
        r#"SELECT e.id, u.username AS owner, e.name, e.description, e.shared, e.created_at,
                  ARRAY(SELECT m.username FROM experiment_members x JOIN users m ON m.id = x.user_id
                        WHERE x.experiment_id = e.id ORDER BY m.username) AS "members!"
           FROM experiments e JOIN users u ON u.id = e.owner_id
           WHERE ($1 OR e.shared OR e.owner_id = $2
                  OR EXISTS (SELECT 1 FROM experiment_members x WHERE x.experiment_id = e.id AND x.user_id = $2))
             AND ($3::bigint IS NULL OR e.id = $3)
           ORDER BY e.id DESC"#,
        user.is_admin(),
        user.id,
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Experiment::from).collect())
}

pub(super) async fn visible_experiment(pool: &PgPool, user: &CurrentUser, id: i64) -> ApiResult<Experiment> {
    visible_experiments(pool, user, Some(id)).await?.pop().ok_or_else(|| ApiError::not_found("experiment", id))
}

/// A visible experiment `user` may change (owner or admin), else 403.
async fn own_experiment(pool: &PgPool, user: &CurrentUser, id: i64, to: &str) -> ApiResult<Experiment> {
    let experiment = visible_experiment(pool, user, id).await?;
    if !user.is_admin() && experiment.owner != user.username {
        return Err(ApiError::forbidden(format!("only its owner or an admin may {to} experiment {id}")));
    }
    Ok(experiment)
}

#[utoipa::path(get, path = "/api/v1/experiments", tag = "experiments", responses((status = 200, body = Vec<Experiment>)))]
pub async fn list_experiments(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Vec<Experiment>>> {
    Ok(Json(visible_experiments(&state.pool, &user, None).await?))
}

/// Makes a user a member of an experiment: members run jobs in it (its owner or an admin).
#[utoipa::path(put, path = "/api/v1/experiments/{id}/members/{username}", tag = "experiments",
    responses((status = 200, body = Experiment), (status = 403, body = repdiff_api::ErrorBody), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn add_member(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath((id, username)): ApiPath<(i64, String)>,
) -> ApiResult<Json<Experiment>> {
    own_experiment(&state.pool, &user, id, "add members to").await?;
    let member = sqlx::query_scalar!("SELECT id FROM users WHERE lower(username) = lower($1)", username)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("user", format!("{username:?}")))?;
    sqlx::query!(
        "INSERT INTO experiment_members (experiment_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        id,
        member
    )
    .execute(&state.pool)
    .await?;
    Ok(Json(visible_experiment(&state.pool, &user, id).await?))
}

/// Removes a member from an experiment (its owner or an admin).
#[utoipa::path(delete, path = "/api/v1/experiments/{id}/members/{username}", tag = "experiments",
    responses((status = 200, body = Experiment), (status = 403, body = repdiff_api::ErrorBody), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath((id, username)): ApiPath<(i64, String)>,
) -> ApiResult<Json<Experiment>> {
    own_experiment(&state.pool, &user, id, "remove members from").await?;
    sqlx::query!(
        r#"DELETE FROM experiment_members x USING users m
           WHERE x.experiment_id = $1 AND x.user_id = m.id AND lower(m.username) = lower($2)"#,
        id,
        username
    )
    .execute(&state.pool)
    .await?;
    Ok(Json(visible_experiment(&state.pool, &user, id).await?))
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}", tag = "experiments",
    responses((status = 200, body = Experiment), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn get_experiment(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Experiment>> {
    Ok(Json(visible_experiment(&state.pool, &user, id).await?))
}

#[utoipa::path(post, path = "/api/v1/experiments", tag = "experiments", request_body = NewExperiment,
    responses((status = 201, body = Experiment), (status = 403, body = repdiff_api::ErrorBody)))]
pub async fn create_experiment(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewExperiment>,
) -> ApiResult<(StatusCode, Json<Experiment>)> {
    user.require(Role::Researcher, "creating experiments")?;
    repdiff_api::check_name("experiment", &new.name).map_err(ApiError::invalid)?;
    let id = sqlx::query_scalar!(
        "INSERT INTO experiments (owner_id, name, description, shared) VALUES ($1, $2, $3, $4) RETURNING id",
        user.id,
        new.name.trim(),
        new.description,
        new.shared
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(visible_experiment(&state.pool, &user, id).await?)))
}

/// Renames, describes, shares or unshares an experiment (its owner or an admin).
#[utoipa::path(patch, path = "/api/v1/experiments/{id}", tag = "experiments", request_body = ResourcePatch,
    responses((status = 200, body = Experiment), (status = 403, body = repdiff_api::ErrorBody), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn patch_experiment(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<ResourcePatch>,
) -> ApiResult<Json<Experiment>> {
    own_experiment(&state.pool, &user, id, "change").await?;
    if patch.keep_file_names.is_some() {
        return Err(ApiError::invalid("keep_file_names is a dataset's setting"));
    }
    if let Some(name) = &patch.name {
        repdiff_api::check_name("experiment", name).map_err(ApiError::invalid)?;
    }
    sqlx::query!(
        r#"UPDATE experiments SET name = coalesce($2, name), description = coalesce($3, description),
               shared = coalesce($4, shared) WHERE id = $1"#,
        id,
        patch.name.as_deref().map(str::trim),
        patch.description,
        patch.shared
    )
    .execute(&state.pool)
    .await?;
    Ok(Json(visible_experiment(&state.pool, &user, id).await?))
}
