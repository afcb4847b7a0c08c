//! Authentication and authorisation.
//!
//! - **Users** have an argon2id password hash (PHC string), a role and optional quotas.
//! - **Login** returns a short-lived HS256 JWT access token (15 min) and a refresh token: 32
//!   random bytes, stored as a SHA-256 hash, valid 30 days, revocable, and rotated on every use
//!   (the old one is revoked when the new pair is issued).
//! - **API tokens** (`kbk_...`) for scripts: random, stored hashed, revocable, optional expiry.
//! - **The Unix socket** authenticates by the peer's credentials (`SO_PEERCRED`): uid 0 is the
//!   local admin `root`; the socket itself is `0600 root`.
//! - Every request re-reads the user, so a deleted user or a changed role takes effect at once
//!   (the JWT carries the name only).
//! - **Failed logins** are limited per (user, client address): 5 failures in 5 minutes lock
//!   that pair out for the rest of the window (429 with `Retry-After`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use base64::Engine;
use kobako_state::rusqlite::{params, OptionalExtension};
use kobako_state::{now_ms, Db};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::ToSchema;

use crate::db::sql;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const LOGIN_WINDOW: Duration = Duration::from_secs(300);
const LOGIN_MAX_FAILURES: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users and every lab.
    Admin,
    /// Creates and operates their own labs; sees only those.
    Member,
    /// Reads every lab; changes nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Most VMs this user's labs may run at once (none = no limit).
    pub max_vms: Option<i64>,
    /// Most memory (MiB) this user's labs may use at once (none = no limit).
    pub max_memory_mib: Option<i64>,
    pub created_ms: i64,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// Over the Unix socket as root.
    pub local: bool,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.user.name
    }
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }
    /// Refuses viewers.
    pub fn require_write(&self) -> ApiResult<()> {
        if self.user.role == Role::Viewer {
            return Err(ApiError::forbidden(format!(
                "user '{}' is a viewer and cannot change anything (ask an admin for the member role)",
                self.user.name
            )));
        }
        Ok(())
    }
    pub fn require_admin(&self) -> ApiResult<()> {
        if !self.is_admin() {
            return Err(ApiError::forbidden(format!(
                "only admins may do this (user '{}' is a {})",
                self.user.name,
                self.user.role.as_str()
            )));
        }
        Ok(())
    }
    /// May see a lab owned by `owner` (`None`: created locally by root).
    pub fn can_see(&self, owner: Option<&str>) -> bool {
        match self.user.role {
            Role::Admin | Role::Viewer => true,
            Role::Member => owner == Some(self.user.name.as_str()),
        }
    }
    /// May change a lab owned by `owner`.
    pub fn can_change(&self, owner: Option<&str>) -> bool {
        match self.user.role {
            Role::Admin => true,
            Role::Member => owner == Some(self.user.name.as_str()),
            Role::Viewer => false,
        }
    }
}

// ---- secrets and hashes --------------------------------------------------------------------

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b
}

/// A random URL-safe string of `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

/// SHA-256 (hex) of a high-entropy secret (tokens; never passwords).
pub fn token_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// argon2id PHC string of a password (slow on purpose: call from a blocking thread).
pub fn hash_password(pw: &str) -> ApiResult<String> {
    let salt = SaltString::encode_b64(&random_bytes(16)).map_err(ApiError::internal)?;
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::internal)
}

pub fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Password policy: at least 8 characters.
pub fn check_password(pw: &str) -> ApiResult<()> {
    if pw.chars().count() < 8 {
        return Err(ApiError::unprocessable(
            "weak_password",
            "passwords need at least 8 characters",
        ));
    }
    if pw.len() > 1024 {
        return Err(ApiError::unprocessable(
            "invalid_password",
            "passwords are at most 1024 bytes",
        ));
    }
    Ok(())
}

/// User names: 1-64 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_user_name(n: &str) -> ApiResult<()> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '-'
        });
    if !ok {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("user name '{n}': use 1-64 of a-z 0-9 . _ - starting with a letter or digit"),
        ));
    }
    Ok(())
}

// ---- users ---------------------------------------------------------------------------------

