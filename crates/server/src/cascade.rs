//! What goes when a lab or a user goes (issue 17: a member never reaches another tenant, also
//! not through what a deleted lab or user of the same name left behind).
//!
//! A lab takes with it its checkpoints (memory images, device states, disk copies), packet
//! captures, layout, events, operations (and so its scenario reports, which are operation
//! results), link state and VM rows, and any VM directory left by a crash. A user takes with
//! them their labs (taken down first), functions (with their warm snapshots), operations and
//! tokens. Warm snapshots of labs are not per lab: they are a cache keyed by image, kernel and
//! VM size, taken before a clone gets its identity or any lab file's content, so they hold
//! nothing of a lab. The audit log stays: it is the admins' record of who did what.

use std::path::Path;
use std::time::{Duration, Instant};

use kobako_lab::controller::{self, checkpoint, LabError};
use kobako_state::{Db, LabLock, LabState};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// How long a user's deletion waits for operations on their labs or by them to end.
const QUIET_WAIT: Duration = Duration::from_secs(120);

/// Bytes of the files under `p` (0 when it is missing).
pub(crate) fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Bytes a lab keeps on disk, counted against its owner's `max_disk_mib`: its checkpoints and
/// its packet captures.
pub(crate) fn lab_disk_bytes(state_dir: &Path, lab: &str) -> u64 {
    let checkpoints: u64 = checkpoint::list(lab)
        .map(|v| v.iter().map(|c| c.bytes).sum())
        .unwrap_or(0);
    checkpoints + dir_bytes(&crate::lab_files::captures_dir(state_dir, lab))
}

/// Removes everything kept about lab `name` and its row. The caller holds the lab's lock and
/// has made sure none of its VMs runs. Files go first: if one cannot be removed the lab stays
/// and the deletion can be retried.
pub(crate) fn forget_lab(db: &Db, state_dir: &Path, name: &str) -> ApiResult<()> {
    checkpoint::delete_all(name).map_err(|e| {
        ApiError::internal(format!(
            "cannot remove the checkpoints of lab '{name}': {e}"
        ))
    })?;
    crate::lab_files::forget_captures(state_dir, name);
    crate::lab_files::forget_layout(state_dir, name);
    // VM directories a crash left (a VM that ran is removed when it stops).
    for v in db.vms(name)? {
        let d = kobako_runtime::VmDir::for_name(&v.name);
        if d.exists() && d.vm_pid().is_none() {
            let _ = d.remove();
        }
    }
    // Events, operations and the lab row (VM and link rows go with it) in one transaction.
    Ok(db.forget_lab(name)?)
}

/// Marks `lab` busy, waiting (up to [`QUIET_WAIT`]) for an operation on it to end.
async fn wait_hold(st: &AppState, lab: &str) -> ApiResult<crate::ops::BusyGuard> {
    let t0 = Instant::now();
    loop {
        match crate::ops::hold_lab(st, lab) {
            Ok(g) => return Ok(g),
            Err(e) if t0.elapsed() > QUIET_WAIT => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Takes lab `name` down (when anything of it may run) and forgets it.
async fn take_down_and_forget(st: &AppState, name: &str) -> ApiResult<()> {
    let _busy = wait_hold(st, name).await?;
    let n = name.to_string();
    let row = st.db.run(move |db| Ok(db.lab(&n)?)).await?;
    let n = name.to_string();
    let any_running = st
        .db
        .run(move |db| {
            Ok(db
                .vms(&n)?
                .iter()
                .any(|v| kobako_runtime::VmDir::for_name(&v.name).vm_pid().is_some()))
        })
        .await?;
    let maybe_up = row
        .as_ref()
        .is_some_and(|r| !matches!(r.state, LabState::Stopped | LabState::Pending));
    if any_running || maybe_up {
        match controller::down(st.hooks.runtime.clone(), name).await {
            Ok(_) | Err(LabError::NotFound(_)) => {}
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "cannot take lab '{name}' down: {e}"
                )))
            }
        }
    }
    let (root, n) = (st.state_dir.clone(), name.to_string());
    st.db
        .run(move |db| {
            let _lock = LabLock::acquire_in(&root, &n, Duration::from_secs(30))?;
            forget_lab(db, &root, &n)?;
            db.event(Some(&n), None, "lab.deleted", &serde_json::json!({}))?;
            Ok(())
        })
        .await
}

