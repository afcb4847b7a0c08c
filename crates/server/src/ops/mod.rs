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
//!
//! This module holds the operation records (rows, progress lines, the end) and the plain task
//! runner; [`labs`] runs the operations that change a lab (up, down, restart, custom ones such
//! as scenario runs) one at a time per lab, [`cancel`] the cancellation of operations,
//! [`reservations`] the quota held by requests still starting something, and [`watch`] the
//! recovery after a restart and the watch of VM processes.

use std::sync::Arc;

use kobako_lab::controller::Progress;
use kobako_state::{now_ms, Db, OperationRow};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub mod cancel;
pub mod labs;
pub mod reservations;
pub mod watch;

pub use cancel::{CancelOutcome, Cancels};
pub(crate) use labs::{hold_lab, start_custom, BusyGuard, Ended};
pub use labs::{start_lab_op, start_lab_task, Busy, LabOp};
pub use reservations::{reservations, Claim, Reservation, Reservations, Usage};
pub use watch::{recover, watch_vms};

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

fn finish(db: &Db, id: &str, lab: Option<&str>, r: Result<serde_json::Value, TaskError>) {
    match r {
        Ok(v) => finish_with(db, id, lab, Some(v), None),
        Err(e) => finish_with(db, id, lab, e.result, Some(e.error)),
    }
}

/// Why a task failed, with what it did produce: an `up` that left VMs failed ends `failed`
/// with its report (which VMs, why).
#[derive(Debug)]
pub struct TaskError {
    pub error: String,
    pub result: Option<serde_json::Value>,
}

impl From<String> for TaskError {
    fn from(error: String) -> TaskError {
        TaskError {
            error,
            result: None,
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
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
/// The progress sink of a running operation.
pub(crate) type OpSink = Arc<dyn Progress>;
/// What a task started by [`start_lab_task`] or [`start_task`] returns.
pub type TaskFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<serde_json::Value, TaskError>> + Send>,
>;
/// A task's future as [`TaskFuture`]: its error (a `String`, or a [`TaskError`] with a result)
/// becomes the operation's.
pub fn boxed<E: Into<TaskError>>(
    f: impl std::future::Future<Output = Result<serde_json::Value, E>> + Send + 'static,
) -> TaskFuture {
    Box::pin(async move { f.await.map_err(Into::into) })
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
            .map(|_| serde_json::json!({"image": name, "kind": kind}))
            .map_err(TaskError::from);
        finish(&db, &id, None, r);
    });
    Ok(operation)
}