fn user_from_row(r: &kobako_state::rusqlite::Row<'_>) -> kobako_state::rusqlite::Result<User> {
    let role: String = r.get(1)?;
    Ok(User {
        name: r.get(0)?,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        max_vms: r.get(2)?,
        max_memory_mib: r.get(3)?,
        created_ms: r.get(4)?,
    })
}

pub fn get_user(db: &Db, name: &str) -> ApiResult<Option<User>> {
    db.conn()
        .query_row(
            "SELECT name, role, max_vms, max_memory_mib, created_ms FROM users WHERE name = ?1",
            params![name],
            user_from_row,
        )
        .optional()
        .map_err(sql)
}

pub fn list_users(db: &Db) -> ApiResult<Vec<User>> {
    let c = db.conn();
    let mut st = c
        .prepare("SELECT name, role, max_vms, max_memory_mib, created_ms FROM users ORDER BY name")
        .map_err(sql)?;
    let rows = st.query_map([], user_from_row).map_err(sql)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql)
}

pub fn count_users(db: &Db) -> ApiResult<i64> {
    db.conn()
        .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
        .map_err(sql)
}

/// Creates a user (hashes the password here: call from a blocking thread).
pub fn add_user(
    db: &Db,
    name: &str,
    password: &str,
    role: Role,
    max_vms: Option<i64>,
    max_memory_mib: Option<i64>,
) -> ApiResult<User> {
    check_user_name(name)?;
    check_password(password)?;
    check_quota(max_vms, max_memory_mib)?;
    if name == "root" {
        return Err(ApiError::unprocessable(
            "invalid_name",
            "'root' is the local admin of the Unix socket; pick another name",
        ));
    }
    let hash = hash_password(password)?;
    let now = now_ms();
    let n = db
        .conn()
        .execute(
            "INSERT INTO users(name, hash, role, max_vms, max_memory_mib, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(name) DO NOTHING",
            params![name, hash, role.as_str(), max_vms, max_memory_mib, now],
        )
        .map_err(sql)?;
    if n == 0 {
        return Err(ApiError::conflict(format!("user '{name}' already exists")));
    }
    get_user(db, name)?.ok_or_else(|| ApiError::internal("user vanished after insert"))
}

pub fn check_quota(max_vms: Option<i64>, max_memory_mib: Option<i64>) -> ApiResult<()> {
    if max_vms.is_some_and(|v| v < 0) || max_memory_mib.is_some_and(|v| v < 0) {
        return Err(ApiError::unprocessable(
            "invalid_quota",
            "quotas are counts of VMs and MiB of memory: 0 or more",
        ));
    }
    Ok(())
}

/// Changes what is given; the password change revokes the user's refresh tokens.
pub fn update_user(
    db: &Db,
    name: &str,
    role: Option<Role>,
    password: Option<&str>,
    max_vms: Option<Option<i64>>,
    max_memory_mib: Option<Option<i64>>,
) -> ApiResult<User> {
    let Some(mut u) = get_user(db, name)? else {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    };
    if let Some(pw) = password {
        check_password(pw)?;
        let h = hash_password(pw)?;
        let c = db.conn();
        c.execute(
            "UPDATE users SET hash = ?2, updated_ms = ?3 WHERE name = ?1",
            params![name, h, now_ms()],
        )
        .map_err(sql)?;
        c.execute(
            "UPDATE refresh_tokens SET revoked = 1 WHERE user = ?1",
            params![name],
        )
        .map_err(sql)?;
    }
    if let Some(r) = role {
        u.role = r;
    }
    if let Some(v) = max_vms {
        u.max_vms = v;
    }
    if let Some(v) = max_memory_mib {
        u.max_memory_mib = v;
    }
    check_quota(u.max_vms, u.max_memory_mib)?;
    db.conn()
        .execute(
            "UPDATE users SET role = ?2, max_vms = ?3, max_memory_mib = ?4, updated_ms = ?5
             WHERE name = ?1",
            params![name, u.role.as_str(), u.max_vms, u.max_memory_mib, now_ms()],
        )
        .map_err(sql)?;
    Ok(u)
}

