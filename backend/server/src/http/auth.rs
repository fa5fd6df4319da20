//! Users, sessions and API tokens. Passwords are argon2id hashes; session cookies and API tokens are
//! random 256-bit secrets of which the database keeps only the SHA-256. Roles: a viewer reads what is
//! shared, a researcher also uploads and runs jobs, an admin also manages users.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use repdiff_api::{CreatedToken, ErrorCode, Login, NewToken, NewUser, Role, Token, User};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult};

pub const SESSION_COOKIE: &str = "repdiff_session";
/// Failed sign-ins before each further one has to wait: for one account from one address, and from one
/// address in all (a lab behind one NAT address mistypes more often than one person).
const FREE_ACCOUNT_FAILURES: i32 = 5;
const FREE_ADDRESS_FAILURES: i32 = 20;
/// The longest wait: it doubles with every failure after the free ones, up to this.
const MAX_WAIT_SECS: i64 = 15 * 60;

/// Keys of the sign-in back-off: the client's address (spraying many usernames from one place), and the
/// (address, account) pair (guessing one account's password). A stranger's failures never make the owner
/// of an account wait, as the owner signs in from another address; failures are kept in PostgreSQL, so a
/// restart forgets none.
fn throttle_keys(address: &str, username: &str) -> [String; 2] {
    [format!("address:{address}"), format!("account:{address}:{}", username.to_lowercase())]
}

/// The wait before another sign-in attempt from `address` for `username`, if one is due.
async fn login_wait(pool: &PgPool, address: &str, username: &str) -> sqlx::Result<Option<i64>> {
    let keys = throttle_keys(address, username);
    let wait = sqlx::query_scalar!(
        r#"SELECT max(ceil(extract(epoch FROM last_failure
                     + make_interval(secs => least(power(2, failures - free)::float8, $4::float8)) - now())))::bigint
           FROM (SELECT last_failure, failures,
                        CASE WHEN key LIKE 'address:%' THEN $3::int ELSE $2::int END AS free
                 FROM login_failures WHERE key = ANY($1)) f
           WHERE failures >= free"#,
        &keys[..],
        FREE_ACCOUNT_FAILURES,
        FREE_ADDRESS_FAILURES,
        MAX_WAIT_SECS as f64
    )
    .fetch_one(pool)
    .await?;
    Ok(wait.filter(|w| *w > 0))
}

async fn login_failed(pool: &PgPool, address: &str, username: &str) -> sqlx::Result<()> {
    for key in throttle_keys(address, username) {
        sqlx::query!(
            r#"INSERT INTO login_failures (key, failures, last_failure) VALUES ($1, 1, now())
               ON CONFLICT (key) DO UPDATE SET failures = login_failures.failures + 1, last_failure = now()"#,
            key
        )
        .execute(pool)
        .await?;
    }
    // Old failures are forgotten: a day after the last one.
    sqlx::query!("DELETE FROM login_failures WHERE last_failure < now() - interval '1 day'").execute(pool).await?;
    Ok(())
}

async fn login_succeeded(pool: &PgPool, address: &str, username: &str) -> sqlx::Result<()> {
    let [_, account] = throttle_keys(address, username);
    sqlx::query!("DELETE FROM login_failures WHERE key = $1", account).execute(pool).await?;
    Ok(())
}

/// The 19,640 most common passwords (lower case), as Django ships them: Royce Williams' list
/// (https://gist.github.com/roycewilliams/226886fd01572964e1431ac8afc999ce), gzipped.
const COMMON_PASSWORDS_GZ: &[u8] = include_bytes!("common-passwords.txt.gz");

fn common_passwords() -> &'static std::collections::HashSet<String> {
    static SET: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        use std::io::Read;
        let mut text = String::new();
        let decoded = flate2::read::GzDecoder::new(COMMON_PASSWORDS_GZ).read_to_string(&mut text);
        decoded.expect("the embedded password list is valid gzip");
        text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    })
}

