//! Long operations: lab up/down/restart and image builds.
//!
//! A request that starts one gets `202 Accepted` with the operation (`GET
//! /api/v1/operations/{id}`); the work runs in a task of this process. Progress lines are
//! appended to the operation's row and published as `op.progress` events, so the event stream
//! shows them live. The lab's `flock` ([`kobako_state::LabLock`]) is taken before the 202, so a
//! second change to the same lab is refused with 409 instead of racing; the lock dies with the
//! process.
//!
//! Scenario runs can be cancelled (`POST /api/v1/operations/{id}/cancel`, or a server
//! stopping on SIGTERM/SIGINT): their remaining steps are skipped, their faults undone, and
//! they end `cancelled` with the report ([`Cancels`]).
//!
//! After a restart ([`recover`]) operations still marked running are `interrupted`, and
//! [`watch_vms`] keeps the stored VM states true to what runs (a VM whose process ended is
//! `stopped` with the reason from its exit record).

use std::sync::Arc;
use std::time::Duration;

use kobako_lab::controller::{self, LabError, Progress};
use kobako_lab::spec::Lab;
use kobako_state::{now_ms, Db, LabLock, LabState, OperationRow, VmState};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// One progress line.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ProgressLine {
    pub ts_ms: i64,
    pub message: String,
}

/// A long-running call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Operation {
    pub id: String,
    /// `lab.up`, `lab.down`, `lab.restart`, `lab.scenario`, `image.build`.
    pub kind: String,
    pub lab: Option<String>,
    /// Who started it.
    pub user: String,
    /// `running`, `succeeded`, `failed`, `cancelled` (a scenario run stopped by a user or by
    /// the server stopping; faults undone) or `interrupted` (the server died during it).
    pub state: String,
    pub progress: Vec<ProgressLine>,
    /// What it produced (for `lab.up`: every VM's state, boot time and addresses).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl From<OperationRow> for Operation {
    fn from(r: OperationRow) -> Operation {
        Operation {
            id: r.id,
            kind: r.kind,
            lab: r.lab,
            user: r.user,
            state: r.state,
            progress: serde_json::from_value(r.progress).unwrap_or_default(),
            result: r.result,
            error: r.error,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }
}

pub fn get(db: &Db, id: &str) -> ApiResult<Option<Operation>> {
    Ok(db.operation(id)?.map(Operation::from))
}

/// The newest operations (of `user` when given).
pub fn list(db: &Db, user: Option<&str>, limit: i64) -> ApiResult<Vec<Operation>> {
    Ok(db
        .operations(user, limit)?
        .into_iter()
        .map(Operation::from)
        .collect())
}

fn create(db: &Db, kind: &str, lab: Option<&str>, user: &str) -> ApiResult<Operation> {
    let id = format!("op-{}", crate::auth::random_token(9));
    db.insert_operation(&id, kind, lab, user)?;
    get(db, &id)?.ok_or_else(|| ApiError::internal("operation vanished"))
}

/// Appends a progress line (and an `op.progress` event).
fn push(db: &Db, id: &str, lab: Option<&str>, message: &str) {
    let line = ProgressLine {
        ts_ms: now_ms(),
        message: message.to_string(),
    };
    let r = db.push_operation_progress(
        id,
        &serde_json::to_value(&line).unwrap_or_default(),
        line.ts_ms,
    );
    if let Err(e) = r {
        tracing::warn!("operation {id}: cannot record progress: {e}");
    }
    let _ = db.event(
        lab,
        None,
        "op.progress",
        &serde_json::json!({"op": id, "message": message}),
    );
}

fn finish(db: &Db, id: &str, lab: Option<&str>, r: Result<serde_json::Value, String>) {
    match r {
        Ok(v) => finish_with(db, id, lab, Some(v), None),
        Err(e) => finish_with(db, id, lab, None, Some(e)),
    }
}

/// Ends an operation: `failed` when there is an `error` (a result may still come with it, e.g.
/// the report of a failed scenario), else `succeeded`.
fn finish_with(
    db: &Db,
    id: &str,
    lab: Option<&str>,
    result: Option<serde_json::Value>,
    error: Option<String>,
) {
    let state = if error.is_some() {
        "failed"
    } else {
        "succeeded"
    };
    finish_as(db, id, lab, state, result, error)
}

fn finish_as(
    db: &Db,
    id: &str,
    lab: Option<&str>,
    state: &str,
    result: Option<serde_json::Value>,
    error: Option<String>,
) {
    let _ = db.finish_operation(id, state, result.as_ref(), error.as_deref());
    let _ = db.event(
        lab,
        None,
        "op.state",
        &serde_json::json!({"op": id, "state": state, "error": error}),
    );
}

/// Progress lines of an operation (rows and `op.progress` events).
pub struct OpProgress {
    db: Arc<Db>,
    id: String,
    lab: Option<String>,
}

