//! Authentication and authorisation.
//!
//! - **Users** have an argon2id password hash (PHC string), a role and optional quotas.
//! - **Login** returns a short-lived HS256 JWT access token (15 min) and a refresh token: 32
//!   random bytes, stored as a SHA-256 hash, valid 30 days, revocable, and rotated on every use
//!   (the old one is revoked when the new pair is issued).
//! - **API tokens** (`kbk_...`) for scripts: random, stored hashed, revocable, optional expiry.
//! - **The Unix socket** authenticates by the peer's credentials (`SO_PEERCRED`): uid 0 is the
//!   local admin `root`; the socket itself is `0600 root`.
//! - Every request re-reads the user, so a deleted user or a changed role takes effect at once.
//!   The JWT carries the name and the user row's `token_gen`, a random value made when the row
//!   is created and again when the password changes: a user deleted and created again under
//!   the same name, or whose password changed, does not accept the old access tokens. API and
//!   refresh tokens belong to the row (deleted with it) and are revoked by a password change.
//! - **Long-lived streams** (events, console, tty) re-check their credential every
//!   [`SESSION_CHECK`] ([`session_alive`]) and end when it expired, was revoked, or the user
//!   was removed or changed role. Browsers, which cannot set headers on EventSource and
//!   WebSocket requests, trade their token for a single-use 30 s `ticket` ([`Sessions`]).
//! - **Failed logins** ([`Limiter`]): 5 failures in 5 minutes lock a (user, client address)
//!   pair out for the rest of the window (429 with `Retry-After`), so one address cannot lock
//!   out a user for everybody else behind another proxy. Across all addresses, a user name with
//!   20 failures in the window gets every further password check delayed by 1 s (not refused):
//!   guessing from many addresses slows down, while the right password from a new address
//!   still gets in after that second. At most [`HASH_CONCURRENCY`] password hashes run at once;
//!   a few more wait up to 5 s, the rest are answered 503 with `Retry-After` at once. Login
//!   names over 64 bytes and passwords over 1024 bytes are refused (400) before any hashing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// Failures of one user name (from any address) after which its password checks are delayed.
const USER_SLOW_AFTER: u32 = 20;
/// The delay of each password check of such a user name.
const USER_SLOW_DELAY: Duration = Duration::from_secs(1);
/// Most keys each table of the [`Limiter`] keeps (expired ones first, then the oldest go).
const LIMITER_CAP: usize = 10_000;
/// Password hashes (argon2id: ~19 MiB and tens of ms each) running at once.
pub const HASH_CONCURRENCY: usize = 2;
/// Password checks that may wait for a hashing slot; more are refused at once (503).
const HASH_QUEUE: usize = 16;
/// How long a password check waits for a hashing slot before 503.
const HASH_WAIT: Duration = Duration::from_secs(5);
/// Longest login name and password accepted (checked before hashing).
pub const MAX_LOGIN_NAME: usize = 64;
pub const MAX_PASSWORD: usize = 1024;
/// How often a long-lived stream re-checks its credential.
pub const SESSION_CHECK: Duration = Duration::from_secs(2);
/// Lifetime of a stream ticket (POST /auth/ticket).
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most tickets outstanding.
const TICKET_CAP: usize = 10_000;

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
    /// Most disk (MiB) this user's checkpoints and packet captures may take (none = no limit).
    pub max_disk_mib: Option<i64>,
    pub created_ms: i64,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// Over the Unix socket as root.
    pub local: bool,
    /// The credential the request came with (long-lived streams re-check it).
    pub cred: Credential,
}

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// root over the Unix socket.
    Local,
    /// A JWT access token: the user row's `token_gen` it was issued under, its expiry (s).
    Access { gen: String, exp: u64 },
    /// An API token (`kbk_...`), by id.
    ApiToken { id: String },
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

