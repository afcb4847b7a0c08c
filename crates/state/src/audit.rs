//! Rows of the server's `audit` table: every mutating API call (who, what, when, result). The
//! log is only appended to; it stays when users and labs go.

use rusqlite::params;

use crate::{Db, Result};

/// One audit entry as listed (the detail is not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub ts_ms: i64,
    pub user: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// An entry to append.
#[derive(Debug, Clone, Copy)]
pub struct NewAudit<'a> {
    pub ts_ms: i64,
    pub user: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub detail: Option<&'a str>,
}

impl Db {
    /// Appends an audit entry.
    pub fn insert_audit(&self, a: &NewAudit<'_>) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO audit(ts_ms, user, method, path, status, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![a.ts_ms, a.user, a.method, a.path, a.status, a.detail],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The newest entries with an id below `before`, newest first, at most `limit`.
    pub fn audit_before(&self, before: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let c = self.conn();
        let mut s = c
            .prepare(
                "SELECT id, ts_ms, user, method, path, status FROM audit WHERE id < ?1
                 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = s
            .query_map(params![before, limit], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    ts_ms: r.get(1)?,
                    user: r.get(2)?,
                    method: r.get(3)?,
                    path: r.get(4)?,
                    status: r.get(5)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }
}
