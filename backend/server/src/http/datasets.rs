//! `/datasets` and `/scans`: datasets of CT slices, uploaded as DICOM, NIfTI or PNG/JPEG files. Every file
//! goes through the engine's import (DICOM de-identified per PS3.15 basic profile before anything is
//! stored), one file at a time, so a bad file is refused with its reason and the others are kept. A
//! dataset is visible to its owner, to everyone when shared, and to admins.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use repdiff_api::jobs::SplitUnit;
use repdiff_api::{
    Dataset, ErrorCode, NewDataset, RefusedFile, ResourcePatch, Role, Scan, ScanPatch, Series, SplitPart, SplitSummary,
    UploadReport,
};
use repdiff_engine::dataset::Labels;
use repdiff_engine::imaging::{PNG16_HU_OFFSET, Window};
use repdiff_engine::manifest::{MAX_SITE, Manifest, Part};
use serde::Deserialize;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;

use super::AppState;
use super::auth::CurrentUser;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::scans::{self, Naming, NewObjects};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/datasets", get(list_datasets).post(create_dataset))
        .route("/datasets/{id}", get(get_dataset).patch(patch_dataset))
        .route("/datasets/{id}/scans", get(list_scans))
        .route("/datasets/{id}/split", get(split_summary))
        .route("/datasets/{id}/series", get(list_series))
        .route("/scans/{id}", get(get_scan).patch(patch_scan))
        .route("/scans/{id}/image", get(scan_image))
        .route("/scans/{id}/dicom", get(scan_dicom))
}

/// The upload route: no request timeout (large uploads take long), its own body limit.
pub fn upload_routes(upload_limit: usize) -> Router<AppState> {
    Router::new().route("/datasets/{id}/scans", post(upload_scans)).layer(DefaultBodyLimit::max(upload_limit))
}

struct DatasetRow {
    id: i64,
    owner: String,
    name: String,
    description: String,
    shared: bool,
    keep_file_names: bool,
    scans: i64,
    hematoma: i64,
    patients: i64,
    series: i64,
    unlabelled: i64,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<DatasetRow> for Dataset {
    fn from(r: DatasetRow) -> Dataset {
        Dataset {
            id: r.id,
            owner: r.owner,
            name: r.name,
            description: r.description,
            shared: r.shared,
            keep_file_names: r.keep_file_names,
            scans: r.scans,
            hematoma: r.hematoma,
            patients: r.patients,
            series: r.series,
            unlabelled: r.unlabelled,
            created_at: r.created_at,
        }
    }
}

async fn visible_datasets(pool: &PgPool, user: &CurrentUser, id: Option<i64>) -> sqlx::Result<Vec<Dataset>> {
    let rows = sqlx::query_as!(
        DatasetRow,
        r#"SELECT d.id, u.username AS owner, d.name, d.description, d.shared, d.keep_file_names, d.created_at,
                  (SELECT count(*) FROM scans s WHERE s.dataset_id = d.id) AS "scans!",
                  (SELECT count(*) FROM scans s WHERE s.dataset_id = d.id AND s.labelled
                     AND (s.hypodensity OR s.margin_irregularity OR s.blend_sign OR s.fluid_level)) AS "hematoma!",
                  (SELECT count(DISTINCT s.patient) FROM scans s WHERE s.dataset_id = d.id) AS "patients!",
                  (SELECT count(DISTINCT s.series) FROM scans s WHERE s.dataset_id = d.id) AS "series!",
                  (SELECT count(*) FROM scans s WHERE s.dataset_id = d.id AND NOT s.labelled) AS "unlabelled!"
           FROM datasets d JOIN users u ON u.id = d.owner_id
           WHERE ($1 OR d.shared OR d.owner_id = $2) AND ($3::bigint IS NULL OR d.id = $3)
           ORDER BY d.id DESC"#,
        user.is_admin(),
        user.id,
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Dataset::from).collect())
}

/// The dataset if `user` may see it, else 404.
pub async fn visible_dataset(pool: &PgPool, user: &CurrentUser, id: i64) -> ApiResult<Dataset> {
    visible_datasets(pool, user, Some(id)).await?.pop().ok_or_else(|| ApiError::not_found("dataset", id))
}

