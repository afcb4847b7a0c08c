//! Rows of the server's `operations` table: long-running calls (lab up/down/restart, scenario
//! runs, image builds, ...), their progress lines (a JSON array) and result, and what goes with
//! a lab or a user. Running the operations is the server's.

use rusqlite::{params, OptionalExtension};

use crate::{now_ms, Db, Result};

/// A stored operation.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    pub id: String,
    pub kind: String,
    pub lab: Option<String>,
    pub user: String,
    /// `running`, `succeeded`, `failed`, `cancelled` or `interrupted`.
    pub state: String,
    /// The progress lines (a JSON array; `Null` when the stored text is not JSON).
    pub progress: serde_json::Value,
    /// The result, when there is one and it is JSON.
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

const OP_COLS: &str = "id, kind, lab, user, state, progress, result, error, created_ms, updated_ms";

fn op_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperationRow> {
    let progress: String = r.get(5)?;
    let result: Option<String> = r.get(6)?;
    Ok(OperationRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        lab: r.get(2)?,
        user: r.get(3)?,
        state: r.get(4)?,
        progress: serde_json::from_str(&progress).unwrap_or_default(),
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
        error: r.get(7)?,
        created_ms: r.get(8)?,
        updated_ms: r.get(9)?,
    })
}

impl Db {
    pub fn operation(&self, id: &str) -> Result<Option<OperationRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {OP_COLS} FROM operations WHERE id = ?1"),
                params![id],
                op_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// The newest operations (of `user` when given), at most `limit`.
    pub fn operations(&self, user: Option<&str>, limit: i64) -> Result<Vec<OperationRow>> {
        let c = self.conn();
        let mut st = c
            .prepare(&format!(
                "SELECT {OP_COLS} FROM operations WHERE ?1 IS NULL OR user = ?1
                 ORDER BY created_ms DESC LIMIT ?2"
            ))
            .map_err(self.err())?;
        let rows = st
            .query_map(params![user, limit], op_from_row)
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// Stores a new `running` operation.
    pub fn insert_operation(
        &self,
        id: &str,
        kind: &str,
        lab: Option<&str>,
        user: &str,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO operations(id, kind, lab, user, state, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?5)",
                params![id, kind, lab, user, now_ms()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Appends `line` (a JSON value) to the operation's progress, updated at `ts_ms`.
    pub fn push_operation_progress(
        &self,
        id: &str,
        line: &serde_json::Value,
        ts_ms: i64,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE operations SET progress = json_insert(progress, '$[#]', json(?2)), updated_ms = ?3
                 WHERE id = ?1",
                params![id, line.to_string(), ts_ms],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Ends an operation in `state` with its result and error.
    pub fn finish_operation(
        &self,
        id: &str,
        state: &str,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<()> {
        let result = result.map(|v| v.to_string());
        self.conn()
            .execute(
                "UPDATE operations SET state = ?2, result = ?3, error = ?4, updated_ms = ?5 WHERE id = ?1",
                params![id, state, result, error, now_ms()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Marks every `running` operation `interrupted` (the server stopped during it); how many.
    pub fn interrupt_running_operations(&self) -> Result<usize> {
        self.conn()
            .execute(
                "UPDATE operations SET state = 'interrupted', error = 'the server stopped during this operation', updated_ms = ?1 WHERE state = 'running'",
                params![now_ms()],
            )
            .map_err(self.err())
    }

    /// Ids of the operations `user` started that still run.
    pub fn running_operations_of(&self, user: &str) -> Result<Vec<String>> {
        let c = self.conn();
        let mut q = c
            .prepare("SELECT id FROM operations WHERE user = ?1 AND state = 'running'")
            .map_err(self.err())?;
        let ids = q
            .query_map(params![user], |r| r.get::<_, String>(0))
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err());
        ids
    }

    /// Deletes the operations `user` started: all of them, or with `finished_only` those that
    /// no longer run.
    pub fn delete_operations_of(&self, user: &str, finished_only: bool) -> Result<()> {
        let sql = if finished_only {
            "DELETE FROM operations WHERE user = ?1 AND state != 'running'"
        } else {
            "DELETE FROM operations WHERE user = ?1"
        };
        self.conn()
            .execute(sql, params![user])
            .map_err(self.err())?;
        Ok(())
    }

    /// Deletes lab `name` with its events and operations in one transaction (its VM and link
    /// rows go with the lab row: ON DELETE CASCADE).
    pub fn forget_lab(&self, name: &str) -> Result<()> {
        let e = self.err();
        let mut c = self.conn();
        let tx = c.transaction().map_err(&e)?;
        tx.execute("DELETE FROM events WHERE lab = ?1", params![name])
            .map_err(&e)?;
        tx.execute("DELETE FROM operations WHERE lab = ?1", params![name])
            .map_err(&e)?;
        tx.execute("DELETE FROM labs WHERE name = ?1", params![name])
            .map_err(&e)?;
        tx.commit().map_err(&e)
    }
}