pub fn delete_user(db: &Db, name: &str) -> ApiResult<()> {
    let n = db
        .conn()
        .execute("DELETE FROM users WHERE name = ?1", params![name])
        .map_err(sql)?;
    if n == 0 {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    Ok(())
}

fn password_hash_of(db: &Db, name: &str) -> ApiResult<Option<String>> {
    db.conn()
        .query_row(
            "SELECT hash FROM users WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql)
}

/// First start: when there is no user, create `admin` with a random password, write it 0600 to
/// `<state>/server/initial-admin-password` and return it (printed once by the caller).
pub fn bootstrap_admin(db: &Db, dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    if count_users(db).map_err(|e| anyhow::anyhow!(e.message))? > 0 {
        return Ok(None);
    }
    let pw = random_token(18);
    add_user(db, "admin", &pw, Role::Admin, None, None).map_err(|e| anyhow::anyhow!(e.message))?;
    crate::tls::write_private(
        &dir.join("initial-admin-password"),
        format!("{pw}\n").as_bytes(),
    )?;
    Ok(Some(pw))
}

// ---- JWT -----------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    /// Random id, so two tokens issued in the same second differ.
    jti: String,
}

/// The HS256 key (32 random bytes in `<state>/server/jwt.key`, 0600, made on first start).
pub struct Keys {
    enc: jsonwebtoken::EncodingKey,
    dec: jsonwebtoken::DecodingKey,
}

impl Keys {
    pub fn load_or_create(dir: &std::path::Path) -> anyhow::Result<Keys> {
        let p = dir.join("jwt.key");
        let secret = match std::fs::read(&p) {
            Ok(s) if s.len() >= 32 => s,
            _ => {
                let s = random_bytes(32);
                crate::tls::write_private(&p, &s)?;
                s
            }
        };
        Ok(Keys {
            enc: jsonwebtoken::EncodingKey::from_secret(&secret),
            dec: jsonwebtoken::DecodingKey::from_secret(&secret),
        })
    }

    fn issue(&self, user: &str) -> ApiResult<String> {
        let now = (now_ms() / 1000) as u64;
        let c = Claims {
            sub: user.into(),
            iat: now,
            exp: now + ACCESS_TTL.as_secs(),
            jti: random_token(8),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &c,
            &self.enc,
        )
        .map_err(ApiError::internal)
    }

    fn verify(&self, token: &str) -> ApiResult<String> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.leeway = 5;
        match jsonwebtoken::decode::<Claims>(token, &self.dec, &v) {
            Ok(d) => Ok(d.claims.sub),
            Err(e) => Err(ApiError::unauthorized(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "access token expired: get a new one from POST /api/v1/auth/refresh".to_string()
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "access token signature is not valid (tampered, or from another server)"
                        .to_string()
                }
                _ => {
                    "access token is not valid: log in again (POST /api/v1/auth/login)".to_string()
                }
            })),
        }
    }
}

/// A login's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// Bearer token for `Authorization: Bearer ...`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token is valid.
    pub expires_in: u64,
    /// Exchange at POST /api/v1/auth/refresh for a new pair (single use).
    pub refresh_token: String,
    pub user: User,
}

pub fn issue_pair(state: &AppState, db: &Db, user: User) -> ApiResult<TokenPair> {
    let access = state.keys.issue(&user.name)?;
    let refresh = random_token(32);
    let now = now_ms();
    db.conn()
        .execute(
            "INSERT INTO refresh_tokens(hash, user, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                token_hash(&refresh),
                user.name,
                now,
                now + REFRESH_TTL.as_millis() as i64
            ],
        )
        .map_err(sql)?;
    Ok(TokenPair {
        access_token: access,
        token_type: "Bearer".into(),
        expires_in: ACCESS_TTL.as_secs(),
        refresh_token: refresh,
        user,
    })
}

/// Checks a password login (rate-limited) and issues a token pair.
pub fn login(
    state: &AppState,
    db: &Db,
    name: &str,
    password: &str,
    ip: &str,
) -> ApiResult<TokenPair> {
    let key = format!("{name}\0{ip}");
    if let Some(wait) = state.limiter.blocked(&key) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!(
                "too many failed logins for '{name}' from this address: try again in {} s",
                wait.as_secs().max(1)
            ),
        );
        e.retry_after = Some(wait.as_secs().max(1));
        return Err(e);
    }
    let hash = password_hash_of(db, name)?;
    // Verify against a dummy hash for unknown users too, so timing does not reveal names.
    let ok = match &hash {
        Some(h) => verify_password(password, h),
        None => {
            verify_password(password, &state.dummy_hash);
            false
        }
    };
    if !ok {
        state.limiter.fail(&key);
        return Err(ApiError::unauthorized("wrong user name or password"));
    }
    state.limiter.clear(&key);
    let user = get_user(db, name)?.ok_or_else(|| ApiError::unauthorized("user was removed"))?;
    issue_pair(state, db, user)
}