/// A visible dataset `user` may also change (owner or admin), else 403.
pub async fn own_dataset(pool: &PgPool, user: &CurrentUser, id: i64, to: &str) -> ApiResult<Dataset> {
    let dataset = visible_dataset(pool, user, id).await?;
    if !user.is_admin() && dataset.owner != user.username {
        return Err(ApiError::forbidden(format!("only its owner or an admin may {to} dataset {id}")));
    }
    Ok(dataset)
}

#[utoipa::path(get, path = "/api/v1/datasets", tag = "datasets", responses((status = 200, body = Vec<Dataset>)))]
pub async fn list_datasets(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Vec<Dataset>>> {
    Ok(Json(visible_datasets(&state.pool, &user, None).await?))
}

#[utoipa::path(get, path = "/api/v1/datasets/{id}", tag = "datasets",
    responses((status = 200, body = Dataset), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn get_dataset(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Dataset>> {
    Ok(Json(visible_dataset(&state.pool, &user, id).await?))
}

#[utoipa::path(post, path = "/api/v1/datasets", tag = "datasets", request_body = NewDataset,
    responses((status = 201, body = Dataset), (status = 403, body = repdiff_api::ErrorBody)))]
pub async fn create_dataset(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewDataset>,
) -> ApiResult<(StatusCode, Json<Dataset>)> {
    user.require(Role::Researcher, "creating datasets")?;
    repdiff_api::check_name("dataset", &new.name).map_err(ApiError::invalid)?;
    let id = sqlx::query_scalar!(
        "INSERT INTO datasets (owner_id, name, description, shared, keep_file_names) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        user.id,
        new.name.trim(),
        new.description,
        new.shared,
        new.keep_file_names
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(visible_dataset(&state.pool, &user, id).await?)))
}

