//! Operations that change a lab: up, down and restart, and custom ones (scenario runs), one
//! at a time per lab in this server (409 otherwise) and under the lab's lock; a lab can also
//! be held busy without an operation ([`hold_lab`]).

use std::sync::Arc;
use std::time::Duration;

use kobako_lab::controller::{self, LabError, Progress};
use kobako_lab::spec::Lab;
use kobako_state::{Db, LabLock, LabState, VmState};

use super::cancel::Cancelled;
use super::reservations::Reservation;
use super::{
    create, finish_as, finish_with, start_task, OpProgress, OpSink, Operation, TaskError,
    TaskFuture,
};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// What a lab operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabOp {
    Up,
    Down,
    Restart,
}

impl LabOp {
    fn kind(self) -> &'static str {
        match self {
            LabOp::Up => "lab.up",
            LabOp::Down => "lab.down",
            LabOp::Restart => "lab.restart",
        }
    }
}

/// Starts `op` in a task. 409 when this server already runs an operation on the lab or
/// another process holds the lab's lock (the controller takes that lock itself while it
/// works, so it is only probed here).
///
/// `hold` (the quota reserved for the VMs `op` starts) is kept until the operation ends: by
/// then the lab's stored state counts them (or they failed and count no more).
pub async fn start_lab_op(
    state: &AppState,
    lab: String,
    op: LabOp,
    user: String,
    hold: Option<Reservation>,
) -> ApiResult<Operation> {
    start_lab_task(state, lab, op.kind(), user, move |st, db, lab, progress| {
        Box::pin(async move {
            let r = run_lab_op(&st, &db, &lab, op, &progress).await;
            drop(hold);
            r
        })
    })
    .await
}
/// Runs `task` as an operation of kind `kind` on `lab`, with the same exclusion as
/// [`start_lab_op`] (one change of a lab at a time: 409 otherwise).
pub async fn start_lab_task(
    state: &AppState,
    lab: String,
    kind: &str,
    user: String,
    task: impl FnOnce(AppState, Arc<Db>, String, OpProgress) -> TaskFuture + Send + 'static,
) -> ApiResult<Operation> {
    let busy = || {
        ApiError::conflict(format!(
            "lab '{lab}' is being changed by another operation: wait for it (GET /api/v1/operations)"
        ))
    };
    if !state
        .busy
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(lab.clone())
    {
        return Err(busy());
    }
    let guard = BusyGuard {
        set: state.busy.clone(),
        lab: lab.clone(),
    };
    let root = state.state_dir.clone();
    let l2 = lab.clone();
    tokio::task::spawn_blocking(move || LabLock::acquire_in(&root, &l2, Duration::ZERO))
        .await
        .map_err(ApiError::internal)??;
    start_task(
        state,
        Some(lab),
        kind,
        user,
        move |st, db, lab, progress| {
            Box::pin(async move {
                let r = task(st, db, lab.unwrap_or_default(), progress).await;
                drop(guard);
                r
            })
        },
    )
    .await
}
/// How the work of [`start_custom`] ended.
pub(crate) struct Ended {
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why it stopped before its end, when it was cancelled.
    pub stopped: Option<String>,
}

/// Starts an operation of `kind` on lab `lab` that is neither up, down nor restart (a
/// scenario run): 409 while this server runs another operation on the lab. `work` gets the
/// progress sink and a future that completes when the operation is cancelled (with the
/// reason), and says how it ended. Work that stopped early after a cancel ends `cancelled`
/// (its error is the reason); a cancel that came as it ended normally changes nothing.
pub(crate) async fn start_custom<F, Fut>(
    state: &AppState,
    lab: String,
    kind: &'static str,
    user: String,
    work: F,
) -> ApiResult<Operation>
where
    F: FnOnce(AppState, OpSink, Cancelled) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Ended> + Send,
{
    if !state
        .busy
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(lab.clone())
    {
        return Err(ApiError::conflict(format!(
            "lab '{lab}' is being changed by another operation: wait for it (GET /api/v1/operations)"
        )));
    }
    let guard = BusyGuard {
        set: state.busy.clone(),
        lab: lab.clone(),
    };
    let l2 = lab.clone();
    let operation = state
        .db
        .run(move |db| create(db, kind, Some(&l2), &user))
        .await?;
    let st = state.clone();
    let id = operation.id.clone();
    let cancelled = state.cancels.register(&id);
    tokio::spawn(async move {
        let db = st.db.get();
        let sink: OpSink = Arc::new(OpProgress {
            db: db.clone(),
            id: id.clone(),
            lab: Some(lab.clone()),
        });
        let cancels = st.cancels.clone();
        let ended = work(st, sink, cancelled).await;
        match ended.stopped {
            Some(why) if cancels.requested(&id) => {
                finish_as(&db, &id, Some(&lab), "cancelled", ended.result, Some(why))
            }
            _ => finish_with(&db, &id, Some(&lab), ended.result, ended.error),
        }
        cancels.forget(&id);
        drop(guard);
    });
    Ok(operation)
}

