//! The API's one error shape: `{"error": {"code": "...", "message": "..."}}` with a stable code, and the
//! extractors that turn axum's own rejections (bad JSON, a bad query string) into it.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use repdiff_api::{ErrorBody, ErrorCode, ErrorDetail};
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault, where one is.
    pub field: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    pub fn unauthenticated() -> ApiError {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "sign in, or send an API token as `Authorization: Bearer <token>`",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// Also what a user gets for something that exists but is not theirs to see: its existence is not
    /// revealed.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("{what} {id} does not exist"))
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest, message)
    }

    pub fn invalid_params(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidParams, message)
    }

    /// A job parameter that is not valid, its field named in the body (`error.field`).
    pub fn invalid_field(problem: repdiff_api::jobs::Invalid) -> ApiError {
        let field = (!problem.field.is_empty()).then(|| problem.field.clone());
        ApiError { field, ..Self::invalid_params(problem.to_string()) }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log, not to the client.
        tracing::error!("internal error: {error}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, field: self.field } };
        (self.status, Json(body)).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                tracing::error!("database unavailable: {e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the database is unavailable; retry",
                )
            }
            // Text PostgreSQL cannot hold (a NUL byte in a name, a tag, a query value) is the client's.
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("22021" | "22P05")) => {
                ApiError::invalid("text may not contain NUL characters")
            }
            // A value outside a column's bounds that a handler did not check first.
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("23514" | "22003")) => {
                tracing::warn!("a value the database refused: {db}");
                ApiError::invalid("a value is out of range")
            }
            _ => ApiError::internal(e),
        }
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> ApiError {
        match e {
            crate::storage::StorageError::NotFound(key) => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("artifact {key} is missing from the store"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::scans::StoreError> for ApiError {
    fn from(e: crate::scans::StoreError) -> ApiError {
        match e {
            crate::scans::StoreError::Database(e) => e.into(),
            crate::scans::StoreError::Storage(e) => e.into(),
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMedia,
                "send the body as JSON with `Content-Type: application/json`",
            )),
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large("the request body is larger than this endpoint accepts"))
            }
            Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, e.body_text())),
        }
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::invalid(e.body_text()))
    }
}

/// `Path<T>` whose rejections are [`ApiError`]s (`/jobs/abc` is a 404, not a 400: no such job).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.body_text()))
    }
}
