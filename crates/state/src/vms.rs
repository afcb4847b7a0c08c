//! The `vms` table: one row per declared VM of a lab (`<lab>.<node>.<vm>`) with the state,
//! reason and boot time the controller saw last; [`VmState`] and [`VmRow`], and the `Db`
//! queries on them.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::{now_ms, Db, Result};

/// State of one VM as the controller saw it last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Declared, not started yet.
    Pending,
    /// Its process runs; the guest agent has not answered yet.
    Booting,
    /// The guest agent answered: the VM is being configured, then its readiness checks run
    /// (`reason` names the check being waited for).
    AgentUp,
    /// Configured, and every readiness check passed.
    Ready,
    /// Could not be started or configured; `reason` says why.
    Failed,
    /// Not running (stopped by a user, or found gone).
    Stopped,
}

str_enum!(VmState { Pending => "pending", Booting => "booting", AgentUp => "agent_up", Ready => "ready", Failed => "failed", Stopped => "stopped" });

/// A stored VM.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmRow {
    /// Runtime name `<lab>.<node>.<vm>`.
    pub name: String,
    pub lab: String,
    pub node: String,
    pub vm: String,
    pub state: VmState,
    pub reason: Option<String>,
    pub boot_ms: Option<i64>,
    pub updated_ms: i64,
}

impl Db {
    /// Makes the lab's VM rows exactly `vms` (`(name, node, vm)`): new ones `pending`, existing
    /// ones keep their state, rows of VMs no longer declared are removed.
    pub fn sync_vms(&self, lab: &str, vms: &[(String, String, String)]) -> Result<()> {
        let e = self.err();
        let mut c = self.conn();
        let tx = c.transaction().map_err(&e)?;
        let now = now_ms();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO vms(name, lab, node, vm, state, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5) ON CONFLICT(name) DO NOTHING",
                )
                .map_err(&e)?;
            for (name, node, vm) in vms {
                ins.execute(params![name, lab, node, vm, now]).map_err(&e)?;
            }
        }
        let keep: Vec<&str> = vms.iter().map(|v| v.0.as_str()).collect();
        let existing: Vec<String> = {
            let mut st = tx
                .prepare("SELECT name FROM vms WHERE lab = ?1")
                .map_err(&e)?;
            let it = st.query_map(params![lab], |r| r.get(0)).map_err(&e)?;
            it.collect::<rusqlite::Result<_>>().map_err(&e)?
        };
        for n in existing.iter().filter(|n| !keep.contains(&n.as_str())) {
            tx.execute("DELETE FROM vms WHERE name = ?1", params![n])
                .map_err(&e)?;
        }
        tx.commit().map_err(&e)
    }

    /// Sets a VM's state; `boot_ms` is kept when `None`. Records a `vm.state` event on change.
    pub fn set_vm_state(
        &self,
        name: &str,
        state: VmState,
        reason: Option<&str>,
        boot_ms: Option<i64>,
    ) -> Result<()> {
        let (lab, changed) = {
            let c = self.conn();
            let changed = c
                .execute(
                    "UPDATE vms SET state = ?2, reason = ?3, boot_ms = COALESCE(?4, boot_ms),
                         updated_ms = ?5
                     WHERE name = ?1 AND (state IS NOT ?2 OR reason IS NOT ?3
                         OR (?4 IS NOT NULL AND boot_ms IS NOT ?4))",
                    params![name, state.as_str(), reason, boot_ms, now_ms()],
                )
                .map_err(self.err())?;
            let lab: Option<String> = c
                .query_row("SELECT lab FROM vms WHERE name = ?1", params![name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(self.err())?;
            (lab, changed)
        };
        if changed > 0 {
            self.event(
                lab.as_deref(),
                Some(name),
                "vm.state",
                &serde_json::json!({"state": state, "reason": reason, "boot_ms": boot_ms}),
            )?;
        }
        Ok(())
    }

    fn vm_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VmRow> {
        let s: String = r.get(4)?;
        Ok(VmRow {
            name: r.get(0)?,
            lab: r.get(1)?,
            node: r.get(2)?,
            vm: r.get(3)?,
            state: VmState::parse(&s).unwrap_or(VmState::Failed),
            reason: r.get(5)?,
            boot_ms: r.get(6)?,
            updated_ms: r.get(7)?,
        })
    }

    const VM_COLS: &'static str = "name, lab, node, vm, state, reason, boot_ms, updated_ms";

    pub fn vms(&self, lab: &str) -> Result<Vec<VmRow>> {
        let c = self.conn();
        let mut st = c
            .prepare(&format!(
                "SELECT {} FROM vms WHERE lab = ?1 ORDER BY rowid",
                Self::VM_COLS
            ))
            .map_err(self.err())?;
        let it = st
            .query_map(params![lab], Self::vm_from_row)
            .map_err(self.err())?;
        it.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// The VM row with runtime name `name` (`<lab>.<node>.<vm>`).
    pub fn vm(&self, name: &str) -> Result<Option<VmRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {} FROM vms WHERE name = ?1", Self::VM_COLS),
                params![name],
                Self::vm_from_row,
            )
            .optional()
            .map_err(self.err())
    }
}