/// Labs owned by `owner`.
async fn labs_of(st: &AppState, owner: &str) -> ApiResult<Vec<String>> {
    let o = owner.to_string();
    st.db
        .run(move |db| {
            Ok(db
                .labs()?
                .into_iter()
                .filter(|l| l.owner.as_deref() == Some(o.as_str()))
                .map(|l| l.name)
                .collect())
        })
        .await
}

/// Removes everything `owner` has: labs (taken down first), functions, operations.
async fn purge_owned(st: &AppState, owner: &str) -> ApiResult<()> {
    for lab in labs_of(st, owner).await? {
        take_down_and_forget(st, &lab).await?;
    }
    let o = owner.to_string();
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        for f in kobako_lab::functions::list() {
            if f.owner.as_deref() == Some(o.as_str()) {
                kobako_lab::functions::remove(&f.name).map_err(|e| {
                    ApiError::internal(format!("cannot remove function '{}': {e}", f.name))
                })?;
            }
        }
        Ok(())
    })
    .await
    .map_err(ApiError::internal)??;
    let o = owner.to_string();
    st.db
        .run(move |db| Ok(db.delete_operations_of(&o, true)?))
        .await
}

/// Operations `owner` started that still run.
async fn running_ops(st: &AppState, owner: &str) -> ApiResult<Vec<String>> {
    let o = owner.to_string();
    st.db.run(move |db| Ok(db.running_operations_of(&o)?)).await
}

/// Deletes user `name` and everything they have: their labs are taken down and deleted (with
/// their checkpoints, captures, layouts, events and operations), their functions removed (with
/// their warm snapshots), their operations and tokens deleted. A user created later with the
/// same name starts from nothing. 404 for an unknown user; 409 when an operation of theirs
/// does not end within two minutes (nothing of the user is deleted then but what was already
/// done, and the deletion can be repeated).
pub(crate) async fn delete_user(st: &AppState, name: &str) -> ApiResult<()> {
    let n = name.to_string();
    if st
        .db
        .run(move |db| crate::auth::get_user(db, &n))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    purge_owned(st, name).await?;
    // What runs for the user ends (captures were stopped with their labs; deploys finish).
    let t0 = Instant::now();
    loop {
        let left = running_ops(st, name).await?;
        if left.is_empty() {
            break;
        }
        if t0.elapsed() > QUIET_WAIT {
            return Err(ApiError::conflict(format!(
                "user '{name}' still has operations running ({}): wait for them (GET /api/v1/operations/{{id}}) and delete the user again",
                left.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Tokens go with the user row (ON DELETE CASCADE).
    let n = name.to_string();
    st.db
        .run(move |db| crate::auth::delete_user(db, &n))
        .await?;
    // What requests of the user still in flight created meanwhile.
    purge_owned(st, name).await
}

/// [`delete_user`] without a running server (`kobako serve user rm`): nothing of the user may
/// run, since only the server takes labs down; 409 naming the first lab that is not down.
pub fn delete_user_offline(db: &Db, state_dir: &Path, name: &str) -> ApiResult<()> {
    if crate::auth::get_user(db, name)?.is_none() {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    let labs: Vec<_> = db
        .labs()?
        .into_iter()
        .filter(|l| l.owner.as_deref() == Some(name))
        .collect();
    for l in &labs {
        let running = db
            .vms(&l.name)?
            .iter()
            .any(|v| kobako_runtime::VmDir::for_name(&v.name).vm_pid().is_some());
        if running || !matches!(l.state, LabState::Stopped | LabState::Pending) {
            return Err(ApiError::conflict(format!(
                "user '{name}' has lab '{}' {}: take it down first (kobako down {}), or remove the user through the running server (DELETE /api/v1/users/{name} takes their labs down)",
                l.name, l.state, l.name
            )));
        }
    }
    for l in &labs {
        let _lock = LabLock::acquire_in(state_dir, &l.name, Duration::ZERO)?;
        forget_lab(db, state_dir, &l.name)?;
    }
    for f in kobako_lab::functions::list() {
        if f.owner.as_deref() == Some(name) {
            kobako_lab::functions::remove(&f.name).map_err(|e| {
                ApiError::internal(format!("cannot remove function '{}': {e}", f.name))
            })?;
        }
    }
    db.delete_operations_of(name, false)?;
    crate::auth::delete_user(db, name)
}