impl OpProgress {
    /// The operation's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Progress for OpProgress {
    fn event(&self, line: &str) {
        push(&self.db, &self.id, self.lab.as_deref(), line);
    }
}

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

/// What a task started by [`start_lab_task`] or [`start_task`] returns.
pub type TaskFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send>>;

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

/// Runs `task` as an operation of kind `kind` (about `lab`, if any) without taking the lab:
/// 202 at once, progress and the result in the operation's row and in events.
pub async fn start_task(
    state: &AppState,
    lab: Option<String>,
    kind: &str,
    user: String,
    task: impl FnOnce(AppState, Arc<Db>, Option<String>, OpProgress) -> TaskFuture + Send + 'static,
) -> ApiResult<Operation> {
    let (l2, k2) = (lab.clone(), kind.to_string());
    let operation = state
        .db
        .run(move |db| create(db, &k2, l2.as_deref(), &user))
        .await?;
    let st = state.clone();
    let id = operation.id.clone();
    let kind = kind.to_string();
    tokio::spawn(async move {
        let db = st.db.get();
        let progress = OpProgress {
            db: db.clone(),
            id: id.clone(),
            lab: lab.clone(),
        };
        let r = task(st, db.clone(), lab.clone(), progress).await;
        if let Err(e) = &r {
            tracing::warn!("{kind} {}: {e}", lab.as_deref().unwrap_or("-"));
        }
        finish(&db, &id, lab.as_deref(), r);
    });
    Ok(operation)
}

// ---- quota reservations ------------------------------------------------------------------

/// Resources counted against a user's quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub vms: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.vms += o.vms;
        self.memory_mib += o.memory_mib;
        self.disk_mib += o.disk_mib;
    }
}

/// What a reservation is for. While one is held, it stands for the thing it names (a lab's
/// VMs, a function's clones): the stored state of that thing is not counted beside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// The VMs of a lab being brought up, restarted or restored.
    Lab(String),
    /// The clones of a function being deployed.
    Function(String),
    /// Disk a checkpoint or capture being written may take (named for messages).
    Disk(String),
}

struct Reserved {
    owner: String,
    claim: Claim,
    usage: Usage,
}

#[derive(Default)]
struct Table {
    next: u64,
    held: std::collections::HashMap<u64, Reserved>,
}

/// Quota held back by requests between their check and the moment what they start is counted
/// from the store (the end of their operation). Checking and reserving happen under one lock
/// ([`reservations`]), so two requests never both take the last of a quota.
fn table() -> &'static std::sync::Mutex<Table> {
    static T: std::sync::OnceLock<std::sync::Mutex<Table>> = std::sync::OnceLock::new();
    T.get_or_init(Default::default)
}

/// The reservation table, locked: read what is held, then [`Reservations::reserve`] before
/// letting go, so the check and the reservation are one step.
pub struct Reservations(std::sync::MutexGuard<'static, Table>);

/// Locks the reservation table (short: callers read the store and decide while holding it).
pub fn reservations() -> Reservations {
    Reservations(table().lock().unwrap_or_else(|e| e.into_inner()))
}

impl Reservations {
    /// `owner`'s reservations: what each is for and holds.
    pub fn of(&self, owner: &str) -> Vec<(Claim, Usage)> {
        self.0
            .held
            .values()
            .filter(|r| r.owner == owner)
            .map(|r| (r.claim.clone(), r.usage))
            .collect()
    }

    /// Holds `usage` of `owner`'s quota for `claim` until the returned value is dropped.
    pub fn reserve(&mut self, owner: &str, claim: Claim, usage: Usage) -> Reservation {
        self.0.next += 1;
        let id = self.0.next;
        self.0.held.insert(
            id,
            Reserved {
                owner: owner.to_string(),
                claim,
                usage,
            },
        );
        Reservation { id }
    }
}

/// Quota held for a request until dropped (move it into the operation's task).
#[derive(Debug)]
pub struct Reservation {
    id: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        table()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .remove(&self.id);
    }
}

/// The progress sink of a running operation.
pub(crate) type OpSink = Arc<dyn Progress>;

/// Operations of this process that can be cancelled, by id: `Some(sender)` while running,
/// `None` once a cancel was requested (the entry goes when the operation ends).
#[derive(Default)]
pub struct Cancels(std::sync::Mutex<std::collections::HashMap<String, Option<CancelTx>>>);

type CancelTx = tokio::sync::oneshot::Sender<String>;

/// What [`Cancels::cancel`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The operation was told to stop.
    Requested,
    /// A cancel had already been requested; it is on its way.
    AlreadyRequested,
    /// Not a cancellable operation of this process.
    NotCancellable,
}