/// Verifies `pw` against `phc`; a missing user or one without a password (OIDC users) is
/// verified against `dummy` instead and fails, so the time taken does not tell them apart.
pub fn verify_or_dummy(pw: &str, phc: Option<&str>, dummy: &str) -> bool {
    match phc.filter(|h| PasswordHash::new(h).is_ok()) {
        Some(h) => verify_password(pw, h),
        None => {
            verify_password(pw, dummy);
            false
        }
    }
}

/// Login input before any hashing: 400 for names and passwords no user can have.
pub fn check_login_input(name: &str, pw: &str) -> ApiResult<()> {
    if name.len() > MAX_LOGIN_NAME {
        return Err(ApiError::bad_request(format!(
            "username is {} bytes; user names are at most {MAX_LOGIN_NAME}",
            name.len()
        )));
    }
    if pw.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "password is {} bytes; passwords are at most {MAX_PASSWORD}",
            pw.len()
        )));
    }
    Ok(())
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
        max_disk_mib: r.get(5)?,
    })
}

pub fn get_user(db: &Db, name: &str) -> ApiResult<Option<User>> {
    db.conn()
        .query_row(
            "SELECT name, role, max_vms, max_memory_mib, created_ms, max_disk_mib FROM users WHERE name = ?1",
            params![name],
            user_from_row,
        )
        .optional()
        .map_err(sql)
}

