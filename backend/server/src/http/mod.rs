//! The REST API under `/api/v1` (axum), the frontend's static files, and the middleware around them
//! (tower-http: tracing, compression, body limits, timeouts, CORS only when configured).

pub mod artifacts;
pub mod auth;
pub mod datasets;
pub mod error;
pub mod experiments;
pub mod jobs;
mod openapi;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::routing::get;
use repdiff_api::ErrorCode;
use sqlx::PgPool;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use repdiff_engine::imaging::deid::DeidKey;

use crate::storage::Storage;
use crate::worker::Registry;
use error::ApiError;

/// How the HTTP side behaves.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The frontend's built files (`index.html` and its assets); `None` serves the API only.
    pub static_dir: Option<PathBuf>,
    /// Mark the session cookie `Secure` (behind HTTPS).
    pub secure_cookies: bool,
    /// Largest JSON body.
    pub json_limit: usize,
    /// Largest scan upload request (many files) and largest single file in it.
    pub upload_limit: usize,
    pub upload_file_limit: usize,
    /// The most a labels part of an upload may hold (it is parsed in memory).
    pub labels_limit: usize,
    /// Time to produce a response's headers (not its streamed body).
    pub request_timeout: Duration,
    /// Origins allowed to call the API from another site; empty: CORS off (same-origin only).
    pub cors_origins: Vec<String>,
    /// How often a job's event stream looks for changes.
    pub event_interval: Duration,
    /// The workers' pretrained weights (a `reproduce` pipeline probes DINOv2 features when they are there).
    pub weights_dir: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            static_dir: None,
            secure_cookies: false,
            json_limit: 1 << 20,
            upload_limit: 8 << 30,
            upload_file_limit: 1 << 30,
            labels_limit: 64 << 20,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            event_interval: Duration::from_millis(500),
            weights_dir: PathBuf::from("model-weights"),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub storage: Storage,
    /// The job kinds (to validate submissions; workers may run anywhere).
    pub registry: Arc<Registry>,
    pub config: Arc<HttpConfig>,
    /// The key of DICOM de-identification: the same key maps one patient's series to the same pseudonyms.
    pub deid_key: Arc<DeidKey>,
    /// A real argon2 hash that no password matches: logins of unknown users verify against it, so they
    /// take as long as those of known users.
    dummy_hash: Arc<str>,
}

impl AppState {
    /// With a fresh de-identification key; a server keeps its key with [`AppState::with_deid_key`], so
    /// uploads after a restart get the same pseudonyms.
    pub fn new(pool: PgPool, storage: Storage, registry: Registry, config: HttpConfig) -> AppState {
        let dummy_hash = auth::hash_password("no password matches this hash").expect("argon2 hashes");
        AppState {
            pool,
            storage,
            registry: Arc::new(registry),
            config: Arc::new(config),
            deid_key: Arc::new(DeidKey::generate()),
            dummy_hash: dummy_hash.into(),
        }
    }

    pub fn with_deid_key(mut self, key: DeidKey) -> AppState {
        self.deid_key = Arc::new(key);
        self
    }
}

#[utoipa::path(get, path = "/api/v1/health", tag = "meta", responses((status = 200, body = repdiff_api::Health)))]
pub async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<repdiff_api::Health>, ApiError> {
    sqlx::query_scalar!("SELECT 1 AS one").fetch_one(&state.pool).await?;
    Ok(axum::Json(repdiff_api::Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() }))
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint; see /api/v1/openapi.json")
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let api = Router::new()
        .merge(auth::routes())
        .merge(jobs::routes())
        .merge(artifacts::routes())
        .merge(experiments::routes())
        .merge(datasets::routes())
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::document))
        .fallback(api_not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(config.json_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, config.request_timeout))
        // Uploads stream for as long as they take, under their own size limit.
        .merge(datasets::upload_routes(config.upload_limit));
    let mut app = Router::new().nest("/api/v1", api).with_state(state);
    if let Some(dir) = &config.static_dir {
        // Client-side routes (/runs/12) load index.html; the app routes them.
        app = app.fallback_service(ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html"))));
    }
    let mut app = app.layer(CompressionLayer::new()).layer(TraceLayer::new_for_http());
    if !config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> =
            config.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
                .allow_headers([axum::http::header::AUTHORIZATION, axum::http::header::CONTENT_TYPE])
                .allow_credentials(true),
        );
    }
    app
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The client's address reaches handlers (sign-in back-off is per address).
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
