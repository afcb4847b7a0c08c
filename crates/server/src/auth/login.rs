//! Login and refresh: the rate-limited password check, the [`TokenPair`] a login answers
//! with, and refresh-token rotation and logout.

use std::time::Duration;

use axum::http::StatusCode;
use kobako_state::{now_ms, Db};
use serde::Serialize;
use utoipa::ToSchema;

use super::jwt::ACCESS_TTL;
use super::limiter::Gate;
use super::passwords::{check_login_input, verify_or_dummy};
use super::secrets::{random_token, token_hash};
use super::users::{get_user, password_hash_of, user_gen, User};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Lifetime of a refresh token.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

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
    db.insert_refresh_token(
        &token_hash(&refresh),
        &user.name,
        now,
        now + REFRESH_TTL.as_millis() as i64,
    )?;
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
    let Some(kobako_state::RefreshTokenRow {
        user,
        expires_ms: exp,
        revoked,
    }) = db.refresh_token(&h)?
    else {
        return Err(ApiError::unauthorized(
            "refresh token not known: log in again",
        ));
    };
    if revoked {
        db.revoke_refresh_tokens_of(&user)?;
        return Err(ApiError::unauthorized(
            "refresh token was already used or revoked; every session of this user was ended: log in again",
        ));
    }
    if exp < now_ms() {
        return Err(ApiError::unauthorized(
            "refresh token expired: log in again",
        ));
    }
    if !db.revoke_refresh_token(&h)? {
        return Err(ApiError::unauthorized(
            "refresh token was just used: log in again",
        ));
    }
    let u = get_user(db, &user)?.ok_or_else(|| ApiError::unauthorized("user was removed"))?;
    issue_pair(state, db, u)
}

/// Revokes a refresh token (logout). Unknown tokens are fine (idempotent).
pub fn logout(db: &Db, token: &str) -> ApiResult<()> {
    db.end_refresh_token(&token_hash(token))?;
    Ok(())
}
