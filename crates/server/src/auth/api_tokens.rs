//! API tokens (`kbk_...`) for scripts: create, list, revoke, and look one up as a credential.

use kobako_state::{now_ms, ApiTokenRow, Db};
use serde::Serialize;
use utoipa::ToSchema;

use super::secrets::{random_token, token_hash};
use crate::error::{ApiError, ApiResult};

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

impl From<ApiTokenRow> for ApiToken {
    fn from(r: ApiTokenRow) -> ApiToken {
        ApiToken {
            id: r.id,
            user: r.user,
            name: r.name,
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            last_used_ms: r.last_used_ms,
            revoked: r.revoked,
        }
    }
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
    let row = ApiTokenRow {
        id,
        user: user.into(),
        name: name.into(),
        created_ms: now,
        expires_ms: expires,
        last_used_ms: None,
        revoked: false,
    };
    db.insert_api_token(&row, &token_hash(&secret))?;
    Ok((row.into(), secret))
}

pub fn list_tokens(db: &Db, user: Option<&str>) -> ApiResult<Vec<ApiToken>> {
    Ok(db
        .api_tokens(user)?
        .into_iter()
        .map(ApiToken::from)
        .collect())
}

/// Revokes token `id`; `owner` limits it to that user's tokens (members).
pub fn revoke_token(db: &Db, id: &str, owner: Option<&str>) -> ApiResult<()> {
    if !db.revoke_api_token(id, owner)? {
        return Err(ApiError::not_found(format!("no token '{id}'")));
    }
    Ok(())
}

/// (token id, user) of a valid API token.
pub(super) fn token_user(db: &Db, secret: &str) -> ApiResult<(String, String)> {
    match db.api_token_by_hash(&token_hash(secret))? {
        None => Err(ApiError::unauthorized("API token not known")),
        Some(t) if t.revoked => Err(ApiError::unauthorized("API token was revoked")),
        Some(ApiTokenRow {
            expires_ms: Some(e),
            ..
        }) if e < now_ms() => Err(ApiError::unauthorized(
            "API token expired: create a new one",
        )),
        Some(t) => {
            // Recorded at most once a minute per token (no write per request).
            let _ = db.touch_api_token(&t.id);
            Ok((t.id, t.user))
        }
    }
}
