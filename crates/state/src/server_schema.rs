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

#[cfg(test)]
mod tests {
    use crate::{ApiTokenRow, Db, NewAudit, NewUser};

    #[test]
    fn users_tokens_operations_and_audit_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        db.migrate_server().unwrap();
        db.migrate_server().unwrap();
        let ann = NewUser {
            name: "ann",
            hash: "h1",
            role: "member",
            max_vms: Some(2),
            max_memory_mib: None,
        };
        assert!(db.insert_user(&ann).unwrap());
        assert!(!db.insert_user(&ann).unwrap(), "a taken name is refused");
        assert_eq!(db.count_users().unwrap(), 1);
        assert_eq!(db.user("ann").unwrap().unwrap().max_vms, Some(2));
        let gen = db.user_token_gen("ann").unwrap().unwrap();
        assert_eq!(gen.len(), 32, "the trigger gives every new row a token_gen");

        let tok = ApiTokenRow {
            id: "t1".into(),
            user: "ann".into(),
            name: "ci".into(),
            created_ms: 1,
            expires_ms: None,
            last_used_ms: None,
            revoked: false,
        };
        db.insert_api_token(&tok, "th").unwrap();
        assert_eq!(db.api_token_by_hash("th").unwrap().unwrap(), tok);
        db.insert_refresh_token("rh", "ann", 1, i64::MAX).unwrap();
        assert!(db.revoke_refresh_token("rh").unwrap());
        assert!(!db.revoke_refresh_token("rh").unwrap(), "single use");

        // A password change with new_token_gen ends every session.
        db.insert_refresh_token("rh2", "ann", 1, i64::MAX).unwrap();
        assert!(db.set_user_password("ann", "h2", Some("g2")).unwrap());
        assert_eq!(db.user_password_hash("ann").unwrap().as_deref(), Some("h2"));
        assert_eq!(db.user_token_gen("ann").unwrap().as_deref(), Some("g2"));
        assert!(db.api_token("t1").unwrap().unwrap().revoked);
        assert!(db.refresh_token("rh2").unwrap().unwrap().revoked);
        assert!(!db.set_user_password("bob", "h", None).unwrap());

        db.insert_operation("op1", "lab.up", Some("l1"), "ann")
            .unwrap();
        db.push_operation_progress("op1", &serde_json::json!({"ts_ms": 5, "message": "a"}), 5)
            .unwrap();
        assert_eq!(db.running_operations_of("ann").unwrap(), ["op1"]);
        db.finish_operation("op1", "succeeded", Some(&serde_json::json!({"x": 1})), None)
            .unwrap();
        let op = db.operation("op1").unwrap().unwrap();
        assert_eq!(op.progress[0]["message"], "a");
        assert_eq!(op.result.unwrap()["x"], 1);
        assert!(db.running_operations_of("ann").unwrap().is_empty());
        db.delete_operations_of("ann", true).unwrap();
        assert!(db.operations(None, 10).unwrap().is_empty());

        db.insert_audit(&NewAudit {
            ts_ms: 7,
            user: "ann",
            method: "POST",
            path: "/x",
            status: 201,
            detail: None,
        })
        .unwrap();
        let a = db.audit_before(i64::MAX, 10).unwrap();
        assert_eq!((a[0].status, a[0].path.as_str()), (201, "/x"));

        assert!(db.delete_user("ann").unwrap());
        assert!(
            db.api_tokens(None).unwrap().is_empty(),
            "tokens go with the user"
        );
    }
}
