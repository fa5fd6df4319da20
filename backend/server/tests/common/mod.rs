//! Helpers shared by the server's integration tests.
#![allow(dead_code)]

use sqlx::{Connection, PgConnection, PgPool};

/// A database of its own for one test, dropped by [`TestDb::drop`].
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    pub async fn new(test: &str) -> TestDb {
        let admin_url = std::env::var("REPDIFF_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("repdiff_test_{test}_{}", std::process::id());
        let mut admin = PgConnection::connect(&admin_url).await.expect("connect to PostgreSQL as an admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("REPDIFF_TEST_DATABASE_URL must name a database"),
        };
        let pool = repdiff_server::db::connect(&url, 16).await.expect("connect and migrate");
        TestDb { pool, url, name, admin_url }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}