/// Exchanges a refresh token for a new pair; the old one is revoked (rotation). A revoked
/// token presented again revokes every refresh token of its user (it was stolen or replayed).
pub fn refresh(state: &AppState, db: &Db, token: &str) -> ApiResult<TokenPair> {
    let h = token_hash(token);
    let row: Option<(String, i64, bool)> = db
        .conn()
        .query_row(
            "SELECT user, expires_ms, revoked FROM refresh_tokens WHERE hash = ?1",
            params![h],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql)?;
    let Some((user, exp, revoked)) = row else {
        return Err(ApiError::unauthorized(
            "refresh token not known: log in again",
        ));
    };
    if revoked {
        db.conn()
            .execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE user = ?1",
                params![user],
            )
            .map_err(sql)?;
        return Err(ApiError::unauthorized(
            "refresh token was already used or revoked; every session of this user was ended: log in again",
        ));
    }
    if exp < now_ms() {
        return Err(ApiError::unauthorized(
            "refresh token expired: log in again",
        ));
    }
    let changed = db
        .conn()
        .execute(
            "UPDATE refresh_tokens SET revoked = 1 WHERE hash = ?1 AND revoked = 0",
            params![h],
        )
        .map_err(sql)?;
    if changed == 0 {
        return Err(ApiError::unauthorized(
            "refresh token was just used: log in again",
        ));
    }
    let u = get_user(db, &user)?.ok_or_else(|| ApiError::unauthorized("user was removed"))?;
    issue_pair(state, db, u)
}

/// Revokes a refresh token (logout). Unknown tokens are fine (idempotent).
pub fn logout(db: &Db, token: &str) -> ApiResult<()> {
    db.conn()
        .execute(
            "UPDATE refresh_tokens SET revoked = 1 WHERE hash = ?1",
            params![token_hash(token)],
        )
        .map_err(sql)?;
    Ok(())
}

// ---- API tokens ----------------------------------------------------------------------------

/// An API token as listed (the secret is shown once, at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked: bool,
}

pub fn create_token(
    db: &Db,
    user: &str,
    name: &str,
    expires_days: Option<u32>,
) -> ApiResult<(ApiToken, String)> {
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::unprocessable(
            "invalid_name",
            "token names are 1-100 characters",
        ));
    }
    let id = random_token(6);
    let secret = format!("kbk_{}", random_token(32));
    let now = now_ms();
    let expires = expires_days.map(|d| now + i64::from(d) * 86_400_000);
    db.conn()
        .execute(
            "INSERT INTO api_tokens(id, hash, user, name, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, token_hash(&secret), user, name, now, expires],
        )
        .map_err(sql)?;
    Ok((
        ApiToken {
            id,
            user: user.into(),
            name: name.into(),
            created_ms: now,
            expires_ms: expires,
            last_used_ms: None,
            revoked: false,
        },
        secret,
    ))
}