/// Marks `lab` busy (as an operation does) until the returned guard is dropped: 409 while an
/// operation of this server changes it.
pub(crate) fn hold_lab(state: &AppState, lab: &str) -> ApiResult<BusyGuard> {
    if !state
        .busy
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(lab.to_string())
    {
        return Err(ApiError::conflict(format!(
            "lab '{lab}' is being changed by another operation: wait for it (GET /api/v1/operations)"
        )));
    }
    Ok(BusyGuard {
        set: state.busy.clone(),
        lab: lab.to_string(),
    })
}

/// Labs with an operation running in this server.
pub type Busy = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// A lab marked busy until dropped.
pub(crate) struct BusyGuard {
    set: Busy,
    lab: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.lab);
    }
}

async fn run_lab_op(
    st: &AppState,
    db: &Db,
    name: &str,
    op: LabOp,
    progress: &OpProgress,
) -> Result<serde_json::Value, TaskError> {
    let row = db
        .lab(name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("lab '{name}' was deleted"))?;
    let lab: Lab = serde_json::from_value(row.spec.clone())
        .map_err(|e| format!("stored spec of lab '{name}' is not readable: {e}"))?;
    let rt = st.hooks.runtime.clone();
    let boot = st.hooks.boot.clone();
    match op {
        LabOp::Down => {
            progress.event("stopping VMs and removing the lab network");
            let n = match controller::down(rt, name).await {
                Ok(n) => n,
                Err(LabError::NotFound(_)) => 0,
                Err(e) => return Err(e.to_string().into()),
            };
            // The controller forgets a lab that is down; the API keeps it (stopped) until
            // DELETE, so it can be brought up again.
            keep_stopped(db, &row, &lab).map_err(|e| e.to_string())?;
            progress.event(&format!("{n} VM(s) stopped"));
            Ok(serde_json::json!({"lab": name, "stopped": n}))
        }
        LabOp::Up | LabOp::Restart => {
            let report = if op == LabOp::Restart
                && db
                    .vms(name)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .any(|v| kobako_runtime::VmDir::for_name(&v.name).vm_pid().is_some())
            {
                controller::restart(rt, name, None, &boot, progress).await
            } else {
                controller::up(
                    rt,
                    &lab,
                    row.file.clone(),
                    row.owner.clone(),
                    &boot,
                    progress,
                )
                .await
            }
            .map_err(|e| e.to_string())?;
            let failed: Vec<&controller::VmReport> =
                report.vms.iter().filter(|v| v.error.is_some()).collect();
            progress.event(&format!(
                "{} of {} VM(s) ready in {} ms",
                report.vms.len() - failed.len(),
                report.vms.len(),
                report.total_ms
            ));
            let result = serde_json::to_value(&report).map_err(|e| e.to_string())?;
            // A lab left degraded by VMs that failed is a failed operation (the report says
            // which and why); VMs left stopped on purpose are not failures.
            match failed.first() {
                None => Ok(result),
                Some(first) => Err(TaskError {
                    error: format!(
                        "{} of {} VM(s) failed; {}: {}",
                        failed.len(),
                        report.vms.len(),
                        first.name,
                        first.error.as_deref().unwrap_or_default()
                    ),
                    result: Some(result),
                }),
            }
        }
    }
}

/// Stores `lab` again as `stopped` (after the controller's `down` removed it).
fn keep_stopped(db: &Db, row: &kobako_state::LabRow, lab: &Lab) -> kobako_state::Result<()> {
    db.put_lab(
        &row.name,
        row.file.as_deref(),
        &row.spec,
        row.owner.as_deref(),
    )?;
    db.sync_vms(&row.name, &lab_vms(lab))?;
    for (v, _, _) in lab_vms(lab) {
        db.set_vm_state(&v, VmState::Stopped, None, None)?;
    }
    db.set_lab_state(&row.name, LabState::Stopped, None)
}

fn lab_vms(lab: &Lab) -> Vec<(String, String, String)> {
    lab.vms()
        .map(|v| {
            (
                controller::vm_name(lab, v),
                v.id.node.as_str().to_string(),
                v.id.vm.as_str().to_string(),
            )
        })
        .collect()
}
