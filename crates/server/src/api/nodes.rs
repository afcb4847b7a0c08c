//! Start, stop and restart one node or one VM of a lab that is up (the lab-wide ones are in
//! [`super::labs`]): `POST /labs/{name}/nodes/{target}/{start,stop,restart}` with `target` a
//! node (`web`) or one of its VMs (`web.api`), and `POST /vms/{name}/{start,stop,restart}`
//! for a VM by its full name. Each is an operation (202) that holds the lab like up/down do;
//! authorised like every change of a lab (members: their own labs, viewers: never).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kobako_lab::controller;
use kobako_lab::spec::Lab;
use kobako_state::LabState;

use super::access::lab_for;
use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::ops::{self, Operation};
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }
}

/// Checks and starts `action` on `target` (`node` or `node.vm`) of lab `lab`.
async fn run(
    st: AppState,
    caller: Caller,
    lab: String,
    target: String,
    action: Action,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let row = lab_for(&st, &caller, &lab, true).await?;
    let spec: Lab = serde_json::from_value(row.spec.clone()).map_err(ApiError::internal)?;
    controller::targets(&spec, Some(&target))?;
    if !matches!(
        row.state,
        LabState::Ready | LabState::Degraded | LabState::Starting
    ) {
        return Err(ApiError::conflict(format!(
            "lab '{lab}' is {}: start the lab first (POST /api/v1/labs/{lab}/up)",
            row.state
        )));
    }
    let kind = format!(
        "{}.{}",
        if target.contains('.') { "vm" } else { "node" },
        action.verb()
    );
    // Starting VMs counts the whole lab against the caller's quota (as `up` does), held
    // until the operation ends.
    let hold = match action {
        Action::Stop => None,
        Action::Start | Action::Restart => super::quota::reserve_lab(&st, &caller, &spec).await?,
    };
    let user = caller.name().to_string();
    let o = ops::start_lab_task(
        &st,
        lab,
        &kind,
        user.clone(),
        move |st, _db, lab, progress| {
            crate::ops::boxed(async move {
                let _hold = hold;
                let rt = st.hooks.runtime.clone();
                let boot = st.hooks.boot.clone();
                match action {
                    Action::Stop => {
                        let n = controller::stop_vms(
                            rt,
                            &lab,
                            &target,
                            &format!("stopped by {user}"),
                            &progress,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        Ok(serde_json::json!({"lab": lab, "target": target, "stopped": n}))
                    }
                    Action::Start | Action::Restart => {
                        let report = if action == Action::Start {
                            controller::start_vms(rt, &lab, &target, &boot, &progress).await
                        } else {
                            controller::restart(rt, &lab, Some(&target), &boot, &progress).await
                        }
                        .map_err(|e| e.to_string())?;
                        let failed: Vec<String> = report
                            .vms
                            .iter()
                            .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
                            .collect();
                        if !failed.is_empty() {
                            return Err(failed.join("; "));
                        }
                        serde_json::to_value(&report).map_err(|e| e.to_string())
                    }
                }
            })
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(o)))
}

/// The lab and `node.vm` of a VM's full name (`<lab>.<node>.<vm>`).
async fn split_vm(st: &AppState, name: &str) -> ApiResult<(String, String)> {
    let n = name.to_string();
    let row = st.db.run(move |db| Ok(db.vm(&n)?)).await?;
    row.map(|v| (v.lab, format!("{}.{}", v.node, v.vm)))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no lab VM '{name}' (lab VMs are named <lab>.<node>.<vm>; VMs of `kobako vm run` are stopped with `kobako vm stop`)"
            ))
        })
}

macro_rules! node_handler {
    ($fn:ident, $action:expr, $verb:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = concat!("/api/v1/labs/{name}/nodes/{target}/", $verb), tag = "labs",
            params(("name" = String, Path, description = "Lab name"),
                ("target" = String, Path, description = "A node (`web`) or one of its VMs (`web.api`)")),
            responses((status = 202, description = "Started", body = Operation)))]
        pub async fn $fn(
            State(st): State<AppState>,
            caller: Caller,
            ApiPath((name, target)): ApiPath<(String, String)>,
        ) -> ApiResult<(StatusCode, Json<Operation>)> {
            run(st, caller, name, target, $action).await
        }
    };
}

macro_rules! vm_handler {
    ($fn:ident, $action:expr, $verb:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = concat!("/api/v1/vms/{name}/", $verb), tag = "vms",
                    params(("name" = String, Path, description = "VM name `<lab>.<node>.<vm>`")),
                    responses((status = 202, description = "Started", body = Operation)))]
        pub async fn $fn(
            State(st): State<AppState>,
            caller: Caller,
            ApiPath(name): ApiPath<String>,
        ) -> ApiResult<(StatusCode, Json<Operation>)> {
            let (lab, target) = split_vm(&st, &name).await?;
            run(st, caller, lab, target, $action).await
        }
    };
}

node_handler!(
    node_start,
    Action::Start,
    "start",
    "Boot a node's (or one VM's) stopped VMs again and configure them; other stopped VMs stay stopped."
);
node_handler!(
    node_stop,
    Action::Stop,
    "stop",
    "Stop a node's VMs (or one VM); the lab stays up (degraded) and its network stays."
);
node_handler!(
    node_restart,
    Action::Restart,
    "restart",
    "Stop and boot a node's VMs (or one VM) again, with their configuration."
);
vm_handler!(
    vm_start,
    Action::Start,
    "start",
    "Boot a stopped VM of a lab that is up again, and configure it."
);
vm_handler!(
    vm_stop,
    Action::Stop,
    "stop",
    "Stop one VM of a lab; the lab stays up (degraded)."
);
vm_handler!(
    vm_restart,
    Action::Restart,
    "restart",
    "Stop and boot one VM of a lab again, with its configuration."
);