/// Why `password` is not good enough for `username`, if it is not: at least 10 characters, not one of
/// the common passwords, not the username, not one character repeated or a run like 1234567890.
pub fn check_password(username: &str, password: &str) -> Result<(), String> {
    if password.chars().count() < 10 {
        return Err("a password has at least 10 characters".into());
    }
    if password.chars().count() > 1024 {
        return Err("a password has at most 1,024 characters".into());
    }
    let lower = password.to_lowercase();
    if common_passwords().contains(&lower) {
        return Err("that password is on the list of the 20,000 most common ones; choose another".into());
    }
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        return Err("a password may not contain the username".into());
    }
    let bytes = lower.as_bytes();
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    let steps: Vec<i16> = bytes.windows(2).map(|w| w[1] as i16 - w[0] as i16).collect();
    let sequence = steps.iter().all(|&d| d == 1) || steps.iter().all(|&d| d == -1);
    if distinct <= 2 || sequence {
        return Err("a password may not be one repeated character or a run like 1234567890".into());
    }
    Ok(())
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
    check_password(&new.username, &new.password).map_err(ApiError::invalid)?;
    let password = new.password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    // Usernames are case-insensitive: `Admin` is taken when `admin` exists.
    let row = sqlx::query!(
        r#"INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)
           ON CONFLICT (lower(username)) DO NOTHING RETURNING id, created_at"#,
        new.username,
        hash,
        new.role.as_str()
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::conflict(format!("user {:?} already exists", new.username)))?;
    Ok(User { id: row.id, username: new.username.clone(), role: new.role, created_at: row.created_at })
}

/// How many admins there are (none: `repdiff serve` makes the first; `repdiff reproduce` makes only the
/// researcher that owns its imported data).
pub async fn count_admins(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM users WHERE role = 'admin'"#).fetch_one(pool).await
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
            same_origin_write(parts, &state.config.cors_origins)?;
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

/// A write authenticated by the session cookie must come from the app's own pages (or an allowed CORS
/// origin): the browser's `Origin` (else `Referer`) names the same host as the request. A page of another
/// site could otherwise make a signed-in browser create datasets and jobs. Bearer tokens are not sent by
/// browsers on their own, so API clients with a token need no such header.
fn same_origin_write(parts: &Parts, allowed: &[String]) -> ApiResult<()> {
    if matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS) {
        return Ok(());
    }
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let origin = header(axum::http::header::ORIGIN)
        .filter(|o| *o != "null")
        .or_else(|| header(axum::http::header::REFERER))
        .map(|o| o.trim_end_matches('/').to_string());
    let host = header(axum::http::header::HOST);
    let matches = |origin: &str| {
        let authority = origin.split("://").nth(1).unwrap_or(origin).split('/').next().unwrap_or("");
        host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
            || allowed.iter().any(|a| a.trim_end_matches('/') == origin)
    };
    match origin {
        Some(origin) if matches(&origin) => Ok(()),
        Some(origin) => Err(ApiError::forbidden(format!(
            "a cross-site request from {origin:?} with the session cookie was refused; use an API token"
        ))),
        None => Err(ApiError::forbidden(
            "a write with the session cookie needs an Origin or Referer header of this site (browsers send one); \
             API clients use a token",
        )),
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
pub async fn login(State(state): State<AppState>, request: axum::extract::Request) -> ApiResult<Response> {
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let ApiJson(login) = ApiJson::<Login>::from_request(request, &state).await?;
    if login.username.len() > 64 || login.password.len() > 1024 {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, "wrong username or password"));
    }
    if let Some(wait) = login_wait(&state.pool, &address, &login.username).await? {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            format!("too many failed sign-ins from here; try again in {wait} s"),
        )
        .into_response();
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(response);
    }
    let row = sqlx::query!(
        "SELECT id, username, role, password_hash, created_at FROM users WHERE lower(username) = lower($1)",
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
            login_failed(&state.pool, &address, &login.username).await?;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "wrong username or password",
            ));
        }
    };
    login_succeeded(&state.pool, &address, &login.username).await?;
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
