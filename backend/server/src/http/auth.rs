//! Users, sessions and API tokens. Passwords are argon2id hashes; session cookies and API tokens are
//! random 256-bit secrets of which the database keeps only the SHA-256. Roles: a viewer reads what is
//! shared, a researcher also uploads and runs jobs, an admin also manages users.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use repdiff_api::{CreatedToken, Login, NewToken, NewUser, Role, Token, User};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult};

pub const SESSION_COOKIE: &str = "repdiff_session";
/// Failed sign-ins allowed per username within [`LOCKOUT`] before sign-ins of that name are refused.
const MAX_FAILURES: u32 = 5;
const LOCKOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Failed sign-ins per username (in memory: a restart forgets them), so passwords cannot be guessed at
/// the speed of the API.
#[derive(Default)]
pub struct LoginThrottle {
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
}

impl LoginThrottle {
    /// `Some(wait)` while `username` is locked out.
    fn locked(&self, username: &str) -> Option<std::time::Duration> {
        let failures = self.failures.lock().expect("login throttle");
        let (count, since) = failures.get(&username.to_lowercase())?;
        (*count >= MAX_FAILURES && since.elapsed() < LOCKOUT).then(|| LOCKOUT - since.elapsed())
    }

    fn failed(&self, username: &str) {
        let mut failures = self.failures.lock().expect("login throttle");
        failures.retain(|_, (_, since)| since.elapsed() < LOCKOUT);
        let entry = failures.entry(username.to_lowercase()).or_insert((0, std::time::Instant::now()));
        entry.0 += 1;
    }

    fn succeeded(&self, username: &str) {
        self.failures.lock().expect("login throttle").remove(&username.to_lowercase());
    }
}
const SESSION_DAYS: i32 = 7;

/// The signed-in user of a request.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub id: i64,
    pub username: String,
    pub role: Role,
}

impl CurrentUser {
    /// At least `role`, or 403.
    pub fn require(&self, role: Role, to: &str) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("{to} needs the {} role; you are a {}", role.as_str(), self.role.as_str())))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

fn sha256(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// `n` bytes of OS randomness as hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh secret: `prefix` and 64 hex digits (256 bits).
fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(32))
}

pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

fn role_of(text: &str) -> Role {
    Role::parse(text).unwrap_or(Role::Viewer)
}

/// Creates a user (the `repdiff admin create` command, the first start, and `POST /users`).
pub async fn create_user(pool: &PgPool, new: &NewUser) -> ApiResult<User> {
    let valid_name = !new.username.is_empty()
        && new.username.len() <= 64
        && new.username.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if !valid_name {
        return Err(ApiError::invalid("a username is 1-64 letters, digits and _ . @ -"));
    }
    if new.password.chars().count() < 10 {
        return Err(ApiError::invalid("a password has at least 10 characters"));
    }
    let password = new.password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let row = sqlx::query!(
        r#"INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)
           ON CONFLICT (username) DO NOTHING RETURNING id, created_at"#,
        new.username,
        hash,
        new.role.as_str()
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::conflict(format!("user {:?} already exists", new.username)))?;
    Ok(User { id: row.id, username: new.username.clone(), role: new.role, created_at: row.created_at })
}

pub async fn count_users(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM users"#).fetch_one(pool).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer(&parts.headers) {
            let row = sqlx::query!(
                r#"SELECT u.id, u.username, u.role, t.id AS token_id,
                          (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute') AS "stale!"
                   FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1"#,
                sha256(token)
            )
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
            // "Last used" to the minute: a write per request would make every read a write.
            if row.stale {
                sqlx::query!("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", row.token_id)
                    .execute(&state.pool)
                    .await?;
            }
            return Ok(CurrentUser { id: row.id, username: row.username, role: role_of(&row.role) });
        }
        if let Some(session) = session_cookie(&parts.headers) {
            let row = sqlx::query!(
                r#"SELECT u.id, u.username, u.role FROM sessions s JOIN users u ON u.id = s.user_id
                   WHERE s.token_hash = $1 AND s.expires_at > now()"#,
                sha256(session)
            )
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
            return Ok(CurrentUser { id: row.id, username: row.username, role: role_of(&row.role) });
        }
        Err(ApiError::unauthenticated())
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/users", get(list_users).post(add_user))
        .route("/tokens", get(list_tokens).post(add_token))
        .route("/tokens/{id}", delete(revoke_token))
}

fn cookie(value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}");
    HeaderValue::from_str(&text).expect("cookie is ASCII")
}