/// Renames, describes, shares or unshares a dataset, or changes whether it keeps the names of files
/// uploaded from now on (its owner or an admin).
#[utoipa::path(patch, path = "/api/v1/datasets/{id}", tag = "datasets", request_body = ResourcePatch,
    responses((status = 200, body = Dataset), (status = 403, body = repdiff_api::ErrorBody), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn patch_dataset(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<ResourcePatch>,
) -> ApiResult<Json<Dataset>> {
    own_dataset(&state.pool, &user, id, "change").await?;
    if let Some(name) = &patch.name {
        repdiff_api::check_name("dataset", name).map_err(ApiError::invalid)?;
    }
    sqlx::query!(
        r#"UPDATE datasets SET name = coalesce($2, name), description = coalesce($3, description),
               shared = coalesce($4, shared), keep_file_names = coalesce($5, keep_file_names) WHERE id = $1"#,
        id,
        patch.name.as_deref().map(str::trim),
        patch.description,
        patch.shared,
        patch.keep_file_names
    )
    .execute(&state.pool)
    .await?;
    Ok(Json(visible_dataset(&state.pool, &user, id).await?))
}

struct ScanRow {
    id: i64,
    dataset_id: i64,
    source_name: String,
    slice_index: i32,
    format: String,
    rows: i32,
    columns: i32,
    unit: String,
    site: i32,
    hypodensity: bool,
    margin_irregularity: bool,
    blend_sign: bool,
    fluid_level: bool,
    dicom_key: Option<String>,
    patient: Option<String>,
    study: Option<String>,
    series: Option<String>,
    instance: Option<i64>,
    position_mm: Option<f64>,
    labelled: bool,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<ScanRow> for Scan {
    fn from(r: ScanRow) -> Scan {
        Scan {
            image_url: format!("/api/v1/scans/{}/image", r.id),
            id: r.id,
            dataset_id: r.dataset_id,
            source_name: r.source_name,
            slice_index: r.slice_index,
            format: r.format,
            rows: r.rows,
            columns: r.columns,
            unit: r.unit,
            site: r.site,
            hypodensity: r.hypodensity,
            margin_irregularity: r.margin_irregularity,
            blend_sign: r.blend_sign,
            fluid_level: r.fluid_level,
            hematoma: r.hypodensity || r.margin_irregularity || r.blend_sign || r.fluid_level,
            has_dicom: r.dicom_key.is_some(),
            patient: r.patient,
            study: r.study,
            series: r.series,
            instance: r.instance,
            position_mm: r.position_mm,
            labelled: r.labelled,
            created_at: r.created_at,
        }
    }
}

/// Scans of datasets `user` may see: by id, or a dataset's page (ids after `after`).
async fn visible_scans(
    pool: &PgPool,
    user: &CurrentUser,
    scan: Option<i64>,
    dataset: Option<i64>,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<Scan>> {
    let rows = sqlx::query_as!(
        ScanRow,
        r#"SELECT s.id, s.dataset_id, s.source_name, s.slice_index, s.format, s.rows, s.columns, s.unit, s.site,
                  s.hypodensity, s.margin_irregularity, s.blend_sign, s.fluid_level, s.dicom_key,
                  s.patient, s.study, s.series, s.instance, s.position_mm, s.labelled, s.created_at
           FROM scans s JOIN datasets d ON d.id = s.dataset_id
           WHERE ($1 OR d.shared OR d.owner_id = $2)
             AND ($3::bigint IS NULL OR s.id = $3) AND ($4::bigint IS NULL OR s.dataset_id = $4) AND s.id > $5
           ORDER BY s.id LIMIT $6"#,
        user.is_admin(),
        user.id,
        scan,
        dataset,
        after,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Scan::from).collect())
}

async fn visible_scan(pool: &PgPool, user: &CurrentUser, id: i64) -> ApiResult<Scan> {
    visible_scans(pool, user, Some(id), None, 0, 1).await?.pop().ok_or_else(|| ApiError::not_found("scan", id))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// Only scans with a larger id (the last id of the previous page).
    after: Option<i64>,
    /// 1 to 1000; default 200.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/datasets/{id}/scans", tag = "datasets", params(ScanQuery),
    responses((status = 200, body = Vec<Scan>), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn list_scans(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ScanQuery>,
) -> ApiResult<Json<Vec<Scan>>> {
    visible_dataset(&state.pool, &user, id).await?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit is 1 to 1000"));
    }
    Ok(Json(visible_scans(&state.pool, &user, None, Some(id), q.after.unwrap_or(0), limit).await?))
}

#[utoipa::path(get, path = "/api/v1/scans/{id}", tag = "datasets",
    responses((status = 200, body = Scan), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn get_scan(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Scan>> {
    Ok(Json(visible_scan(&state.pool, &user, id).await?))
}

/// Edits a scan's site and markers (the label follows the markers). Giving any marker labels an unlabelled
/// scan; `labelled: false` makes it unlabelled again.
#[utoipa::path(patch, path = "/api/v1/scans/{id}", tag = "datasets", request_body = ScanPatch,
    responses((status = 200, body = Scan), (status = 403, body = repdiff_api::ErrorBody), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn patch_scan(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<ScanPatch>,
) -> ApiResult<Json<Scan>> {
    user.require(Role::Researcher, "editing labels")?;
    let scan = visible_scan(&state.pool, &user, id).await?;
    own_dataset(&state.pool, &user, scan.dataset_id, "edit").await?;
    if patch.site.is_some_and(|s| s < 0) {
        return Err(ApiError::invalid("site is a non-negative integer"));
    }
    let markers = [patch.hypodensity, patch.margin_irregularity, patch.blend_sign, patch.fluid_level];
    let labels_given = markers.iter().any(Option::is_some).then_some(true);
    sqlx::query!(
        r#"UPDATE scans SET site = coalesce($2, site), hypodensity = coalesce($3, hypodensity),
               margin_irregularity = coalesce($4, margin_irregularity), blend_sign = coalesce($5, blend_sign),
               fluid_level = coalesce($6, fluid_level), labelled = coalesce($7, labelled)
           WHERE id = $1"#,
        id,
        patch.site,
        patch.hypodensity,
        patch.margin_irregularity,
        patch.blend_sign,
        patch.fluid_level,
        patch.labelled.or(labels_given)
    )
    .execute(&state.pool)
    .await?;
    Ok(Json(visible_scan(&state.pool, &user, id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImageQuery {
    /// brain (default), subdural, soft-tissue, bone or LEVEL/WIDTH; ignored for grey images.
    window: Option<String>,
    /// Longest side in pixels (thumbnails); default the slice's own size.
    size: Option<u32>,
}

/// The slice as an 8-bit PNG through a CT window.
#[utoipa::path(get, path = "/api/v1/scans/{id}/image", tag = "datasets", params(ImageQuery),
    responses((status = 200, content_type = "image/png", description = "the windowed slice"), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn scan_image(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<ImageQuery>,
) -> ApiResult<Response> {
    visible_scan(&state.pool, &user, id).await?;
    let window = Window::parse(q.window.as_deref().unwrap_or("brain")).map_err(|e| ApiError::invalid(e.to_string()))?;
    if q.size.is_some_and(|s| !(8..=2048).contains(&s)) {
        return Err(ApiError::invalid("size is 8 to 2048"));
    }
    let key = sqlx::query_scalar!("SELECT key FROM scans WHERE id = $1", id).fetch_one(&state.pool).await?;
    let bytes = state.storage.get_bytes(&key).await?;
    let png = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let image = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
        let mut grey = match image {
            image::DynamicImage::ImageLuma16(hu) => {
                let values: Vec<f32> = hu.pixels().map(|p| p.0[0] as f32 - PNG16_HU_OFFSET).collect();
                let pixels = values.iter().map(|&v| (window.apply(v) * 255.0).round() as u8).collect();
                image::GrayImage::from_raw(hu.width(), hu.height(), pixels).expect("same size")
            }
            other => other.to_luma8(),
        };
        if let Some(size) = q.size {
            let scale = size as f32 / grey.width().max(grey.height()) as f32;
            let (w, h) = (
                ((grey.width() as f32 * scale).round() as u32).max(1),
                ((grey.height() as f32 * scale).round() as u32).max(1),
            );
            grey = image::imageops::resize(&grey, w, h, image::imageops::FilterType::Triangle);
        }
        let mut out = Cursor::new(Vec::new());
        grey.write_to(&mut out, image::ImageFormat::Png).map_err(|e| e.to_string())?;
        Ok(out.into_inner())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut response = Body::from(png).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
    Ok(response)
}

/// The scan's DICOM file as stored: de-identified (PS3.15 basic profile), never the uploaded original.
#[utoipa::path(get, path = "/api/v1/scans/{id}/dicom", tag = "datasets",
    responses((status = 200, content_type = "application/dicom", description = "the de-identified DICOM file"),
              (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn scan_dicom(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Response> {
    visible_scan(&state.pool, &user, id).await?;
    let key = sqlx::query_scalar!("SELECT dicom_key FROM scans WHERE id = $1", id).fetch_one(&state.pool).await?;
    let key = key.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("scan {id} did not come from DICOM"))
    })?;
    let bytes = state.storage.get_bytes(&key).await?;
    let mut response = Body::from(bytes).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/dicom"));
    Ok(response)
}

/// File names from a client are only names: no folders, nothing hidden, nothing odd.
fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).take(120).collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() { "upload".into() } else { cleaned }
}

/// Prefix of upload staging folders in the temporary directory; the server's process id follows.
const STAGING_PREFIX: &str = "repdiff-upload-";

/// A private folder (0700) for one upload's raw files, which may be DICOM that is not de-identified yet:
/// removed when the upload ends in any way, the client going away included (the request's future is
/// dropped then, and this with it).
struct Staging(PathBuf);

impl Staging {
    fn create() -> std::io::Result<Staging> {
        let dir =
            std::env::temp_dir().join(format!("{STAGING_PREFIX}{}-{}", std::process::id(), super::auth::random_hex(8)));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the staging folders that servers no longer running left behind (a crash, a kill): at start-up.
pub fn remove_stale_staging() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else { continue };
        let owner: Option<u32> = rest.split('-').next().and_then(|pid| pid.parse().ok()).filter(|_| rest.contains('-'));
        let alive = owner.is_some_and(|pid| pid == std::process::id() || process_alive(pid));
        if !alive {
            tracing::info!("removing the upload staging folder {name} of a server that stopped");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as i32, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Whose files a labels part describes: this request's alone (the default: every row must name a file of
/// the request), or the dataset's (the browser sends one file per request with the whole labels file).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LabelsScope {
    Request,
    Dataset,
}

/// Uploads scans: `multipart/form-data` with any number of `files` parts, optionally preceded by a
/// `labels` part (a manifest, CSV or JSON, whose `file` column names the uploaded files; `name#k` labels
/// slice k of a volume), a `labels_scope` part (`request`, the default: every row names a file of this
/// request; `dataset`: the labels describe more files than this request has) and a `site` part (the site
/// of files when no labels are given, default 0). Files are streamed to a private folder and imported one
/// by one (DICOM de-identified before anything is kept); a file that cannot be read, or that the labels
/// have no row for, is refused with its reason. The accepted files land together or not at all: a
/// request that fails, or whose client goes away, leaves nothing in the dataset. Scans are named by
/// pseudonyms unless the dataset keeps file names. The same slice uploaded twice is kept once.
#[utoipa::path(post, path = "/api/v1/datasets/{id}/scans", tag = "datasets",
    request_body(content_type = "multipart/form-data", description = "`labels`, `labels_scope`, `site` (all optional), then `files` parts"),
    responses((status = 200, body = UploadReport), (status = 404, body = repdiff_api::ErrorBody), (status = 413, body = repdiff_api::ErrorBody),
              (status = 422, body = repdiff_api::ErrorBody)))]
pub async fn upload_scans(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    mut multipart: Multipart,
) -> ApiResult<Json<UploadReport>> {
    user.require(Role::Researcher, "uploading scans")?;
    let dataset = own_dataset(&state.pool, &user, id, "upload to").await?;
    let staging = Staging::create().map_err(ApiError::internal)?;
    let mut objects = NewObjects::new(&state.storage);
    let mut tx = state.pool.begin().await?;
    let (mut report, ids) = receive(&state, &dataset, &mut multipart, &staging.0, &mut tx, &mut objects).await?;
    tx.commit().await?;
    objects.keep();
    drop(staging);
    for id in ids {
        report.accepted.push(scan_by_id(&state.pool, id).await?);
    }
    Ok(Json(report))
}

/// Reads `field` into memory up to `limit` bytes.
async fn read_limited(field: &mut axum::extract::multipart::Field<'_>, what: &str, limit: usize) -> ApiResult<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::too_large(format!("the {what} part is larger than {} MiB", limit >> 20)));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A small text part (`site`, `labels_scope`).
async fn read_text(field: &mut axum::extract::multipart::Field<'_>, what: &str) -> ApiResult<String> {
    let bytes = read_limited(field, what, 1024).await?;
    String::from_utf8(bytes).map_err(|_| ApiError::invalid(format!("{what}: not UTF-8 text")))
}

async fn receive(
    state: &AppState,
    dataset: &Dataset,
    multipart: &mut Multipart,
    staging: &Path,
    tx: &mut sqlx::PgConnection,
    objects: &mut NewObjects,
) -> ApiResult<(UploadReport, Vec<i64>)> {
    let mut report = UploadReport { accepted: Vec::new(), refused: Vec::new(), duplicates: 0 };
    let mut ids = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let mut scope = LabelsScope::Request;
    let mut used = vec![false; 0];
    let mut site = 0usize;
    let mut files = 0usize;
    let limit = state.config.upload_file_limit;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(&e))? {
        let name = field.name().unwrap_or("").to_string();
        if files > 0 && matches!(name.as_str(), "labels" | "labels_scope" | "site") {
            return Err(ApiError::invalid(format!(
                "the {name} part came after files: send labels, labels_scope and site first"
            )));
        }
        match name.as_str() {
            "labels" => {
                let bytes = read_limited(&mut field, "labels", state.config.labels_limit).await?;
                let text = String::from_utf8(bytes).map_err(|_| ApiError::invalid("labels: not UTF-8 text"))?;
                let parsed = if text.trim_start().starts_with(['[', '{']) {
                    Manifest::from_json_str(&text)
                } else {
                    Manifest::from_reader(text.as_bytes())
                }
                .map_err(|e| ApiError::invalid(format!("labels: {e}")))?;
                used = vec![false; parsed.records.len()];
                manifest = Some(parsed);
            }
            "labels_scope" => {
                scope = match read_text(&mut field, "labels_scope").await?.trim() {
                    "request" => LabelsScope::Request,
                    "dataset" => LabelsScope::Dataset,
                    other => return Err(ApiError::invalid(format!("labels_scope: {other:?} is request or dataset"))),
                };
            }
            "site" => {
                let text = read_text(&mut field, "site").await?;
                site = text.trim().parse().ok().filter(|s| *s <= MAX_SITE).ok_or_else(|| {
                    ApiError::invalid(format!("site: {text:?} is not a site number (0 to {MAX_SITE})"))
                })?;
            }
            "files" | "file" => {
                files += 1;
                let original = field.file_name().unwrap_or("upload").to_string();
                let file_name = safe_name(&original);
                let dir = staging.join(format!("{files:05}"));
                tokio::fs::create_dir_all(&dir).await.map_err(ApiError::internal)?;
                let path = dir.join(&file_name);
                let (received, too_big) = receive_file(&mut field, &path, dicom_named(&file_name), limit).await?;
                if too_big {
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                    report.refused.push(RefusedFile {
                        file: original,
                        code: "payload_too_large".into(),
                        error: format!("larger than the {} MiB limit per file", limit >> 20),
                    });
                    continue;
                }
                // Labels name files as the client knows them; the engine sees the staged name.
                let labels = match &manifest {
                    Some(manifest) => {
                        let rows = rows_for(manifest, &original);
                        if rows.is_empty() {
                            let _ = tokio::fs::remove_dir_all(&dir).await;
                            report.refused.push(RefusedFile {
                                file: original.clone(),
                                code: "unlabelled".into(),
                                error: missing_row(manifest, &original),
                            });
                            continue;
                        }
                        let mut labels = Manifest::default();
                        for &i in &rows {
                            used[i] = true;
                            let mut record = manifest.records[i].clone();
                            record.file = format!("{file_name}{}", &record.file[original.len()..]);
                            labels.records.push(record);
                        }
                        Labels::from_manifest(labels)
                    }
                    None => Labels::from_manifest(Manifest::default()).or_unlabelled(site),
                };
                let (key, shown_as, work, name) =
                    (state.deid_key.clone(), original.clone(), dir.clone(), file_name.clone());
                let imported = tokio::task::spawn_blocking(move || match received {
                    Received::InMemory(bytes) => scans::import_dicom_bytes(&name, &bytes, labels, &key, &work),
                    Received::Staged => scans::import_file(&path, &shown_as, labels, &key),
                })
                .await
                .map_err(ApiError::internal)?;
                let _ = tokio::fs::remove_dir_all(&dir).await;
                match imported {
                    Ok(imported) => {
                        let naming = match dataset.keep_file_names {
                            true => Naming::Kept(&file_name),
                            false => Naming::Pseudonym,
                        };
                        let stored = scans::store(tx, objects, dataset.id, naming, imported).await?;
                        report.duplicates += stored.duplicates;
                        ids.extend(stored.ids);
                    }
                    Err(reason) => {
                        report.refused.push(RefusedFile { file: original, code: "unreadable".into(), error: reason })
                    }
                }
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected form field {other:?}: send labels, labels_scope, site and files"
                )));
            }
        }
    }
    if let (Some(manifest), LabelsScope::Request) = (&manifest, scope) {
        let unused: Vec<&str> =
            manifest.records.iter().zip(&used).filter(|(_, used)| !**used).map(|(r, _)| r.file.as_str()).collect();
        if !unused.is_empty() {
            let shown: Vec<String> = unused.iter().take(5).map(|f| format!("{f:?}")).collect();
            return Err(ApiError::invalid(format!(
                "labels: {} row(s) name no file of this upload ({}{}); nothing was stored (send labels_scope=dataset when \
                 the labels describe files sent in other requests)",
                unused.len(),
                shown.join(", "),
                if unused.len() > 5 { ", ..." } else { "" }
            )));
        }
    }
    Ok((report, ids))
}

/// DICOM files up to this size are received into memory and de-identified before any of their bytes
/// reach a disk (a CT slice is about half a megabyte); a larger one, or a file of another format, is
/// streamed into the private staging folder.
const IN_MEMORY_DICOM: usize = 64 << 20;

/// Where a received file is.
enum Received {
    /// A DICOM file, in memory.
    InMemory(Vec<u8>),
    /// In the staging file.
    Staged,
}

/// Whether a file's name says DICOM (`.dcm`, `.dicom`, or no extension, as PACS exports name them).
fn dicom_named(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with(".dcm") || name.ends_with(".dicom") || !name.contains('.')
}

/// Receives one file part: a DICOM file (by the marker in its first bytes, or by its name) up to
/// [`IN_MEMORY_DICOM`] into memory, anything else into `path`. Past `limit` bytes the part is drained
/// (the request's next files still arrive) and reported too big (the bool), its bytes dropped.
async fn receive_file(
    field: &mut axum::extract::multipart::Field<'_>,
    path: &Path,
    dicom_name: bool,
    limit: usize,
) -> ApiResult<(Received, bool)> {
    let looks_like_dicom = repdiff_engine::imaging::dicom::looks_like_dicom;
    let mut buffer: Vec<u8> = Vec::new();
    let mut file: Option<tokio::fs::File> = None;
    let (mut size, mut too_big) = (0usize, false);
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
        size += chunk.len();
        if size > limit {
            too_big = true;
            buffer = Vec::new();
            continue; // drain the part; the next files still arrive
        }
        match &mut file {
            Some(file) => file.write_all(&chunk).await.map_err(ApiError::internal)?,
            None => {
                buffer.extend_from_slice(&chunk);
                // Kept in memory while it may be DICOM: until its first 132 bytes tell, then if they do.
                let may_be_dicom = buffer.len() < 132 || looks_like_dicom(&buffer) || dicom_name;
                if buffer.len() > IN_MEMORY_DICOM || !may_be_dicom {
                    let mut spilled = tokio::fs::File::create(path).await.map_err(ApiError::internal)?;
                    spilled.write_all(&buffer).await.map_err(ApiError::internal)?;
                    buffer = Vec::new();
                    file = Some(spilled);
                }
            }
        }
    }
    if let Some(mut file) = file {
        file.flush().await.map_err(ApiError::internal)?;
        return Ok((Received::Staged, too_big));
    }
    if too_big || looks_like_dicom(&buffer) || dicom_name {
        return Ok((Received::InMemory(buffer), too_big));
    }
    // A short file of another format: staged as any other.
    tokio::fs::write(path, &buffer).await.map_err(ApiError::internal)?;
    Ok((Received::Staged, too_big))
}

/// The rows of `manifest` for the uploaded file `original`: its own (`name`) and its slices' (`name#k`).
fn rows_for(manifest: &Manifest, original: &str) -> Vec<usize> {
    let slice_prefix = format!("{original}#");
    (0..manifest.records.len())
        .filter(|&i| {
            let file = &manifest.records[i].file;
            file == original || file.starts_with(&slice_prefix)
        })
        .collect()
}

/// Why `original` has no row: with the row that differs only in case when there is one.
fn missing_row(manifest: &Manifest, original: &str) -> String {
    match manifest.records.iter().find(|r| r.file.eq_ignore_ascii_case(original)) {
        Some(near) => format!(
            "the labels have no row for {original:?}; {:?} differs in case (names must match exactly)",
            near.file
        ),
        None => format!("the labels have no row for {original:?}"),
    }
}

fn multipart_error(e: &axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("the upload is larger than the server accepts in one request; send fewer files per request")
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, format!("multipart body: {}", e.body_text()))
    }
}

async fn scan_by_id(pool: &PgPool, id: i64) -> sqlx::Result<Scan> {
    let row = sqlx::query_as!(
        ScanRow,
        r#"SELECT id, dataset_id, source_name, slice_index, format, rows, columns, unit, site, hypodensity,
                  margin_irregularity, blend_sign, fluid_level, dicom_key, patient, study, series, instance,
                  position_mm, labelled, created_at
           FROM scans WHERE id = $1"#,
        id
    )
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SplitQuery {
    /// The site held out for the downstream task (the others pre-train); none: a single-site design, every
    /// slice split into train, validation and test.
    #[serde(default)]
    downstream_site: Option<usize>,
    #[serde(default)]
    seed: u64,
    /// `patient` (the default) or `slice`.
    #[serde(default)]
    unit: SplitUnit,
}

/// The dataset's split, counted per part and label in slices and patients (what a job reading the same
/// `split` uses), with what its unit means for the scores made from it.
#[utoipa::path(get, path = "/api/v1/datasets/{id}/split", tag = "datasets", params(SplitQuery),
    responses((status = 200, body = SplitSummary), (status = 404, body = repdiff_api::ErrorBody), (status = 422, body = repdiff_api::ErrorBody)))]
pub async fn split_summary(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<SplitQuery>,
) -> ApiResult<Json<SplitSummary>> {
    visible_dataset(&state.pool, &user, id).await?;
    let records = crate::scans::slices_of(&state.pool, id).await?.into_iter().map(|s| s.record).collect();
    let manifest = Manifest { records };
    let unit = crate::jobs::split_unit(q.unit);
    let parts = manifest
        .split(unit, q.downstream_site, repdiff_engine::manifest::PAPER_SPLIT, q.seed)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let summary = Part::ALL
        .iter()
        .map(|&part| {
            let rows = || manifest.records.iter().zip(&parts).filter(move |(_, p)| **p == part).map(|(r, _)| r);
            let slices = |hematoma: bool| rows().filter(|r| !r.unlabelled && r.hematoma() == hematoma).count() as i64;
            // A patient by its group, or the slice's own index when it names none.
            let mut patients = std::collections::HashMap::new();
            for (i, r) in rows().enumerate() {
                let key = r.origin.group().map(str::to_string).unwrap_or_else(|| format!("\0{i}"));
                *patients.entry(key).or_insert(false) |= !r.unlabelled && r.hematoma();
            }
            SplitPart {
                part: part.name().into(),
                no_hematoma: slices(false),
                hematoma: slices(true),
                unlabelled: rows().filter(|r| r.unlabelled).count() as i64,
                patients: patients.len() as i64,
                patients_with_hematoma: patients.values().filter(|h| **h).count() as i64,
            }
        })
        .collect();
    Ok(Json(SplitSummary {
        downstream_site: q.downstream_site,
        seed: q.seed,
        unit: q.unit,
        caveat: unit.caveat().to_string(),
        patients_in_two_parts: manifest.patients_in_two_parts(&parts) as i64,
        slices_without_patient: manifest.records.iter().filter(|r| r.origin.group().is_none()).count() as i64,
        parts: summary,
    }))
}

/// The dataset's series, each with its slices in order (instance number, then position, then upload):
/// what the dataset page opens as a stack. A scan that names no series is a series of its own.
#[utoipa::path(get, path = "/api/v1/datasets/{id}/series", tag = "datasets",
    responses((status = 200, body = Vec<Series>), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn list_series(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<Vec<Series>>> {
    visible_dataset(&state.pool, &user, id).await?;
    let rows = sqlx::query!(
        r#"SELECT coalesce(series, 'scan-' || id) AS "series!", min(patient) AS patient, min(study) AS study,
                  min(site) AS "site!", count(*) AS "slices!",
                  count(*) FILTER (WHERE labelled AND (hypodensity OR margin_irregularity OR blend_sign OR fluid_level)) AS "hematoma!",
                  array_agg(id ORDER BY instance NULLS LAST, position_mm NULLS LAST, slice_index, id) AS "scan_ids!"
           FROM scans WHERE dataset_id = $1
           GROUP BY coalesce(series, 'scan-' || id)
           ORDER BY min(patient) NULLS LAST, min(id)"#,
        id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| Series {
                series: r.series,
                patient: r.patient,
                study: r.study,
                site: r.site,
                slices: r.slices,
                hematoma: r.hematoma,
                scan_ids: r.scan_ids,
            })
            .collect(),
    ))
}
