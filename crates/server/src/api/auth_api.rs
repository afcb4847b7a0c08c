//! `/auth/*`, `/users`, `/tokens`.

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{self, ApiToken, Caller, Role, TokenPair, User};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::{AppState, AuditSlot};

fn audit_user(slot: &AuditSlot, name: &str) {
    // Bounded: the name is written to the audit table before it is checked.
    let name: String = name.chars().take(auth::MAX_LOGIN_NAME).collect();
    slot.0.lock().unwrap_or_else(|e| e.into_inner()).user = Some(name);
}

type Peer = Result<ConnectInfo<std::net::SocketAddr>, axum::extract::rejection::ExtensionRejection>;

fn peer_ip(peer: Peer) -> String {
    peer.map(|p| p.0.ip().to_string())
        .ok()
        .unwrap_or_else(|| "local".into())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// Log in with a password: a 15-minute access token and a single-use refresh token.
/// Usernames over 64 bytes and passwords over 1024 bytes are refused (400); 5 failures from one
/// address lock that user out there for 5 minutes (429); a busy server answers 503.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "Logged in", body = TokenPair)))]
pub async fn login(
    State(st): State<AppState>,
    peer: Peer,
    axum::Extension(slot): axum::Extension<AuditSlot>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    audit_user(&slot, &req.username);
    let ip = peer_ip(peer);
    let pair = auth::login(&st, &req.username, &req.password, &ip).await?;
    Ok(Json(pair))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Single use: `?ticket=...` on `GET /api/v1/events`, `/vms/{name}/console` or `/tty`.
    pub ticket: String,
    /// Seconds it is valid.
    pub expires_in: u64,
}

/// A short-lived single-use ticket standing for your credential, for the requests a browser
/// cannot put an `Authorization` header on (EventSource, WebSocket): no token in URLs.
#[utoipa::path(post, path = "/api/v1/auth/ticket", tag = "auth",
    responses((status = 200, description = "A ticket", body = Ticket)))]
pub async fn ticket(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Ticket>> {
    Ok(Json(Ticket {
        ticket: st.sessions.issue(&caller)?,
        expires_in: auth::TICKET_TTL.as_secs(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Exchange a refresh token for a new pair (the old refresh token stops working).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 200, description = "New tokens", body = TokenPair)))]
pub async fn refresh(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let st2 = st.clone();
    let pair = st
        .db
        .run(move |db| auth::refresh(&st2, db, &req.refresh_token))
        .await?;
    Ok(Json(pair))
}

/// Revoke a refresh token (the access token expires by itself within 15 minutes).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 204, description = "Logged out")))]
pub async fn logout(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    st.db
        .run(move |db| auth::logout(db, &req.refresh_token))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The calling user.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, description = "Who you are", body = User)))]
pub async fn me(caller: Caller) -> Json<User> {
    Json(caller.user)
}

// ---- users ---------------------------------------------------------------------------------

/// Every user (admins only).
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, description = "Users", body = [User])))]
pub async fn list_users(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require_admin()?;
    Ok(Json(st.db.run(auth::list_users).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 of a-z 0-9 . _ - (starting with a letter or digit).
    pub name: String,
    /// At least 8 characters; omitted: a random one is made and returned once.
    pub password: Option<String>,
    pub role: Role,
    #[schema(minimum = 0)]
    pub max_vms: Option<i64>,
    #[schema(minimum = 0)]
    pub max_memory_mib: Option<i64>,
    /// MiB of disk the user's checkpoints and packet captures may take.
    #[schema(minimum = 0)]
    pub max_disk_mib: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub user: User,
    /// The generated password (only when none was given; shown once).
    pub password: Option<String>,
}

/// Create a user (admins only).
#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = CreateUser,
    responses((status = 201, description = "Created", body = CreatedUser)))]
pub async fn create_user(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    caller.require_admin()?;
    let generated = req.password.is_none().then(|| auth::random_token(12));
    let pw = req
        .password
        .clone()
        .or(generated.clone())
        .unwrap_or_default();
    let user = st
        .db
        .run(move |db| {
            auth::check_disk_quota(req.max_disk_mib)?;
            let u = auth::add_user(
                db,
                &req.name,
                &pw,
                req.role,
                req.max_vms,
                req.max_memory_mib,
            )?;
            match req.max_disk_mib {
                Some(d) => auth::set_max_disk_mib(db, &u.name, Some(d)),
                None => Ok(u),
            }
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedUser {
            user,
            password: generated,
        }),
    ))
}