pub fn list_tokens(db: &Db, user: Option<&str>) -> ApiResult<Vec<ApiToken>> {
    let c = db.conn();
    let mut st = c
        .prepare(
            "SELECT id, user, name, created_ms, expires_ms, last_used_ms, revoked FROM api_tokens
             WHERE ?1 IS NULL OR user = ?1 ORDER BY created_ms",
        )
        .map_err(sql)?;
    let rows = st
        .query_map(params![user], |r| {
            Ok(ApiToken {
                id: r.get(0)?,
                user: r.get(1)?,
                name: r.get(2)?,
                created_ms: r.get(3)?,
                expires_ms: r.get(4)?,
                last_used_ms: r.get(5)?,
                revoked: r.get(6)?,
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql)
}

/// Revokes token `id`; `owner` limits it to that user's tokens (members).
pub fn revoke_token(db: &Db, id: &str, owner: Option<&str>) -> ApiResult<()> {
    let n = db
        .conn()
        .execute(
            "UPDATE api_tokens SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR user = ?2)",
            params![id, owner],
        )
        .map_err(sql)?;
    if n == 0 {
        return Err(ApiError::not_found(format!("no token '{id}'")));
    }
    Ok(())
}

fn token_user(db: &Db, secret: &str) -> ApiResult<String> {
    let row: Option<(String, String, Option<i64>, bool)> = db
        .conn()
        .query_row(
            "SELECT id, user, expires_ms, revoked FROM api_tokens WHERE hash = ?1",
            params![token_hash(secret)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(sql)?;
    match row {
        None => Err(ApiError::unauthorized("API token not known")),
        Some((_, _, _, true)) => Err(ApiError::unauthorized("API token was revoked")),
        Some((_, _, Some(e), _)) if e < now_ms() => Err(ApiError::unauthorized(
            "API token expired: create a new one",
        )),
        Some((id, user, _, _)) => {
            // Recorded at most once a minute per token (no write per request).
            let _ = db.conn().execute(
                "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1
                 AND (last_used_ms IS NULL OR last_used_ms < ?2 - 60000)",
                params![id, now_ms()],
            );
            Ok(user)
        }
    }
}

// ---- the extractor -------------------------------------------------------------------------

/// Peer of a Unix socket connection.
#[derive(Debug, Clone, Copy)]
pub struct UdsPeer {
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for UdsPeer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        UdsPeer {
            uid: s.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// The client's address for rate limiting ("local" on the Unix socket).
pub fn client_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".into())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<UdsPeer>>() {
            if let Some(slot) = parts.extensions.get::<crate::AuditSlot>() {
                slot.0.lock().unwrap_or_else(|e| e.into_inner()).user =
                    Some(format!("root (uid {:?})", peer.uid));
            }
            return match peer.uid {
                Some(0) => Ok(Caller {
                    user: User {
                        name: "root".into(),
                        role: Role::Admin,
                        max_vms: None,
                        max_memory_mib: None,
                        created_ms: 0,
                    },
                    local: true,
                }),
                _ => Err(ApiError::forbidden(
                    "the Unix socket is for root; use HTTPS with a token",
                )),
            };
        }
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|s| s.trim().to_string());
        // Browsers cannot set headers on WebSocket and EventSource requests: `access_token` in
        // the query string is accepted there too.
        let bearer = bearer.or_else(|| {
            parts.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("access_token="))
                    .map(|s| s.to_string())
            })
        });
        let Some(token) = bearer else {
            return Err(ApiError::unauthorized(
                "no credentials: send `Authorization: Bearer TOKEN` (POST /api/v1/auth/login gives one)",
            ));
        };
        let keys = state.keys.clone();
        let name = if token.starts_with("kbk_") {
            state.db.run(move |db| token_user(db, &token)).await?
        } else {
            keys.verify(&token)?
        };
        let user = match state.cache.user(&name) {
            Some(u) => u,
            None => {
                let version = state.cache.version();
                let u = state
                    .db
                    .run(move |db| get_user(db, &name))
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
                if let Some(v) = version {
                    state.cache.put_user(v, &u);
                }
                u
            }
        };
        if let Some(slot) = parts.extensions.get::<crate::AuditSlot>() {
            slot.0.lock().unwrap_or_else(|e| e.into_inner()).user = Some(user.name.clone());
        }
        Ok(Caller { user, local: false })
    }
}

// ---- login rate limit ----------------------------------------------------------------------

/// Failed logins per key (user + client address) in a sliding window.
#[derive(Default)]
pub struct Limiter {
    m: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Limiter {
    fn blocked(&self, key: &str) -> Option<Duration> {
        let m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        let (n, since) = m.get(key)?;
        let age = since.elapsed();
        (*n >= LOGIN_MAX_FAILURES && age < LOGIN_WINDOW).then(|| LOGIN_WINDOW - age)
    }
    fn fail(&self, key: &str) {
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 100_000 {
            m.retain(|_, (_, t)| t.elapsed() < LOGIN_WINDOW);
        }
        let e = m.entry(key.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= LOGIN_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
    fn clear(&self, key: &str) {
        self.m.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}
