//! `/labs/{name}/checkpoints`: lab checkpoints (every VM's memory and disks plus link states and
//! impairments) — list, take, restore, delete. Taking and restoring are operations (202).
//! Authorised like the lab's other actions: whoever may see the lab may list its checkpoints,
//! whoever may change it may take, restore and delete them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kobako_lab::controller::checkpoint;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::lab_for;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::ops::{self, Operation};
use crate::AppState;

/// A checkpoint of a lab.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointInfo {
    pub lab: String,
    pub name: String,
    pub created_ms: i64,
    /// VMs saved in it.
    pub vms: usize,
    /// Bytes on disk (memory states and disk copies).
    pub bytes: u64,
    /// How long the guests were stopped to take it.
    pub paused_ms: u64,
}

impl From<checkpoint::CheckpointInfo> for CheckpointInfo {
    fn from(c: checkpoint::CheckpointInfo) -> Self {
        CheckpointInfo {
            lab: c.lab,
            name: c.name,
            created_ms: c.created_ms,
            vms: c.vms,
            bytes: c.bytes,
            paused_ms: c.paused_ms,
        }
    }
}

/// A checkpoint to take.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCheckpoint {
    /// 1-48 letters, digits, `-` or `_`.
    pub name: String,
}

/// The lab's checkpoint-name rule ([`checkpoint::check_name`]), a 400 when broken.
fn check_name(name: &str) -> ApiResult<()> {
    checkpoint::check_name(name).map_err(ApiError::from)
}

async fn list_of(lab: String) -> ApiResult<Vec<checkpoint::CheckpointInfo>> {
    tokio::task::spawn_blocking(move || checkpoint::list(&lab))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// The lab's checkpoints, oldest first.
#[utoipa::path(get, path = "/api/v1/labs/{name}/checkpoints", tag = "checkpoints",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 200, description = "Checkpoints", body = [CheckpointInfo])))]
pub async fn list_checkpoints(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<CheckpointInfo>>> {
    lab_for(&st, &caller, &name, false).await?;
    Ok(Json(
        list_of(name).await?.into_iter().map(Into::into).collect(),
    ))
}

/// Take a checkpoint of the running lab: every VM paused at one instant, saved, continued.
/// 202 and an operation; nothing is registered unless every VM was saved.
#[utoipa::path(post, path = "/api/v1/labs/{name}/checkpoints", tag = "checkpoints",
    params(("name" = String, Path, description = "Lab name")),
    request_body = NewCheckpoint,
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn create_checkpoint(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<NewCheckpoint>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let row = lab_for(&st, &caller, &name, true).await?;
    check_name(&body.name)?;
    if list_of(name.clone())
        .await?
        .iter()
        .any(|c| c.name == body.name)
    {
        return Err(ApiError::conflict(format!(
            "lab '{name}' already has a checkpoint '{}' (DELETE it first or pick another name)",
            body.name
        )));
    }
    // A checkpoint takes up to every VM's memory plus a copy of its writable disk: that much of
    // the caller's disk quota is held while it is written (then its real size counts).
    let spec: kobako_lab::spec::Lab =
        serde_json::from_value(row.spec.clone()).map_err(ApiError::internal)?;
    let vm_names: Vec<String> = spec
        .vms()
        .map(|v| kobako_lab::controller::vm_name(&spec, v))
        .collect();
    let disks = tokio::task::spawn_blocking(move || {
        let root = kobako_state::state_root().join("vms");
        vm_names
            .iter()
            .map(|v| crate::cascade::dir_bytes(&root.join(v)))
            .sum::<u64>()
    })
    .await
    .map_err(ApiError::internal)?;
    let want = ops::Usage {
        disk_mib: (super::quota::lab_usage(&spec).memory_mib + disks.div_ceil(1 << 20) as i64)
            .max(1),
        ..Default::default()
    };
    let (c, what) = (
        caller.clone(),
        format!("checkpoint '{}' of lab '{name}'", body.name),
    );
    let claim = ops::Claim::Disk(what.clone());
    let hold = st
        .db
        .run(move |db| super::quota::quota_reserve(db, &c, claim, want, &what))
        .await?;
    let rt = st.hooks.runtime.clone();
    let cp = body.name;
    let o = ops::start_lab_task(
        &st,
        name,
        "lab.checkpoint",
        caller.name().to_string(),
        move |_, _, lab, progress| {
            crate::ops::boxed(async move {
                let _hold = hold;
                let info = checkpoint::checkpoint(rt, &lab, &cp, &progress)
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::to_value(CheckpointInfo::from(info)).map_err(|e| e.to_string())
            })
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(o)))
}

async fn existing(name: &str, cp: &str) -> ApiResult<()> {
    check_name(cp)?;
    if !list_of(name.to_string())
        .await?
        .iter()
        .any(|c| c.name == cp)
    {
        return Err(ApiError::not_found(format!(
            "lab '{name}' has no checkpoint '{cp}' (GET /api/v1/labs/{name}/checkpoints)"
        )));
    }
    Ok(())
}

/// Bring the lab back to a checkpoint: its VMs (memory, disks), link states and impairments.
/// Every snapshot is checked (versions, checksums) before anything stops. 202 and an operation.
#[utoipa::path(post, path = "/api/v1/labs/{name}/checkpoints/{checkpoint}/restore", tag = "checkpoints",
    params(("name" = String, Path, description = "Lab name"),
           ("checkpoint" = String, Path, description = "Checkpoint name")),
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn restore_checkpoint(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((name, cp)): ApiPath<(String, String)>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let row = lab_for(&st, &caller, &name, true).await?;
    existing(&name, &cp).await?;
    // Restoring boots every VM of the lab: counted against the quota like `up`.
    let spec: kobako_lab::spec::Lab =
        serde_json::from_value(row.spec.clone()).map_err(ApiError::internal)?;
    let hold = super::quota::reserve_lab(&st, &caller, &spec).await?;
    let rt = st.hooks.runtime.clone();
    let o = ops::start_lab_task(
        &st,
        name,
        "lab.restore",
        caller.name().to_string(),
        move |_, _, lab, progress| {
            crate::ops::boxed(async move {
                let _hold = hold;
                let report = checkpoint::restore(rt, &lab, &cp, &progress)
                    .await
                    .map_err(|e| e.to_string())?;
                if !report.ok() {
                    let failed: Vec<String> = report
                        .vms
                        .iter()
                        .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.name)))
                        .collect();
                    return Err(format!("restored with failures: {}", failed.join("; ")));
                }
                serde_json::to_value(&report).map_err(|e| e.to_string())
            })
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(o)))
}

/// Delete a checkpoint.
#[utoipa::path(delete, path = "/api/v1/labs/{name}/checkpoints/{checkpoint}", tag = "checkpoints",
    params(("name" = String, Path, description = "Lab name"),
           ("checkpoint" = String, Path, description = "Checkpoint name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_checkpoint(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((name, cp)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    lab_for(&st, &caller, &name, true).await?;
    existing(&name, &cp).await?;
    tokio::task::spawn_blocking(move || checkpoint::delete(&name, &cp))
        .await
        .map_err(ApiError::internal)??;
    Ok(StatusCode::NO_CONTENT)
}
