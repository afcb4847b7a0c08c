//! `/labs`: listing, creating, replacing, showing and deleting labs, and the lab operations
//! (up, down, restart). Links are in [`super::links`], operations in [`super::operations`],
//! quotas in `super::quota`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use kobako_lab::spec::{self, Lab};
use kobako_state::{LabRow, LabState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::access::{check_access, lab_for, not_found};
use super::links::LinkInfo;
use super::quota::{quota_check, reserve_lab};
use crate::api::labfile;
use crate::auth::Caller;
use crate::error::{ApiBytes, ApiError, ApiPath, ApiQuery, ApiResult};
use crate::ops::{self, LabOp, Operation};
use crate::AppState;

/// A lab in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabSummary {
    pub name: String,
    /// Who owns it (none: created locally by root).
    pub owner: Option<String>,
    /// pending, starting, ready, degraded, failed, stopping, stopped.
    pub state: String,
    pub reason: Option<String>,
    pub file: Option<String>,
    /// How many VMs the lab declares.
    pub vm_count: usize,
    /// How many of them are ready.
    pub vms_ready: usize,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A VM of a lab, as stored and as seen on the host.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmInfo {
    /// `<lab>.<node>.<vm>`.
    pub name: String,
    pub lab: String,
    pub node: String,
    pub vm: String,
    /// pending, booting, agent_up (configuring, then waiting for its readiness checks), ready,
    /// failed, stopped.
    pub state: String,
    pub reason: Option<String>,
    /// Milliseconds from process start to agent ready.
    pub boot_ms: Option<i64>,
    /// Pid of the VM process while it runs.
    pub pid: Option<i32>,
    pub image: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// `iface:address/prefix`.
    pub addresses: Vec<String>,
    pub updated_ms: i64,
}
/// A lab with its VMs, links and resolved spec.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabDetail {
    #[serde(flatten)]
    pub summary: LabSummary,
    pub vms: Vec<VmInfo>,
    pub links: Vec<LinkInfo>,
    /// The resolved lab (kobako_lab::spec::Lab as JSON).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

fn summary(db: &kobako_state::Db, l: &LabRow) -> ApiResult<LabSummary> {
    let vms = db.vms(&l.name)?;
    Ok(LabSummary {
        name: l.name.clone(),
        owner: l.owner.clone(),
        state: l.state.to_string(),
        reason: l.reason.clone(),
        file: l.file.clone(),
        vm_count: vms.len(),
        vms_ready: vms
            .iter()
            .filter(|v| v.state == kobako_state::VmState::Ready)
            .count(),
        created_ms: l.created_ms,
        updated_ms: l.updated_ms,
    })
}

pub(crate) fn vm_info(row: &kobako_state::VmRow, lab: Option<&Lab>) -> VmInfo {
    let dir = kobako_runtime::VmDir::for_name(&row.name);
    let pid = dir.vm_pid();
    let svm = lab.and_then(|l| {
        l.vms()
            .find(|v| v.id.node.as_str() == row.node && v.id.vm.as_str() == row.vm)
    });
    VmInfo {
        name: row.name.clone(),
        lab: row.lab.clone(),
        node: row.node.clone(),
        vm: row.vm.clone(),
        state: row.state.to_string(),
        reason: row.reason.clone(),
        boot_ms: row
            .boot_ms
            .or_else(|| dir.ready().map(|r| r.boot_ms as i64)),
        pid,
        image: svm.map(|v| v.image.clone()),
        vcpus: svm.map(|v| v.vcpus),
        memory_mib: svm.map(|v| v.memory.0),
        addresses: svm
            .map(|v| {
                v.interfaces
                    .iter()
                    .flat_map(|i| {
                        i.addresses
                            .iter()
                            .map(move |a| format!("{}:{a}", i.name.as_str()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        updated_ms: row.updated_ms,
    }
}

fn detail(db: &kobako_state::Db, l: LabRow) -> ApiResult<LabDetail> {
    let lab: Option<Lab> = serde_json::from_value(l.spec.clone()).ok();
    let vms = db
        .vms(&l.name)?
        .iter()
        .map(|v| vm_info(v, lab.as_ref()))
        .collect();
    let stored = db.links(&l.name)?;
    let links = lab
        .as_ref()
        .map(|lab| {
            lab.links
                .iter()
                .map(|k| {
                    let s = stored.iter().find(|s| s.name == k.name.as_str());
                    LinkInfo {
                        name: k.name.as_str().to_string(),
                        endpoints: k.endpoints.iter().map(|e| e.to_string()).collect(),
                        up: s.map(|s| s.up).unwrap_or(k.state == spec::LinkState::Up),
                        impairment: s.and_then(|s| s.impairment.clone()).or_else(|| {
                            (!k.impair.is_none())
                                .then(|| serde_json::to_value(k.impair).unwrap_or_default())
                        }),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(LabDetail {
        summary: summary(db, &l)?,
        vms,
        links,
        spec: l.spec,
    })
}

/// Labs you may see (members: their own).
#[utoipa::path(get, path = "/api/v1/labs", tag = "labs",
    responses((status = 200, description = "Labs", body = [LabSummary])))]
pub async fn list_labs(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<LabSummary>>> {
    let v = st
        .db
        .run(move |db| {
            db.labs()?
                .iter()
                .filter(|l| caller.can_see(l.owner.as_deref()))
                .map(|l| summary(db, l))
                .collect::<ApiResult<Vec<_>>>()
        })
        .await?;
    Ok(Json(v))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// Name the file has in error messages (default `lab.yaml`).
    pub file: Option<String>,
}
/// Create labs from a lab file (YAML or JSON body). Nothing starts: POST .../up does that.
/// A file with `copies:` creates every copy. Mistakes are 422 with each error's file, line,
/// column, path and fix in `error.details`.
#[utoipa::path(post, path = "/api/v1/labs", tag = "labs",
    params(CreateQuery),
    request_body(content = String, description = "The lab file (YAML or JSON)",
        content_type = "application/yaml"),
    responses((status = 201, description = "Created", body = [LabSummary])))]
pub async fn create_lab(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<CreateQuery>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<Vec<LabSummary>>)> {
    caller.require_write()?;
    let (file, labs) = labfile::load_labs(&body, q.file).await?;
    labfile::refuse_host_paths(&caller, &labs)?;
    labfile::refuse_missing_artifacts(&st, &labs)?;
    super::policy::check_create(&st, &caller, &labs).await?;
    let owner = (!caller.local).then(|| caller.name().to_string());
    let created = st
        .db
        .run(move |db| {
            for lab in &labs {
                quota_check(&caller, lab)?;
                if db.lab(lab.name.as_str())?.is_some() {
                    return Err(ApiError::conflict(format!(
                        "lab '{}' exists: DELETE it first (or pick another name)",
                        lab.name.as_str()
                    )));
                }
            }
            let mut out = Vec::new();
            for lab in &labs {
                let event = ("lab.created", serde_json::json!({"owner": owner}));
                out.push(store_lab(db, lab, &file, owner.as_deref(), event)?);
            }
            Ok(out)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Replace the lab file of a lab that is not running (pending, stopped or failed): the same
/// checks as a create, the file must name this lab and make one lab; its checkpoints, saved
/// layout, events, operations and admin policy stay (a delete and a create would remove
/// them). A running lab is 409: take it down first, or `up` a changed file to converge it.
#[utoipa::path(put, path = "/api/v1/labs/{name}", tag = "labs",
    params(("name" = String, Path, description = "Lab name"), CreateQuery),
    request_body(content = String, description = "The new lab file (YAML or JSON)",
        content_type = "application/yaml"),
    responses((status = 200, description = "Replaced", body = LabSummary)))]
pub async fn replace_lab(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<CreateQuery>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Json<LabSummary>> {
    let row = lab_for(&st, &caller, &name, true).await?;
    let (file, mut labs) = labfile::load_labs(&body, q.file).await?;
    if labs.len() != 1 || labs[0].name.as_str() != name {
        let named: Vec<&str> = labs.iter().map(|l| l.name.as_str()).collect();
        return Err(ApiError::unprocessable(
            "invalid_lab",
            format!(
                "the file makes lab(s) {}, not lab '{name}': a replacement keeps the lab's name and makes one lab (no `copies:`); to rename, create the new lab and delete this one",
                named.join(", ")
            ),
        ));
    }
    let lab = labs.remove(0);
    labfile::refuse_host_paths(&caller, [&lab])?;
    labfile::refuse_missing_artifacts(&st, [&lab])?;
    super::policy::check_create(&st, &caller, std::slice::from_ref(&lab)).await?;
    quota_check(&caller, &lab)?;
    let running = !matches!(
        row.state,
        LabState::Pending | LabState::Stopped | LabState::Failed
    ) || row_has_running_vm(&st, &name).await?;
    if running {
        return Err(ApiError::conflict(format!(
            "lab '{name}' is {}: take it down first (POST /api/v1/labs/{name}/down), or bring the changed file up with `kobako up` to converge it",
            row.state
        )));
    }
    let out = st
        .db
        .run(move |db| {
            // The stored owner stays (`put_lab` keeps it): a replacement changes only the file.
            let event = ("lab.replaced", serde_json::json!({}));
            store_lab(db, &lab, &file, None, event)
        })
        .await?;
    Ok(Json(out))
}

/// True when a VM of lab `name` still has a process.
async fn row_has_running_vm(st: &AppState, name: &str) -> ApiResult<bool> {
    let n = name.to_string();
    let vms = st.db.run(move |db| Ok(db.vms(&n)?)).await?;
    Ok(vms
        .iter()
        .any(|v| kobako_runtime::VmDir::for_name(&v.name).vm_pid().is_some()))
}

/// Stores `lab` (from the API file `file`) with its VM rows and records `event`; the lab as
/// listed. `owner` is set only on a new lab (`put_lab` keeps an existing lab's owner).
fn store_lab(
    db: &kobako_state::Db,
    lab: &Lab,
    file: &str,
    owner: Option<&str>,
    (kind, data): (&str, serde_json::Value),
) -> ApiResult<LabSummary> {
    let name = lab.name.as_str();
    let spec = serde_json::to_value(lab).map_err(ApiError::internal)?;
    db.put_lab(name, Some(&format!("api:{file}")), &spec, owner)?;
    let vms: Vec<_> = lab
        .vms()
        .map(|v| {
            (
                kobako_lab::controller::vm_name(lab, v),
                v.id.node.as_str().to_string(),
                v.id.vm.as_str().to_string(),
            )
        })
        .collect();
    db.sync_vms(name, &vms)?;
    db.event(Some(name), None, kind, &data)?;
    let row = db
        .lab(name)?
        .ok_or_else(|| ApiError::internal("lab vanished"))?;
    summary(db, &row)
}

/// One lab: state, VMs (state, boot time, addresses, pid), links, resolved spec.
#[utoipa::path(get, path = "/api/v1/labs/{name}", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 200, description = "The lab", body = LabDetail)))]
pub async fn get_lab(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::response::Response> {
    let cached = match st.cache.lab(&name) {
        Some(c) => c,
        None => {
            // The version before the reads: a commit during them keeps the result out.
            let version = st.cache.version();
            let n = name.clone();
            let built = st
                .db
                .run(move |db| {
                    let Some(row) = db.lab(&n)? else {
                        return Ok(None);
                    };
                    let owner = row.owner.clone();
                    let body = serde_json::to_vec(&detail(db, row)?).map_err(ApiError::internal)?;
                    Ok(Some((owner, axum::body::Bytes::from(body))))
                })
                .await?;
            let Some((owner, body)) = built else {
                return Err(not_found(&name));
            };
            if let Some(v) = version {
                st.cache.put_lab(v, &name, owner.clone(), body.clone());
            }
            std::sync::Arc::new(crate::cache::CachedLab::new(owner, body))
        }
    };
    check_access(&caller, &name, cached.owner.as_deref(), false)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        cached.body.clone(),
    )
        .into_response())
}

/// Delete a lab that is down (409 while any of its VMs runs: POST .../down first), with
/// everything kept about it: checkpoints, captures, layout, events, operations.
#[utoipa::path(delete, path = "/api/v1/labs/{name}", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_lab(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    lab_for(&st, &caller, &name, true).await?;
    // Not while this server runs an operation on it (a capture, a scenario run).
    let _busy = ops::hold_lab(&st, &name)?;
    let root = st.state_dir.clone();
    st.db
        .run(move |db| {
            let _lock = kobako_state::LabLock::acquire_in(&root, &name, std::time::Duration::ZERO)?;
            let running = db
                .vms(&name)?
                .iter()
                .filter(|v| kobako_runtime::VmDir::for_name(&v.name).vm_pid().is_some())
                .count();
            if running > 0 {
                return Err(ApiError::conflict(format!(
                    "lab '{name}' has {running} VM(s) running: POST /api/v1/labs/{name}/down first"
                )));
            }
            // Everything of the lab goes with it: a later lab of the same name (maybe another
            // member's) starts from nothing.
            crate::cascade::forget_lab(db, &root, &name)?;
            db.event(Some(&name), None, "lab.deleted", &serde_json::json!({}))?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn lab_op(
    st: AppState,
    caller: Caller,
    name: String,
    op: LabOp,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let row = lab_for(&st, &caller, &name, true).await?;
    let hold = if op != LabOp::Down {
        let lab: Lab = serde_json::from_value(row.spec.clone()).map_err(ApiError::internal)?;
        // Labs stored before host paths were checked at create: never boot one for a member.
        labfile::refuse_host_paths(&caller, [&lab])?;
        super::policy::check_up(&st, &caller, &row, &lab).await?;
        reserve_lab(&st, &caller, &lab).await?
    } else {
        None
    };
    let o = ops::start_lab_op(&st, name, op, caller.name().to_string(), hold).await?;
    Ok((StatusCode::ACCEPTED, Json(o)))
}

/// Bring the lab up (or converge it): 202 and an operation to follow.
#[utoipa::path(post, path = "/api/v1/labs/{name}/up", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn lab_up(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    lab_op(st, caller, name, LabOp::Up).await
}

/// Take the lab down (VMs, network); the lab stays, to be brought up again or deleted.
#[utoipa::path(post, path = "/api/v1/labs/{name}/down", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn lab_down(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    lab_op(st, caller, name, LabOp::Down).await
}

/// Down, then up.
#[utoipa::path(post, path = "/api/v1/labs/{name}/restart", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn lab_restart(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    lab_op(st, caller, name, LabOp::Restart).await
}
