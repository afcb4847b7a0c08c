//! Rows of the server's `refresh_tokens` and `api_tokens` tables. Only SHA-256 hashes of the
//! secrets are stored; making secrets and hashing them is the server's.

use rusqlite::{params, OptionalExtension};

use crate::{now_ms, Db, Result};

/// An API token row (without its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked: bool,
}

/// A refresh token row, found by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRow {
    pub user: String,
    pub expires_ms: i64,
    pub revoked: bool,
}

const API_TOKEN_COLS: &str = "id, user, name, created_ms, expires_ms, last_used_ms, revoked";

fn api_token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: r.get(0)?,
        user: r.get(1)?,
        name: r.get(2)?,
        created_ms: r.get(3)?,
        expires_ms: r.get(4)?,
        last_used_ms: r.get(5)?,
        revoked: r.get(6)?,
    })
}

impl Db {
    // ---- API tokens ------------------------------------------------------------------------

    /// Stores a new API token (`hash` is the secret's hash).
    pub fn insert_api_token(&self, t: &ApiTokenRow, hash: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO api_tokens(id, hash, user, name, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.id, hash, t.user, t.name, t.created_ms, t.expires_ms],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// API tokens (of `user`, or everyone's), oldest first.
    pub fn api_tokens(&self, user: Option<&str>) -> Result<Vec<ApiTokenRow>> {
        let c = self.conn();
        let mut st = c
            .prepare(&format!(
                "SELECT {API_TOKEN_COLS} FROM api_tokens
                 WHERE ?1 IS NULL OR user = ?1 ORDER BY created_ms"
            ))
            .map_err(self.err())?;
        let rows = st
            .query_map(params![user], api_token_from_row)
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// The API token with id `id`.
    pub fn api_token(&self, id: &str) -> Result<Option<ApiTokenRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {API_TOKEN_COLS} FROM api_tokens WHERE id = ?1"),
                params![id],
                api_token_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// The API token whose secret hashes to `hash`.
    pub fn api_token_by_hash(&self, hash: &str) -> Result<Option<ApiTokenRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {API_TOKEN_COLS} FROM api_tokens WHERE hash = ?1"),
                params![hash],
                api_token_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// Revokes API token `id` (only if it is `owner`'s, when given); `false` when none matched.
    pub fn revoke_api_token(&self, id: &str, owner: Option<&str>) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE api_tokens SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR user = ?2)",
                params![id, owner],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Records that API token `id` was used now, at most once a minute (no write per request).
    pub fn touch_api_token(&self, id: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1
                 AND (last_used_ms IS NULL OR last_used_ms < ?2 - 60000)",
                params![id, now_ms()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    // ---- refresh tokens --------------------------------------------------------------------

    /// Stores a new refresh token of `user` (`hash` is the secret's hash).
    pub fn insert_refresh_token(
        &self,
        hash: &str,
        user: &str,
        created_ms: i64,
        expires_ms: i64,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO refresh_tokens(hash, user, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![hash, user, created_ms, expires_ms],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The refresh token whose secret hashes to `hash`.
    pub fn refresh_token(&self, hash: &str) -> Result<Option<RefreshTokenRow>> {
        self.conn()
            .query_row(
                "SELECT user, expires_ms, revoked FROM refresh_tokens WHERE hash = ?1",
                params![hash],
                |r| {
                    Ok(RefreshTokenRow {
                        user: r.get(0)?,
                        expires_ms: r.get(1)?,
                        revoked: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    /// Revokes the refresh token with hash `hash`; `false` when it was revoked already (or is
    /// not known), so of two concurrent uses only one wins.
    pub fn revoke_refresh_token(&self, hash: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE hash = ?1 AND revoked = 0",
                params![hash],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Revokes the refresh token with hash `hash` whatever its state (logout).
    pub fn end_refresh_token(&self, hash: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE hash = ?1",
                params![hash],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Revokes every refresh token of `user`.
    pub fn revoke_refresh_tokens_of(&self, user: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE user = ?1",
                params![user],
            )
            .map_err(self.err())?;
        Ok(())
    }
}
