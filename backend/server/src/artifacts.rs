//! Artifact rows: what each stored object is (see `storage` for the bytes).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Clone, Debug)]
pub struct NewArtifact {
    pub key: String,
    pub job_id: Option<i64>,
    pub kind: String,
    pub media_type: String,
    pub size: i64,
    pub meta: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct Artifact {
    pub id: i64,
    pub key: String,
    pub job_id: Option<i64>,
    pub kind: String,
    pub media_type: String,
    pub size: i64,
    pub meta: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Records an artifact; an artifact stored again under the same key (a job's newer checkpoint) updates
/// its row, so a key has one row whatever the number of attempts.
pub async fn record(pool: &PgPool, a: &NewArtifact) -> sqlx::Result<Artifact> {
    sqlx::query_as!(
        Artifact,
        r#"INSERT INTO artifacts (key, job_id, kind, media_type, size, meta) VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (key) DO UPDATE SET job_id = $2, kind = $3, media_type = $4, size = $5, meta = $6,
                                           updated_at = now()
           RETURNING id, key, job_id, kind, media_type, size, meta, created_at, updated_at"#,
        a.key,
        a.job_id,
        a.kind,
        a.media_type,
        a.size,
        a.meta
    )
    .fetch_one(pool)
    .await
}

/// A job's artifacts, optionally of one kind, in the order they were first stored.
pub async fn for_job(pool: &PgPool, job_id: i64, kind: Option<&str>) -> sqlx::Result<Vec<Artifact>> {
    sqlx::query_as!(
        Artifact,
        r#"SELECT id, key, job_id, kind, media_type, size, meta, created_at, updated_at
           FROM artifacts WHERE job_id = $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id"#,
        job_id,
        kind
    )
    .fetch_all(pool)
    .await
}

/// The metadata of the artifact stored under `key`, if there is one.
pub async fn meta_of(pool: &PgPool, key: &str) -> sqlx::Result<Option<serde_json::Value>> {
    sqlx::query_scalar!("SELECT meta FROM artifacts WHERE key = $1", key).fetch_optional(pool).await
}

pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<Artifact>> {
    sqlx::query_as!(
        Artifact,
        r#"SELECT id, key, job_id, kind, media_type, size, meta, created_at, updated_at
           FROM artifacts WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await
}
