//! The server's tables (migration component `server` in the shared state database) and a small
//! pool of connections so concurrent requests do not queue on one SQLite connection.
//!
//! Tables: `users` (argon2id hashes, role, quotas), `refresh_tokens` and `api_tokens` (only
//! SHA-256 hashes of the random secrets are stored), `operations` (long-running calls and their
//! progress), `audit` (every mutating call: who, what, when, result).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kobako_state::Db;

use crate::error::{ApiError, ApiResult};

pub const SERVER_MIGRATIONS: &[&str] = &[
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
pub const TENANCY_MIGRATIONS: &[&str] = &[r#"
-- Most MiB of disk a user's checkpoints and captures may take (NULL: no limit).
ALTER TABLE users ADD COLUMN max_disk_mib INTEGER;
CREATE INDEX IF NOT EXISTS operations_lab ON operations(lab);
CREATE INDEX IF NOT EXISTS operations_user ON operations(user);
"#];

/// A few connections to the state database, handed out round-robin. Every call runs on the
/// blocking pool ([`Pool::run`]) so SQLite never blocks the async workers.
#[derive(Clone)]
pub struct Pool {
    dbs: Arc<Vec<Arc<Db>>>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    pub fn open(dir: &Path, size: usize) -> kobako_state::Result<Pool> {
        let mut dbs = Vec::new();
        for _ in 0..size.max(1) {
            let db = Db::open_in(dir)?;
            db.migrate("server", SERVER_MIGRATIONS)?;
            db.migrate("tenancy", TENANCY_MIGRATIONS)?;
            dbs.push(Arc::new(db));
        }
        Ok(Pool {
            dbs: Arc::new(dbs),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// One connection (for synchronous callers: admin commands, startup).
    pub fn get(&self) -> Arc<Db> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.dbs.len();
        self.dbs[i].clone()
    }

    /// Runs `f` with a connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> ApiResult<T> + Send + 'static,
    {
        let db = self.get();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(ApiError::internal)?
    }
}

/// `rusqlite` errors as internal API errors.
pub fn sql(e: kobako_state::rusqlite::Error) -> ApiError {
    ApiError::internal(format!("state database: {e}"))
}
