//! Rows of the server's `users` table: who may sign in, with which role and quotas, the
//! password hash, the `token_gen` that access tokens carry, and the OpenID Connect subject a
//! user is bound to. Name, password and quota rules are the server's; this module only stores.

use rusqlite::{params, OptionalExtension};

use crate::{now_ms, Db, Result};

/// A user row as the server shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    /// `admin`, `member` or `viewer`.
    pub role: String,
    pub max_vms: Option<i64>,
    pub max_memory_mib: Option<i64>,
    pub max_disk_mib: Option<i64>,
    pub created_ms: i64,
}

/// A new user with a password.
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    pub name: &'a str,
    /// The password's PHC hash.
    pub hash: &'a str,
    pub role: &'a str,
    pub max_vms: Option<i64>,
    pub max_memory_mib: Option<i64>,
}

const USER_COLS: &str = "name, role, max_vms, max_memory_mib, created_ms, max_disk_mib";

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        name: r.get(0)?,
        role: r.get(1)?,
        max_vms: r.get(2)?,
        max_memory_mib: r.get(3)?,
        created_ms: r.get(4)?,
        max_disk_mib: r.get(5)?,
    })
}

impl Db {
    pub fn user(&self, name: &str) -> Result<Option<UserRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE name = ?1"),
                params![name],
                user_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserRow>> {
        let c = self.conn();
        let mut st = c
            .prepare(&format!("SELECT {USER_COLS} FROM users ORDER BY name"))
            .map_err(self.err())?;
        let rows = st.query_map([], user_from_row).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    pub fn count_users(&self) -> Result<i64> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// Inserts a user; `false` when the name is taken (nothing changed then).
    pub fn insert_user(&self, u: &NewUser<'_>) -> Result<bool> {
        let now = now_ms();
        let n = self
            .conn()
            .execute(
                "INSERT INTO users(name, hash, role, max_vms, max_memory_mib, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(name) DO NOTHING",
                params![u.name, u.hash, u.role, u.max_vms, u.max_memory_mib, now],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Inserts a user bound to OpenID Connect subject `sub`, with no usable password, created
    /// at `now_ms`.
    pub fn insert_oidc_user(&self, name: &str, role: &str, sub: &str, now_ms: i64) -> Result<()> {
        // No password: "!" is not a PHC string, so password logins always fail.
        self.conn()
            .execute(
                "INSERT INTO users(name, hash, role, created_ms, updated_ms, oidc_subject)
                 VALUES (?1, '!oidc', ?2, ?3, ?3, ?4)",
                params![name, role, now_ms, sub],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The OpenID Connect subject of user `name`: `None` when there is no such user,
    /// `Some(None)` for a local user.
    pub fn user_oidc_subject(&self, name: &str) -> Result<Option<Option<String>>> {
        self.conn()
            .query_row(
                "SELECT oidc_subject FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    /// Sets (or with `None` removes) a user's disk quota; `false` when there is no such user.
    pub fn set_user_disk_quota(&self, name: &str, max_disk_mib: Option<i64>) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE users SET max_disk_mib = ?2, updated_ms = ?3 WHERE name = ?1",
                params![name, max_disk_mib, now_ms()],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Stores a user's role and VM/memory quotas.
    pub fn update_user(
        &self,
        name: &str,
        role: &str,
        max_vms: Option<i64>,
        max_memory_mib: Option<i64>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE users SET role = ?2, max_vms = ?3, max_memory_mib = ?4, updated_ms = ?5
                 WHERE name = ?1",
                params![name, role, max_vms, max_memory_mib, now_ms()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Deletes a user (their tokens go with the row); `false` when there was none.
    pub fn delete_user(&self, name: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM users WHERE name = ?1", params![name])
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Stores a new password hash for `name`; `false` when there is no such user (nothing
    /// changed). With `new_token_gen`, in the same transaction, the user's `token_gen` becomes
    /// that value and every refresh and API token of theirs is revoked.
    pub fn set_user_password(
        &self,
        name: &str,
        hash: &str,
        new_token_gen: Option<&str>,
    ) -> Result<bool> {
        let e = self.err();
        let mut c = self.conn();
        let tx = c.transaction().map_err(&e)?;
        let n = tx
            .execute(
                "UPDATE users SET hash = ?2, updated_ms = ?3 WHERE name = ?1",
                params![name, hash, now_ms()],
            )
            .map_err(&e)?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(gen) = new_token_gen {
            tx.execute(
                "UPDATE users SET token_gen = ?2 WHERE name = ?1",
                params![name, gen],
            )
            .map_err(&e)?;
            tx.execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE user = ?1",
                params![name],
            )
            .map_err(&e)?;
            tx.execute(
                "UPDATE api_tokens SET revoked = 1 WHERE user = ?1",
                params![name],
            )
            .map_err(&e)?;
        }
        tx.commit().map_err(&e)?;
        Ok(true)
    }

    /// The user's `token_gen` (`None`: no such user).
    pub fn user_token_gen(&self, name: &str) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT token_gen FROM users WHERE name = ?1",
                params![name],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.err())
    }

    /// The user's password hash (`None`: no such user).
    pub fn user_password_hash(&self, name: &str) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT hash FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }
}
