//! Stop and start single VMs or nodes of a lab that is up (restart is [`super::restart`]).
//!
//! A stopped VM keeps its row (`stopped`, with who/why as the reason), its taps and the lab's
//! network; the lab becomes `degraded` ("1 of 4 VMs stopped"). Starting boots exactly the
//! named VMs again and configures them (addresses, routes, files, services) like `up` does;
//! other VMs that were stopped on purpose stay stopped. `up` of the whole lab starts
//! everything.

use std::sync::Arc;

use kobako_runtime::Runtime;
use kobako_state::{LabLock, LabState, VmState};

use super::up::{stop_all, up_some, LOCK_WAIT};
use super::{targets, BootSettings, LabError, LabRecord, Progress, Result, UpReport};

fn running_lab(name: &str) -> Result<LabRecord> {
    let rec = LabRecord::load(name).ok_or_else(|| LabError::NotFound(name.into()))?;
    if !matches!(
        rec.state,
        LabState::Ready | LabState::Degraded | LabState::Starting
    ) {
        return Err(LabError::Conflict(format!(
            "lab '{name}' is {}: start the lab first",
            rec.state
        )));
    }
    Ok(rec)
}

/// Stops the VMs of `target` (`node` or `node.vm`) in the running lab `name`; `why` is stored
/// as their reason. Returns how many VM processes were stopped.
pub async fn stop_vms(
    rt: Arc<dyn Runtime>,
    name: &str,
    target: &str,
    why: &str,
    progress: &dyn Progress,
) -> Result<usize> {
    let rec = running_lab(name)?;
    let names = targets(&rec.lab, Some(target))?;
    let _lock = LabLock::acquire(name, LOCK_WAIT)?;
    let db = super::db()?;
    progress.event(&format!("stopping {}", names.join(", ")));
    let n = stop_all(&rt, &names).await?;
    for v in &names {
        db.set_vm_state(v, VmState::Stopped, Some(why), None)?;
    }
    let vms = db.vms(name)?;
    let stopped = vms.iter().filter(|v| v.state == VmState::Stopped).count();
    db.set_lab_state(
        name,
        LabState::Degraded,
        Some(&format!("{stopped} of {} VMs stopped", vms.len())),
    )?;
    progress.event(&format!("{n} VM(s) stopped"));
    Ok(n)
}

/// Boots the VMs of `target` (`node` or `node.vm`) of the running lab `name` that do not run,
/// and configures them; VMs that run are kept (and configured again), other stopped VMs stay
/// stopped.
pub async fn start_vms(
    rt: Arc<dyn Runtime>,
    name: &str,
    target: &str,
    boot: &BootSettings,
    progress: &dyn Progress,
) -> Result<UpReport> {
    let rec = running_lab(name)?;
    let names = targets(&rec.lab, Some(target))?;
    progress.event(&format!("starting {}", names.join(", ")));
    up_some(
        rt,
        &rec.lab,
        rec.file.clone(),
        rec.owner.clone(),
        boot,
        progress,
        Some(&names),
    )
    .await
}