/// Signs in with a password; sets the session cookie and returns the user.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Login,
    responses((status = 200, body = User), (status = 401, body = repdiff_api::ErrorBody), (status = 429, body = repdiff_api::ErrorBody)))]
pub async fn login(State(state): State<AppState>, ApiJson(login): ApiJson<Login>) -> ApiResult<Response> {
    if let Some(wait) = state.login_throttle.locked(&login.username) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("too many failed sign-ins for this user; try again in {} minutes", wait.as_secs() / 60 + 1),
        ));
    }
    let row = sqlx::query!(
        "SELECT id, username, role, password_hash, created_at FROM users WHERE username = $1",
        login.username
    )
    .fetch_optional(&state.pool)
    .await?;
    // Unknown users cost a hash verification too, so timing does not tell which names exist.
    let (hash, user) = match row {
        Some(r) => (
            r.password_hash.clone(),
            Some(User { id: r.id, username: r.username, role: role_of(&r.role), created_at: r.created_at }),
        ),
        None => (state.dummy_hash.to_string(), None),
    };
    let password = login.password;
    let ok =
        tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.map_err(ApiError::internal)?;
    let user = match (ok, user) {
        (true, Some(user)) => user,
        _ => {
            state.login_throttle.failed(&login.username);
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "wrong username or password"));
        }
    };
    state.login_throttle.succeeded(&login.username);
    let secret = new_secret("");
    sqlx::query!(
        "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, now() + make_interval(days => $3))",
        sha256(&secret),
        user.id,
        SESSION_DAYS
    )
    .execute(&state.pool)
    .await?;
    let mut response = Json(user).into_response();
    let max_age = i64::from(SESSION_DAYS) * 86_400;
    response.headers_mut().insert(SET_COOKIE, cookie(&secret, max_age, state.config.secure_cookies));
    Ok(response)
}

/// Ends the browser session.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 204)))]
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(session) = session_cookie(&headers) {
        sqlx::query!("DELETE FROM sessions WHERE token_hash = $1", sha256(session)).execute(&state.pool).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(SET_COOKIE, cookie("", 0, state.config.secure_cookies));
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = User), (status = 401, body = repdiff_api::ErrorBody)))]
pub async fn me(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<User>> {
    let created_at =
        sqlx::query_scalar!("SELECT created_at FROM users WHERE id = $1", user.id).fetch_one(&state.pool).await?;
    Ok(Json(User { id: user.id, username: user.username, role: user.role, created_at }))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "auth", responses((status = 200, body = Vec<User>)))]
pub async fn list_users(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Vec<User>>> {
    user.require(Role::Admin, "listing users")?;
    let rows =
        sqlx::query!("SELECT id, username, role, created_at FROM users ORDER BY id").fetch_all(&state.pool).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| User { id: r.id, username: r.username, role: role_of(&r.role), created_at: r.created_at })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "auth", request_body = NewUser,
    responses((status = 201, body = User), (status = 403, body = repdiff_api::ErrorBody), (status = 409, body = repdiff_api::ErrorBody)))]
pub async fn add_user(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    user.require(Role::Admin, "adding users")?;
    Ok((StatusCode::CREATED, Json(create_user(&state.pool, &new).await?)))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "auth", responses((status = 200, body = Vec<Token>)))]
pub async fn list_tokens(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Vec<Token>>> {
    let tokens = sqlx::query_as!(
        Token,
        "SELECT id, name, created_at, last_used_at FROM api_tokens WHERE user_id = $1 ORDER BY id",
        user.id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(tokens))
}

/// Creates an API token for the signed-in user; the secret is in this response only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "auth", request_body = NewToken,
    responses((status = 201, body = CreatedToken)))]
pub async fn add_token(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    if new.name.trim().is_empty() || new.name.len() > 100 {
        return Err(ApiError::invalid("a token's name is 1-100 characters"));
    }
    let secret = new_secret("rdt_");
    let token = sqlx::query_as!(
        Token,
        r#"INSERT INTO api_tokens (token_hash, user_id, name) VALUES ($1, $2, $3)
           RETURNING id, name, created_at, last_used_at"#,
        sha256(&secret),
        user.id,
        new.name.trim()
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "auth",
    responses((status = 204), (status = 404, body = repdiff_api::ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let deleted = sqlx::query!("DELETE FROM api_tokens WHERE id = $1 AND user_id = $2", id, user.id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found("token", id));
    }
    Ok(StatusCode::NO_CONTENT)
}
