//! The database: connection pool and migrations (`migrations/` at the top level, applied in order at start).
//! Queries are checked against the schema at compile time (`sqlx::query!`); `.sqlx/` holds their
//! descriptions so a build needs no database (see backend/server/README.md).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Connects to `url` and brings the schema up to date.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
