//! The stored state kept true to what runs: [`recover`] after a (re)start (interrupted
//! operations, labs caught half-way) and [`watch_vms`], which marks VMs whose process ended.

use std::time::Duration;

use kobako_state::{Db, LabState, VmState};

use crate::AppState;

/// After a (re)start: operations that were running are `interrupted`; labs caught half-way
/// are marked so, and their VMs are checked by [`watch_vms`].
pub async fn recover(state: &AppState) -> anyhow::Result<()> {
    let db = state.db.get();
    let n = db.interrupt_running_operations()?;
    if n > 0 {
        tracing::warn!("{n} operation(s) were interrupted by a server restart");
    }
    for lab in db.labs()? {
        if matches!(lab.state, LabState::Starting | LabState::Stopping) {
            let _ = db.set_lab_state(
                &lab.name,
                LabState::Degraded,
                Some("the server stopped while changing this lab: run up or down again"),
            );
        }
    }
    check_vms(&db);
    Ok(())
}

/// Compares stored VM states with what runs; a VM whose process ended becomes `stopped`.
fn check_vms(db: &Db) {
    let Ok(labs) = db.labs() else { return };
    for lab in labs {
        if !matches!(lab.state, LabState::Ready | LabState::Degraded) {
            continue;
        }
        let Ok(vms) = db.vms(&lab.name) else { continue };
        let mut lost = 0;
        for v in &vms {
            if v.state != VmState::Ready {
                continue;
            }
            let dir = kobako_runtime::VmDir::for_name(&v.name);
            if dir.vm_pid().is_none() {
                let how = dir
                    .exit()
                    .map(|e| e.describe())
                    .unwrap_or_else(|| "VM process is gone".into());
                let _ = db.set_vm_state(&v.name, VmState::Stopped, Some(&how), None);
                lost += 1;
            }
        }
        if lost > 0 {
            let _ = db.set_lab_state(
                &lab.name,
                LabState::Degraded,
                Some(&format!("{lost} VM(s) stopped on their own")),
            );
        }
    }
}

/// Every 2 s: [`check_vms`] (on the blocking pool).
pub async fn watch_vms(state: AppState) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let db = state.db.get();
        let _ = tokio::task::spawn_blocking(move || check_vms(&db)).await;
    }
}
