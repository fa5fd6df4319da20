//! The OpenAPI 3 document at `/api/v1/openapi.json`, generated from the handlers' annotations and the
//! `repdiff-api` types, so it cannot drift from the code.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{auth, datasets, jobs};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API token from POST /api/v1/tokens"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::SESSION_COOKIE))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "RepDiff API",
        description = "Representation-conditional latent diffusion for CT. Every endpoint except health, \
                       login and this document needs a session cookie or an API token. Errors are \
                       `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    paths(
        super::health,
        auth::login, auth::logout, auth::me, auth::list_users, auth::add_user,
        auth::list_tokens, auth::add_token, auth::revoke_token,
        jobs::job_kinds, jobs::presets, jobs::list_jobs, jobs::list_runs, jobs::submit_job, jobs::get_job, jobs::patch_job, jobs::cancel_job, jobs::retry_job,
        jobs::job_events, jobs::job_logs, jobs::job_metrics, jobs::job_artifacts,
        jobs::list_checkpoints, jobs::list_samples, jobs::get_artifact, jobs::artifact_content,
        jobs::list_experiments, jobs::create_experiment, jobs::get_experiment, jobs::patch_experiment,
        datasets::list_datasets, datasets::create_dataset, datasets::get_dataset, datasets::patch_dataset, datasets::list_scans,
        datasets::upload_scans, datasets::split_summary, datasets::get_scan, datasets::patch_scan, datasets::scan_image, datasets::scan_dicom,
    ),
    components(schemas(repdiff_api::ErrorBody, repdiff_api::ErrorDetail, repdiff_api::JobState, repdiff_api::Role, jobs::SampleKind)),
    modifiers(&Security),
    security(("token" = []), ("session" = [])),
    tags(
        (name = "auth", description = "users, sessions, API tokens"),
        (name = "jobs", description = "the job queue: submit, watch, cancel, retry"),
        (name = "artifacts", description = "files jobs produced"),
        (name = "experiments", description = "named groups of runs"),
        (name = "datasets", description = "datasets of CT slices: upload, browse, label"),
        (name = "meta", description = "health"),
    )
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", responses((status = 200, description = "this document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