pub fn list_users(db: &Db) -> ApiResult<Vec<User>> {
    let c = db.conn();
    let mut st = c
        .prepare("SELECT name, role, max_vms, max_memory_mib, created_ms, max_disk_mib FROM users ORDER BY name")
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

/// Sets (or with `None` removes) a user's disk quota (MiB of checkpoints and captures).
pub fn set_max_disk_mib(db: &Db, name: &str, max_disk_mib: Option<i64>) -> ApiResult<User> {
    check_disk_quota(max_disk_mib)?;
    let n = db
        .conn()
        .execute(
            "UPDATE users SET max_disk_mib = ?2, updated_ms = ?3 WHERE name = ?1",
            params![name, max_disk_mib, now_ms()],
        )
        .map_err(sql)?;
    if n == 0 {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    get_user(db, name)?.ok_or_else(|| ApiError::not_found(format!("no user '{name}'")))
}

/// A disk quota is MiB: 0 or more.
pub fn check_disk_quota(max_disk_mib: Option<i64>) -> ApiResult<()> {
    if max_disk_mib.is_some_and(|v| v < 0) {
        return Err(ApiError::unprocessable(
            "invalid_quota",
            "max_disk_mib is MiB of disk: 0 or more",
        ));
    }
    Ok(())
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
        set_password(db, name, pw, false)?;
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

/// Sets `name`'s password (hashes here: call from a blocking thread). Unless `keep_tokens`,
/// every session of the user ends: a new `token_gen` invalidates its access tokens, and its
/// refresh and API tokens are revoked.
pub fn set_password(db: &Db, name: &str, pw: &str, keep_tokens: bool) -> ApiResult<()> {
    check_password(pw)?;
    let h = hash_password(pw)?;
    let mut c = db.conn();
    let tx = c.transaction().map_err(sql)?;
    let n = tx
        .execute(
            "UPDATE users SET hash = ?2, updated_ms = ?3 WHERE name = ?1",
            params![name, h, now_ms()],
        )
        .map_err(sql)?;
    if n == 0 {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    if !keep_tokens {
        tx.execute(
            "UPDATE users SET token_gen = ?2 WHERE name = ?1",
            params![name, random_token(16)],
        )
        .map_err(sql)?;
        tx.execute(
            "UPDATE refresh_tokens SET revoked = 1 WHERE user = ?1",
            params![name],
        )
        .map_err(sql)?;
        tx.execute(
            "UPDATE api_tokens SET revoked = 1 WHERE user = ?1",
            params![name],
        )
        .map_err(sql)?;
    }
    tx.commit().map_err(sql)
}

/// The user row's `token_gen` (`None`: no such user).
pub fn user_gen(db: &Db, name: &str) -> ApiResult<Option<String>> {
    db.conn()
        .query_row(
            "SELECT token_gen FROM users WHERE name = ?1",
            params![name],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()
        .map(Option::flatten)
        .map_err(sql)
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
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    /// Random id, so two tokens issued in the same second differ.
    pub jti: String,
    /// The user row's `token_gen` when issued (tokens from before it existed have none and
    /// are refused).
    #[serde(default)]
    pub gen: String,
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

    fn issue(&self, user: &str, gen: &str) -> ApiResult<String> {
        let now = (now_ms() / 1000) as u64;
        let c = Claims {
            sub: user.into(),
            iat: now,
            exp: now + ACCESS_TTL.as_secs(),
            jti: random_token(8),
            gen: gen.into(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &c,
            &self.enc,
        )
        .map_err(ApiError::internal)
    }

    fn verify(&self, token: &str) -> ApiResult<Claims> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.leeway = 5;
        match jsonwebtoken::decode::<Claims>(token, &self.dec, &v) {
            Ok(d) => Ok(d.claims),
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
    let gen =
        user_gen(db, &user.name)?.ok_or_else(|| ApiError::unauthorized("user was removed"))?;
    let access = state.keys.issue(&user.name, &gen)?;
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

fn too_many(name: &str, wait: Duration) -> ApiError {
    let secs = wait.as_secs().max(1);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many failed logins for '{name}' from this address: try again in {secs} s"),
    );
    e.retry_after = Some(secs);
    e
}

/// Checks `password` for user `name` as a login would: input sizes (400), the failure limits
/// (429, or a delay), a hashing slot (503 when the server is saturated), then the hash —
/// with a dummy hash for unknown users. Records the failure or clears it.
pub async fn check_password_of(
    state: &AppState,
    name: &str,
    password: &str,
    ip: &str,
) -> ApiResult<bool> {
    check_login_input(name, password)?;
    match state.limiter.check(name, ip) {
        Gate::Locked(wait) => return Err(too_many(name, wait)),
        Gate::Slow(d) => tokio::time::sleep(d).await,
        Gate::Open => {}
    }
    let permit = state.limiter.hashing().await?;
    let n = name.to_string();
    let hash = state.db.run(move |db| password_hash_of(db, &n)).await?;
    let (pw, dummy) = (password.to_string(), state.dummy_hash.clone());
    let ok = tokio::task::spawn_blocking(move || verify_or_dummy(&pw, hash.as_deref(), &dummy))
        .await
        .map_err(ApiError::internal)?;
    drop(permit);
    if ok {
        state.limiter.clear(name, ip);
    } else {
        state.limiter.fail(name, ip);
    }
    Ok(ok)
}

/// A password login (rate-limited, see [`check_password_of`]): a token pair.
pub async fn login(state: &AppState, name: &str, password: &str, ip: &str) -> ApiResult<TokenPair> {
    if !check_password_of(state, name, password, ip).await? {
        return Err(ApiError::unauthorized("wrong user name or password"));
    }
    let (st, n) = (state.clone(), name.to_string());
    state
        .db
        .run(move |db| {
            let user =
                get_user(db, &n)?.ok_or_else(|| ApiError::unauthorized("user was removed"))?;
            issue_pair(&st, db, user)
        })
        .await
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

/// (token id, user) of a valid API token.
fn token_user(db: &Db, secret: &str) -> ApiResult<(String, String)> {
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
            Ok((id, user))
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
                        max_disk_mib: None,
                        created_ms: 0,
                    },
                    local: true,
                    cred: Credential::Local,
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
        let query = parts.uri.query().unwrap_or("");
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(k))
                .map(str::to_string)
        };
        // Browsers cannot set headers on WebSocket and EventSource requests: they send a
        // single-use `ticket` (POST /api/v1/auth/ticket). `access_token` in the query is still
        // accepted for older clients (this server logs no URLs; proxies might).
        if bearer.is_none() {
            if let Some(t) = param("ticket=") {
                let (name, cred) = state.sessions.redeem(&t).ok_or_else(|| {
                    ApiError::unauthorized(
                        "ticket not known, already used or expired (tickets are single-use and \
                         live 30 s): get a new one from POST /api/v1/auth/ticket",
                    )
                })?;
                let user = current_user(state, &name).await?;
                let caller = Caller {
                    user,
                    local: false,
                    cred,
                };
                session_alive(state, &caller)
                    .await
                    .map_err(|e| ApiError::unauthorized(e.to_string()))?;
                audit_caller(parts, &caller.user.name);
                return Ok(caller);
            }
        }
        let bearer = bearer.or_else(|| param("access_token="));
        let Some(token) = bearer else {
            return Err(ApiError::unauthorized(
                "no credentials: send `Authorization: Bearer TOKEN` (POST /api/v1/auth/login gives one)",
            ));
        };
        let keys = state.keys.clone();
        let (name, cred) = if token.starts_with("kbk_") {
            let (id, user) = state.db.run(move |db| token_user(db, &token)).await?;
            (user, Credential::ApiToken { id })
        } else {
            let c = keys.verify(&token)?;
            (
                c.sub,
                Credential::Access {
                    gen: c.gen,
                    exp: c.exp,
                },
            )
        };
        let user = current_user(state, &name).await?;
        if let Credential::Access { gen, .. } = &cred {
            if state.sessions.gen(state, &name).await?.as_deref() != Some(gen.as_str()) {
                return Err(ApiError::unauthorized(
                    "access token is from an earlier session of this user (password changed, \
                     or the user was removed and created again): log in again",
                ));
            }
        }
        audit_caller(parts, &user.name);
        Ok(Caller {
            user,
            local: false,
            cred,
        })
    }
}

fn audit_caller(parts: &Parts, name: &str) {
    if let Some(slot) = parts.extensions.get::<crate::AuditSlot>() {
        slot.0.lock().unwrap_or_else(|e| e.into_inner()).user = Some(name.to_string());
    }
}

/// The user row (from the read cache when the database is unchanged); 401 when it is gone.
async fn current_user(state: &AppState, name: &str) -> ApiResult<User> {
    if let Some(u) = state.cache.user(name) {
        return Ok(u);
    }
    let version = state.cache.version();
    let n = name.to_string();
    let u = state
        .db
        .run(move |db| get_user(db, &n))
        .await?
        .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
    if let Some(v) = version {
        state.cache.put_user(v, &u);
    }
    Ok(u)
}

// ---- sessions: generations, tickets, stream checks ------------------------------------------

/// Why a long-lived stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    #[error("session ended: the access token expired (get a new one and reconnect)")]
    Expired,
    #[error("session ended: the credential was revoked (password changed or token revoked): log in again")]
    Revoked,
    #[error("session ended: the user was removed")]
    UserRemoved,
    #[error("session ended: the user's role changed: reconnect")]
    RoleChanged,
}

struct Ticket {
    name: String,
    cred: Credential,
    at: Instant,
}

/// Per-user `token_gen` cache (valid while the database is unchanged) and stream tickets.
#[derive(Default)]
pub struct Sessions {
    gens: Mutex<(i64, HashMap<String, String>)>,
    tickets: Mutex<HashMap<String, Ticket>>,
}

impl Sessions {
    /// The user's current `token_gen` (`None`: no such user).
    pub async fn gen(&self, state: &AppState, name: &str) -> ApiResult<Option<String>> {
        let version = state.cache.version();
        if let Some(v) = version {
            let g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 == v {
                if let Some(x) = g.1.get(name) {
                    return Ok(Some(x.clone()));
                }
            }
        }
        let n = name.to_string();
        let gen = state.db.run(move |db| user_gen(db, &n)).await?;
        if let (Some(v), Some(x)) = (version, &gen) {
            let mut g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 != v || g.1.len() >= 4096 {
                g.0 = v;
                g.1.clear();
            }
            g.1.insert(name.to_string(), x.clone());
        }
        Ok(gen)
    }

    /// A single-use ticket standing for `caller`'s credential for [`TICKET_TTL`].
    pub fn issue(&self, caller: &Caller) -> ApiResult<String> {
        if caller.local {
            return Err(ApiError::unprocessable(
                "local_admin",
                "root on the Unix socket needs no ticket (and it would not work over HTTPS)",
            ));
        }
        let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= TICKET_CAP {
            t.retain(|_, v| v.at.elapsed() < TICKET_TTL);
        }
        if t.len() >= TICKET_CAP {
            let mut e = ApiError::unavailable("too many stream tickets outstanding: try again");
            e.retry_after = Some(TICKET_TTL.as_secs());
            return Err(e);
        }
        let secret = random_token(24);
        t.insert(
            token_hash(&secret),
            Ticket {
                name: caller.user.name.clone(),
                cred: caller.cred.clone(),
                at: Instant::now(),
            },
        );
        Ok(secret)
    }

    /// The (user, credential) of a ticket, which is used up.
    pub fn redeem(&self, secret: &str) -> Option<(String, Credential)> {
        let t = self
            .tickets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token_hash(secret))?;
        (t.at.elapsed() < TICKET_TTL).then_some((t.name, t.cred))
    }
}

/// Whether `caller`'s credential still holds: not expired, not revoked, the same user row
/// with the same role. Database errors count as alive (a stream is not cut by a hiccup).
pub async fn session_alive(state: &AppState, caller: &Caller) -> Result<(), SessionEnd> {
    let name = caller.user.name.clone();
    match &caller.cred {
        Credential::Local => return Ok(()),
        Credential::Access { gen, exp } => {
            if (now_ms() / 1000) as u64 > *exp {
                return Err(SessionEnd::Expired);
            }
            match state.sessions.gen(state, &name).await {
                Ok(None) => return Err(SessionEnd::UserRemoved),
                Ok(Some(g)) if &g != gen => return Err(SessionEnd::Revoked),
                _ => {}
            }
        }
        Credential::ApiToken { id } => {
            let id = id.clone();
            let row = state
                .db
                .run(move |db| {
                    db.conn()
                        .query_row(
                            "SELECT revoked, expires_ms FROM api_tokens WHERE id = ?1",
                            params![id],
                            |r| Ok((r.get::<_, bool>(0)?, r.get::<_, Option<i64>>(1)?)),
                        )
                        .optional()
                        .map_err(sql)
                })
                .await;
            match row {
                Ok(None) => return Err(SessionEnd::UserRemoved),
                Ok(Some((true, _))) => return Err(SessionEnd::Revoked),
                Ok(Some((_, Some(e)))) if e < now_ms() => return Err(SessionEnd::Expired),
                _ => {}
            }
        }
    }
    match current_user(state, &name).await {
        Ok(u) if u.role != caller.user.role => Err(SessionEnd::RoleChanged),
        Ok(_) => Ok(()),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(SessionEnd::UserRemoved),
        Err(_) => Ok(()),
    }
}

/// Resolves when `caller`'s session ends (checked every [`SESSION_CHECK`]): for a
/// `tokio::select!` next to a WebSocket or stream.
pub async fn session_end(state: AppState, caller: Caller) -> SessionEnd {
    loop {
        tokio::time::sleep(SESSION_CHECK).await;
        if let Err(e) = session_alive(&state, &caller).await {
            return e;
        }
    }
}

// ---- login rate limit ----------------------------------------------------------------------

/// What the [`Limiter`] says about a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Check after this delay (the user name is under attack from many addresses).
    Slow(Duration),
    /// Refuse (429) for this long: this address failed too often for this user.
    Locked(Duration),
}

struct Window {
    n: u32,
    since: Instant,
}

/// A bounded map of failure windows: at [`LIMITER_CAP`] keys, expired windows go first, then
/// the oldest.
#[derive(Default)]
struct Windows(HashMap<String, Window>);

impl Windows {
    fn get(&self, key: &str) -> Option<u32> {
        self.0
            .get(key)
            .filter(|w| w.since.elapsed() < LOGIN_WINDOW)
            .map(|w| w.n)
    }
    fn age(&self, key: &str) -> Duration {
        self.0
            .get(key)
            .map(|w| w.since.elapsed())
            .unwrap_or_default()
    }
    fn bump(&mut self, key: &str) {
        if !self.0.contains_key(key) && self.0.len() >= LIMITER_CAP {
            self.0.retain(|_, w| w.since.elapsed() < LOGIN_WINDOW);
            if self.0.len() >= LIMITER_CAP {
                if let Some(k) = self
                    .0
                    .iter()
                    .min_by_key(|(_, w)| w.since)
                    .map(|(k, _)| k.clone())
                {
                    self.0.remove(&k);
                }
            }
        }
        let w = self.0.entry(key.to_string()).or_insert(Window {
            n: 0,
            since: Instant::now(),
        });
        if w.since.elapsed() >= LOGIN_WINDOW {
            *w = Window {
                n: 0,
                since: Instant::now(),
            };
        }
        w.n += 1;
    }
}

#[derive(Default)]
struct Tables {
    /// Key `user \0 address`.
    pairs: Windows,
    /// Key `user`.
    users: Windows,
}

/// Failed logins per (user, client address) and per user, in bounded tables; and the gate on
/// concurrent password hashes.
pub struct Limiter {
    t: Mutex<Tables>,
    hashes: tokio::sync::Semaphore,
    waiting: AtomicUsize,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            t: Mutex::default(),
            hashes: tokio::sync::Semaphore::new(HASH_CONCURRENCY),
            waiting: AtomicUsize::new(0),
        }
    }
}

