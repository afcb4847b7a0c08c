//! API tokens (`kbk_...`) for scripts: create, list, revoke, and look one up as a credential.

use kobako_state::rusqlite::{params, OptionalExtension};
use kobako_state::{now_ms, Db};
use serde::Serialize;
use utoipa::ToSchema;

use super::secrets::{random_token, token_hash};
use crate::db::sql;
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
pub(super) fn token_user(db: &Db, secret: &str) -> ApiResult<(String, String)> {
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
