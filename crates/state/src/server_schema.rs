//! The API server's tables in the shared database (migration components `server` and
//! `tenancy`): `users`, `refresh_tokens`, `api_tokens`, `operations` and `audit`. Their rows are
//! read and written through the functions of [`crate::users`], [`crate::tokens`],
//! [`crate::operations`] and [`crate::audit`]; the server runs no SQL of its own.

use crate::{Db, Result};

/// Migrations of component `server`.
const SERVER_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users(
    name            TEXT PRIMARY KEY,
    hash            TEXT NOT NULL,
    role            TEXT NOT NULL,
    max_vms         INTEGER,
    max_memory_mib  INTEGER,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL
);
CREATE TABLE refresh_tokens(
    hash        TEXT PRIMARY KEY,
    user        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE api_tokens(
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    user        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER,
    last_used_ms INTEGER,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE operations(
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    lab         TEXT,
    user        TEXT NOT NULL,
    state       TEXT NOT NULL,
    progress    TEXT NOT NULL DEFAULT '[]',
    result      TEXT,
    error       TEXT,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE audit(
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms       INTEGER NOT NULL,
    user        TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      INTEGER NOT NULL,
    detail      TEXT
);
"#,
    r#"
-- OpenID Connect: the issuer's subject a user is bound to (NULL: a local user).
ALTER TABLE users ADD COLUMN oidc_subject TEXT;
"#,
    r#"
-- A random value per user row, carried in access tokens: a user removed and created again
-- under the same name, or whose password changed, does not accept older access tokens.
-- Made by a trigger so every INSERT gets one (password users, OIDC sign-ins).
ALTER TABLE users ADD COLUMN token_gen TEXT;
UPDATE users SET token_gen = lower(hex(randomblob(16))) WHERE token_gen IS NULL;
CREATE TRIGGER users_token_gen AFTER INSERT ON users WHEN NEW.token_gen IS NULL
BEGIN
    UPDATE users SET token_gen = lower(hex(randomblob(16))) WHERE name = NEW.name;
END;
"#,
];

/// Migrations of component `tenancy` (after [`SERVER_MIGRATIONS`]; a component of their own so
/// they never race other steps for a version number).
const TENANCY_MIGRATIONS: &[&str] = &[r#"
-- Most MiB of disk a user's checkpoints and captures may take (NULL: no limit).
ALTER TABLE users ADD COLUMN max_disk_mib INTEGER;
CREATE INDEX IF NOT EXISTS operations_lab ON operations(lab);
CREATE INDEX IF NOT EXISTS operations_user ON operations(user);
"#];

impl Db {
    /// Creates (or brings up to date) the server's tables: components `server`, then `tenancy`.
    pub fn migrate_server(&self) -> Result<()> {
        self.migrate("server", SERVER_MIGRATIONS)?;
        self.migrate("tenancy", TENANCY_MIGRATIONS)
    }

    /// SQLite's `data_version` as seen by this connection: it changes when another connection
    /// (or process) commits, so readers can tell whether what they cached is still current.
    pub fn data_version(&self) -> Result<i64> {
        self.conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(self.err())
    }
}
