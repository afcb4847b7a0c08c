//! The `labs` table: a lab's desired spec (the resolved lab as JSON), its state and reason,
//! its owner; [`LabState`] and [`LabRow`], and the `Db` queries on them.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::{now_ms, Db, Result, StateError};

/// State of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabState {
    Pending,
    Starting,
    /// Every VM ready.
    Ready,
    /// Up, but some VMs failed or stopped.
    Degraded,
    /// `up` failed before any VM could start (network, bad image, ...).
    Failed,
    Stopping,
    Stopped,
}

str_enum!(LabState { Pending => "pending", Starting => "starting", Ready => "ready", Degraded => "degraded", Failed => "failed", Stopping => "stopping", Stopped => "stopped" });

/// A stored lab.
#[derive(Debug, Clone, Serialize)]
pub struct LabRow {
    pub name: String,
    /// The lab file it came from, if any.
    pub file: Option<String>,
    /// The resolved lab (JSON of `kobako_lab::spec::Lab`).
    pub spec: serde_json::Value,
    pub state: LabState,
    pub reason: Option<String>,
    /// User who owns it (the server's users; `None` = created locally by root).
    pub owner: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Db {
    /// Inserts or replaces a lab's desired spec (keeps its VMs' rows and creation time).
    pub fn put_lab(
        &self,
        name: &str,
        file: Option<&str>,
        spec: &serde_json::Value,
        owner: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        self.conn()
            .execute(
                "INSERT INTO labs(name, file, spec, state, owner, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?5)
                 ON CONFLICT(name) DO UPDATE SET file = excluded.file, spec = excluded.spec,
                     owner = COALESCE(labs.owner, excluded.owner), updated_ms = excluded.updated_ms",
                params![name, file, spec.to_string(), owner, now],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn lab_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LabRow, String)> {
        let spec: String = r.get(2)?;
        let state: String = r.get(3)?;
        Ok((
            LabRow {
                name: r.get(0)?,
                file: r.get(1)?,
                spec: serde_json::Value::Null,
                state: LabState::parse(&state).unwrap_or(LabState::Failed),
                reason: r.get(4)?,
                owner: r.get(5)?,
                created_ms: r.get(6)?,
                updated_ms: r.get(7)?,
            },
            spec,
        ))
    }

    fn finish_lab((mut row, spec): (LabRow, String)) -> Result<LabRow> {
        row.spec = serde_json::from_str(&spec).map_err(|source| StateError::Json {
            what: format!("spec of lab '{}'", row.name),
            source,
        })?;
        Ok(row)
    }

    const LAB_COLS: &'static str = "name, file, spec, state, reason, owner, created_ms, updated_ms";

    pub fn lab(&self, name: &str) -> Result<Option<LabRow>> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {} FROM labs WHERE name = ?1", Self::LAB_COLS),
                params![name],
                Self::lab_from_row,
            )
            .optional()
            .map_err(self.err())?;
        row.map(Self::finish_lab).transpose()
    }

    pub fn labs(&self) -> Result<Vec<LabRow>> {
        let rows = {
            let c = self.conn();
            let mut st = c
                .prepare(&format!(
                    "SELECT {} FROM labs ORDER BY name",
                    Self::LAB_COLS
                ))
                .map_err(self.err())?;
            let it = st.query_map([], Self::lab_from_row).map_err(self.err())?;
            it.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.err())?
        };
        rows.into_iter().map(Self::finish_lab).collect()
    }

    /// Sets a lab's state (and records a `lab.state` event when it changed).
    pub fn set_lab_state(&self, name: &str, state: LabState, reason: Option<&str>) -> Result<()> {
        let changed = self
            .conn()
            .execute(
                "UPDATE labs SET state = ?2, reason = ?3, updated_ms = ?4
                 WHERE name = ?1 AND (state IS NOT ?2 OR reason IS NOT ?3)",
                params![name, state.as_str(), reason, now_ms()],
            )
            .map_err(self.err())?;
        if changed > 0 {
            self.event(
                Some(name),
                None,
                "lab.state",
                &serde_json::json!({"state": state, "reason": reason}),
            )?;
        }
        Ok(())
    }

    /// Removes a lab and everything stored about it (VMs, links; events stay).
    pub fn delete_lab(&self, name: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM labs WHERE name = ?1", params![name])
            .map_err(self.err())?;
        Ok(n > 0)
    }
}