fn pair_key(user: &str, ip: &str) -> String {
    format!("{user}\0{ip}")
}

impl Limiter {
    pub fn check(&self, user: &str, ip: &str) -> Gate {
        let t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        let k = pair_key(user, ip);
        if t.pairs.get(&k).is_some_and(|n| n >= LOGIN_MAX_FAILURES) {
            return Gate::Locked(LOGIN_WINDOW.saturating_sub(t.pairs.age(&k)));
        }
        if t.users.get(user).is_some_and(|n| n >= USER_SLOW_AFTER) {
            return Gate::Slow(USER_SLOW_DELAY);
        }
        Gate::Open
    }
    pub fn fail(&self, user: &str, ip: &str) {
        let mut t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        t.pairs.bump(&pair_key(user, ip));
        t.users.bump(user);
    }
    /// A right password: this address's failures for the user are forgotten (the user's
    /// total is not: an attacker elsewhere is still guessing).
    pub fn clear(&self, user: &str, ip: &str) {
        let mut t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        t.pairs.0.remove(&pair_key(user, ip));
    }
    /// Keys held (pairs, users).
    pub fn sizes(&self) -> (usize, usize) {
        let t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        (t.pairs.0.len(), t.users.0.len())
    }
    /// A slot to hash a password in: waits up to [`HASH_WAIT`] behind at most [`HASH_QUEUE`]
    /// others, else 503 with `Retry-After`.
    pub async fn hashing(&self) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(p) = self.hashes.try_acquire() {
            return Ok(p);
        }
        let busy = || {
            let mut e = ApiError::unavailable(
                "the server is busy checking other passwords: try again in a second",
            );
            e.retry_after = Some(1);
            e
        };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= HASH_QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        let r = tokio::time::timeout(HASH_WAIT, self.hashes.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match r {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_pair_locks_after_five_failures_and_others_are_not_locked_out() {
        let l = Limiter::default();
        for _ in 0..LOGIN_MAX_FAILURES {
            assert_eq!(l.check("ann", "10.0.0.1"), Gate::Open);
            l.fail("ann", "10.0.0.1");
        }
        assert!(
            matches!(l.check("ann", "10.0.0.1"), Gate::Locked(d) if d > Duration::from_secs(290))
        );
        assert_eq!(l.check("ann", "10.0.0.2"), Gate::Open, "another address");
        assert_eq!(l.check("bob", "10.0.0.1"), Gate::Open, "another user");
    }

    #[test]
    fn many_addresses_slow_a_user_down_but_never_lock_it() {
        let l = Limiter::default();
        for i in 0..USER_SLOW_AFTER {
            l.fail("ann", &format!("10.0.{i}.1"));
        }
        assert_eq!(l.check("ann", "192.168.1.1"), Gate::Slow(USER_SLOW_DELAY));
        assert_eq!(l.check("bob", "192.168.1.1"), Gate::Open);
        l.clear("ann", "192.168.1.1");
        assert_eq!(l.check("ann", "192.168.1.1"), Gate::Slow(USER_SLOW_DELAY));
    }

    #[test]
    fn the_tables_are_bounded() {
        let l = Limiter::default();
        for i in 0..LIMITER_CAP + 500 {
            l.fail(&format!("u{i}"), "10.0.0.1");
        }
        let (pairs, users) = l.sizes();
        assert!(
            pairs <= LIMITER_CAP && users <= LIMITER_CAP,
            "{pairs} {users}"
        );
        // The newest key is there, the oldest went.
        let t = l.t.lock().unwrap();
        assert!(t.users.get(&format!("u{}", LIMITER_CAP + 499)).is_some());
        assert!(t.users.get("u0").is_none());
    }

    #[tokio::test]
    async fn hashing_slots_are_capped_and_excess_is_refused() {
        let l = Arc::new(Limiter::default());
        let held: Vec<_> = (0..HASH_CONCURRENCY)
            .map(|_| l.hashes.try_acquire().unwrap())
            .collect();
        // The queue fills; one more is refused at once with Retry-After.
        let mut waiters = Vec::new();
        for _ in 0..HASH_QUEUE {
            let l = l.clone();
            waiters.push(tokio::spawn(async move { l.hashing().await.map(|_| ()) }));
        }
        while l.waiting.load(Ordering::SeqCst) < HASH_QUEUE {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        let e = l.hashing().await.expect_err("refused");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        assert!(t0.elapsed() < Duration::from_millis(100));
        drop(held);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
    }

    #[test]
    fn login_input_is_bounded_before_hashing() {
        assert!(check_login_input(&"a".repeat(64), &"p".repeat(1024)).is_ok());
        let e = check_login_input(&"a".repeat(65), "x").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = check_login_input("ann", &"p".repeat(1_000_000)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("at most 1024"), "{}", e.message);
    }

    #[test]
    fn users_without_a_password_take_as_long_as_unknown_ones() {
        let dummy = hash_password("dummy-password").unwrap();
        let time = |phc: Option<&str>| {
            let t0 = Instant::now();
            assert!(!verify_or_dummy("guess-guess", phc, &dummy));
            t0.elapsed()
        };
        // Both run one argon2 verification (milliseconds), not a failed parse (microseconds);
        // compared with a real user's wrong password, not with each other (a loaded machine
        // makes ratios noisy).
        let real = hash_password("the-real-password").unwrap();
        let (unknown, oidc, known) = (time(None), time(Some("!oidc")), time(Some(&real)));
        for t in [unknown, oidc] {
            assert!(t * 10 > known, "{t:?} vs a real user's {known:?}");
        }
    }

    #[test]
    fn tickets_are_single_use_and_need_a_stored_user() {
        let s = Sessions::default();
        let user = User {
            name: "ann".into(),
            role: Role::Member,
            max_vms: None,
            max_memory_mib: None,
            max_disk_mib: None,
            created_ms: 0,
        };
        let caller = Caller {
            user: user.clone(),
            local: false,
            cred: Credential::Access {
                gen: "g1".into(),
                exp: 1,
            },
        };
        let t = s.issue(&caller).unwrap();
        assert_eq!(s.redeem(&t), Some(("ann".into(), caller.cred.clone())));
        assert_eq!(s.redeem(&t), None, "used once");
        assert_eq!(s.redeem("made-up"), None);
        let root = Caller {
            user,
            local: true,
            cred: Credential::Local,
        };
        assert!(s.issue(&root).is_err());
    }
}
