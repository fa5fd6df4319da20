//! Helpers shared by the server's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use repdiff_api::{NewUser, Role};
use repdiff_server::http::{self, AppState, HttpConfig};
use repdiff_server::jobs::{self, JobSettings};
use repdiff_server::storage::Storage;
use repdiff_server::worker::{Worker, WorkerOptions};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tower::ServiceExt;

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

/// The application through its router, with users ada and bob (researchers), val (a viewer) and root (an
/// admin), on a database of its own; with a worker in this process when asked.
pub struct App {
    pub db: TestDb,
    pub router: Router,
    pub dir: PathBuf,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    worker: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the documented error shape and returns its code.
    pub fn error_code(&self) -> String {
        let body = self.json();
        let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {body}"));
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        code.to_string()
    }
}

/// A test user's password: long enough, not a common one, without the username.
pub fn password_of(user: &str) -> String {
    format!("{}-quiet-harbour-{}", user.len(), user.bytes().map(u32::from).sum::<u32>())
}

impl App {
    pub async fn new(test: &str, with_worker: bool) -> App {
        Self::configured(test, with_worker, |_| {}).await
    }

    /// [`App::new`] with its HTTP settings changed by `edit` first.
    pub async fn configured(test: &str, with_worker: bool, edit: impl FnOnce(&mut HttpConfig)) -> App {
        let db = TestDb::new(test).await;
        let dir = std::env::temp_dir().join(format!("repdiff-api-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = Storage::local(&dir.join("store")).unwrap();
        std::fs::create_dir_all(dir.join("imports")).unwrap();
        // An empty weights folder of its own: no test sees pretrained weights it did not write.
        let settings = JobSettings {
            import_roots: vec![dir.join("imports")],
            weights_dir: dir.join("model-weights"),
            ..JobSettings::default()
        };
        let registry = jobs::registry(&settings);
        let config = HttpConfig {
            json_limit: 64 << 10,
            upload_limit: 2 << 20,
            upload_file_limit: 256 << 10,
            event_interval: Duration::from_millis(50),
            weights_dir: dir.join("model-weights"),
            ..HttpConfig::default()
        };
        let mut config = config;
        edit(&mut config);
        let router = http::router(AppState::new(db.pool.clone(), storage.clone(), registry.clone(), config));
        let (mut stop, mut worker) = (None, None);
        if with_worker {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let mut options = WorkerOptions::new(dir.join("scratch"));
            options.poll_interval = Duration::from_millis(100);
            worker = Some(tokio::spawn(Worker::new(db.pool.clone(), storage, registry, options).run(rx)));
            stop = Some(tx);
        }
        for (name, role) in
            [("ada", Role::Researcher), ("bob", Role::Researcher), ("val", Role::Viewer), ("root", Role::Admin)]
        {
            let user = NewUser { username: name.into(), password: password_of(name), role };
            http::auth::create_user(&db.pool, &user).await.unwrap();
        }
        App { db, router, dir, stop, worker }
    }

    pub async fn finish(self) {
        if let (Some(stop), Some(worker)) = (self.stop, self.worker) {
            stop.send(true).unwrap();
            worker.await.unwrap().unwrap();
        }
        self.db.drop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap().to_vec();
        Reply { status, headers, body }
    }

    pub async fn call(&self, method: &str, uri: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    /// Uploads `parts` (`(field, file name, bytes)`: `labels`, `site`, `files`) to `dataset` as `token`.
    pub async fn upload(&self, token: &str, dataset: i64, parts: &[(&str, Option<&str>, Vec<u8>)]) -> Reply {
        self.send(upload_request(token, dataset, parts)).await
    }

    /// Signs in and returns an API token made with the session.
    pub async fn token(&self, user: &str) -> String {
        let login = json!({ "username": user, "password": password_of(user) });
        let reply = self.call("POST", "/api/v1/auth/login", None, Some(login)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
        let cookie = reply.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
        // A write with the session cookie comes from the app's own pages: its Origin is the server's.
        let request = Request::post("/api/v1/tokens")
            .header(header::COOKIE, cookie)
            .header(header::HOST, "repdiff.test")
            .header(header::ORIGIN, "http://repdiff.test")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "name": "tests" }).to_string()))
            .unwrap();
        let reply = self.send(request).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        reply.json()["secret"].as_str().unwrap().to_string()
    }

    pub async fn wait_final(&self, token: &str, id: i64, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let job = self.call("GET", &format!("/api/v1/jobs/{id}"), Some(token), None).await.json();
            if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
                return job;
            }
            assert!(started.elapsed() < within, "job {id} not finished after {within:?}: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The upload of `parts` to `dataset` as `token`, as a request (to send whole, or to cut short).
pub fn upload_request(token: &str, dataset: i64, parts: &[(&str, Option<&str>, Vec<u8>)]) -> Request<Body> {
    let (content_type, body) = multipart(parts);
    Request::post(format!("/api/v1/datasets/{dataset}/scans"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap()
}

/// A multipart body of `(field, file name, bytes)` parts.
pub fn multipart(parts: &[(&str, Option<&str>, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "repdiff-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (field, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(name) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