/// Completes with the reason when the operation is cancelled; never otherwise.
pub(crate) struct Cancelled(tokio::sync::oneshot::Receiver<String>);

impl Cancelled {
    pub(crate) async fn wait(self) -> String {
        match self.0.await {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Cancels {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Option<CancelTx>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, id: &str) -> Cancelled {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().insert(id.to_string(), Some(tx));
        Cancelled(rx)
    }

    /// Tells operation `id` to stop, `why` being the reason its report shows.
    pub fn cancel(&self, id: &str, why: &str) -> CancelOutcome {
        match self.lock().get_mut(id) {
            None => CancelOutcome::NotCancellable,
            Some(slot) => match slot.take() {
                Some(tx) => {
                    let _ = tx.send(why.to_string());
                    CancelOutcome::Requested
                }
                None => CancelOutcome::AlreadyRequested,
            },
        }
    }

    /// Whether a cancel of `id` was requested.
    fn requested(&self, id: &str) -> bool {
        matches!(self.lock().get(id), Some(None))
    }

    /// Forgets `id`: it ended and its row is written.
    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Cancels every operation; how many were told.
    pub fn cancel_all(&self, why: &str) -> usize {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.iter()
            .filter(|id| self.cancel(id, why) == CancelOutcome::Requested)
            .count()
    }

    /// Cancellable operations whose row is not written yet.
    pub fn running(&self) -> usize {
        self.lock().len()
    }
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
) -> Result<serde_json::Value, String> {
    let row = db
        .lab(name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("lab '{name}' was deleted"))?;
    let lab: Lab = serde_json::from_value(row.spec.clone())
        .map_err(|e| format!("stored spec of lab '{name}' is not readable: {e}"))?;
    let rt = st.hooks.runtime.clone();
    let resolver = st.hooks.resolver.clone();
    match op {
        LabOp::Down => {
            progress.event("stopping VMs and removing the lab network");
            let n = match controller::down(rt, name).await {
                Ok(n) => n,
                Err(LabError::NotFound(_)) => 0,
                Err(e) => return Err(e.to_string()),
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
                controller::restart(rt, name, None, &*resolver, progress).await
            } else {
                controller::up(
                    rt,
                    &lab,
                    row.file.clone(),
                    row.owner.clone(),
                    &*resolver,
                    progress,
                )
                .await
            }
            .map_err(|e| e.to_string())?;
            let failed = report.vms.iter().filter(|v| v.error.is_some()).count();
            progress.event(&format!(
                "{} of {} VM(s) ready in {} ms",
                report.vms.len() - failed,
                report.vms.len(),
                report.total_ms
            ));
            serde_json::to_value(&report).map_err(|e| e.to_string())
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

/// Starts an image build as an operation.
pub async fn start_image_build(
    state: &AppState,
    kind: String,
    name: String,
    packages: Vec<String>,
    user: String,
) -> ApiResult<Operation> {
    let Some(builder) = state.hooks.build_image.clone() else {
        return Err(ApiError::unavailable(
            "this server was started without image building",
        ));
    };
    let operation = state
        .db
        .run(move |db| create(db, "image.build", None, &user))
        .await?;
    let db = state.db.get();
    let id = operation.id.clone();
    tokio::task::spawn_blocking(move || {
        let p = {
            let db = db.clone();
            let id = id.clone();
            move |line: &str| push(&db, &id, None, line)
        };
        let r = builder(&kind, &name, &packages, &p)
            .map(|_| serde_json::json!({"image": name, "kind": kind}));
        finish(&db, &id, None, r);
    });
    Ok(operation)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancels_reach_the_operation_once_and_are_forgotten_when_it_ends() {
        let c = Cancels::default();
        let a = c.register("a");
        let _b = c.register("b");
        assert_eq!(c.cancel("x", "why"), CancelOutcome::NotCancellable);
        assert_eq!(
            c.cancel("a", "cancelled by alice"),
            CancelOutcome::Requested
        );
        assert_eq!(c.cancel("a", "again"), CancelOutcome::AlreadyRequested);
        assert_eq!(a.wait().await, "cancelled by alice");
        assert!(c.requested("a") && !c.requested("b"));
        assert_eq!(c.running(), 2);
        // Only the one not cancelled yet is told.
        assert_eq!(c.cancel_all("stopping"), 1);
        c.forget("a");
        c.forget("b");
        assert_eq!(c.running(), 0);
        assert_eq!(c.cancel("a", "late"), CancelOutcome::NotCancellable);
    }

    #[tokio::test]
    async fn an_operation_never_cancelled_never_completes_its_cancel_future() {
        let c = Cancels::default();
        let a = c.register("a");
        c.forget("a"); // the sender is dropped
        let r = tokio::time::timeout(std::time::Duration::from_millis(50), a.wait()).await;
        assert!(r.is_err(), "a dropped registration looked like a cancel");
    }
}