/// One user (admins, or the user themself).
#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, description = "The user", body = User)))]
pub async fn get_user(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<User>> {
    if caller.name() != name {
        caller.require_admin()?;
    }
    let n = name.clone();
    st.db
        .run(move |db| auth::get_user(db, &n))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no user '{name}'")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<Role>,
    pub password: Option<String>,
    /// Your current password: required to change your own password.
    pub current_password: Option<String>,
    /// Keep the user's access, refresh and API tokens working after a password change
    /// (default: they are all revoked).
    #[serde(default)]
    pub keep_tokens: bool,
    /// A number, or null to remove the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_vms: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_memory_mib: Option<Option<i64>>,
    /// MiB of disk for checkpoints and captures, or null to remove the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_disk_mib: Option<Option<i64>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// Change a user's role, password or quotas (admins; users may change their own password,
/// giving `current_password`). A password change ends every session of the user (access,
/// refresh and API tokens) unless `keep_tokens` is true.
#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "User name")),
    request_body = UpdateUser,
    responses((status = 200, description = "Updated", body = User)))]
pub async fn update_user(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    ApiPath(name): ApiPath<String>,
    ApiJson(mut req): ApiJson<UpdateUser>,
) -> ApiResult<Json<User>> {
    let own_password_only = caller.name() == name
        && req.role.is_none()
        && req.max_vms.is_none()
        && req.max_memory_mib.is_none()
        && req.max_disk_mib.is_none();
    if !own_password_only {
        caller.require_admin()?;
    }
    if let Some(pw) = req.password.take() {
        if caller.name() == name && !caller.local {
            let Some(current) = req.current_password.take() else {
                return Err(ApiError::bad_request(
                    "current_password is required to change your own password",
                ));
            };
            if !auth::check_password_of(&st, &name, &current, &peer_ip(peer)).await? {
                return Err(ApiError::forbidden(
                    "current_password is not your password (the password was not changed)",
                ));
            }
        }
        if pw.len() > auth::MAX_PASSWORD {
            return Err(ApiError::bad_request(format!(
                "password is {} bytes; passwords are at most {}",
                pw.len(),
                auth::MAX_PASSWORD
            )));
        }
        let permit = st.limiter.hashing().await?;
        let (n, keep) = (name.clone(), req.keep_tokens);
        st.db
            .run(move |db| auth::set_password(db, &n, &pw, keep))
            .await?;
        drop(permit);
    }
    let u = st
        .db
        .run(move |db| {
            auth::check_disk_quota(req.max_disk_mib.flatten())?;
            let u = auth::update_user(db, &name, req.role, None, req.max_vms, req.max_memory_mib)?;
            match req.max_disk_mib {
                Some(d) => auth::set_max_disk_mib(db, &name, d),
                None => Ok(u),
            }
        })
        .await?;
    Ok(Json(u))
}

/// Remove a user (admins only) and everything they have: their labs are taken down and
/// deleted, their functions, operations and tokens go with them.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses((status = 204, description = "Removed")))]
pub async fn delete_user(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if caller.name() == name {
        return Err(ApiError::conflict(
            "you cannot remove yourself (another admin can)",
        ));
    }
    crate::cascade::delete_user(&st, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- API tokens ----------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Admins: every user's tokens.
    #[serde(default)]
    pub all: bool,
}

/// Your API tokens (admins with `all=true`: everyone's).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    params(TokenQuery),
    responses((status = 200, description = "Tokens (without secrets)", body = [ApiToken])))]
pub async fn list_tokens(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> ApiResult<Json<Vec<ApiToken>>> {
    let user = if q.all && caller.is_admin() {
        None
    } else {
        Some(caller.name().to_string())
    };
    Ok(Json(
        st.db
            .run(move |db| auth::list_tokens(db, user.as_deref()))
            .await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for.
    pub name: String,
    /// Days until it expires (none: until revoked).
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_days: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub token: ApiToken,
    /// The secret (`kbk_...`): shown once, stored only as a hash.
    pub secret: String,
}

/// Create an API token for yourself (it has your role).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = CreateToken,
    responses((status = 201, description = "Created", body = CreatedToken)))]
pub async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    if caller.local {
        return Err(ApiError::unprocessable(
            "local_admin",
            "root on the Unix socket has no stored user: create tokens for a user with `kobako token create --user NAME`",
        ));
    }
    if req.expires_days.is_some_and(|d| d == 0 || d > 3650) {
        return Err(ApiError::unprocessable(
            "invalid_expiry",
            "expires_days is 1 to 3650",
        ));
    }
    let user = caller.name().to_string();
    let (token, secret) = st
        .db
        .run(move |db| auth::create_token(db, &user, &req.name, req.expires_days))
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revoke an API token (yours; admins: any).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked")))]
pub async fn revoke_token(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let owner = (!caller.is_admin()).then(|| caller.name().to_string());
    st.db
        .run(move |db| auth::revoke_token(db, &id, owner.as_deref()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
