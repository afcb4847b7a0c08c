//! `/labs`, lab operations, links, `/operations`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use kobako_lab::spec::{self, Lab};
use kobako_state::{LabRow, LabState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::access::{check_access, lab_for, not_found};
use crate::api::labfile;
use crate::auth::Caller;
use crate::error::{ApiBytes, ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
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
    /// pending, booting, ready, failed, stopped.
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

/// A link and its live state.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkInfo {
    pub name: String,
    /// `node.vm:iface` of both ends.
    pub endpoints: Vec<String>,
    pub up: bool,
    /// Current impairment (lab file notation), none when unimpaired.
    #[schema(value_type = Option<Object>)]
    pub impairment: Option<serde_json::Value>,
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

/// What `owner` has in use (VMs, MiB of memory; disk only when `disk`): labs that are up,
/// the reservations of deployed functions (`concurrency` clones of `memory_mib` each, which can
/// all run at once) and the reservations of requests still starting something (`held`); a
/// reserved lab or function is counted by its reservation, not twice. `skip` is left out (the
/// thing being checked).
pub(crate) fn quota_usage(
    db: &kobako_state::Db,
    owner: &str,
    held: &ops::Reservations,
    skip: Option<&ops::Claim>,
    disk: bool,
) -> ApiResult<ops::Usage> {
    let held = held.of(owner);
    let claimed = |c: &ops::Claim| Some(c) == skip || held.iter().any(|(h, _)| h == c);
    let mut u = ops::Usage::default();
    let labs = db.labs()?;
    for l in &labs {
        if l.owner.as_deref() != Some(owner) || claimed(&ops::Claim::Lab(l.name.clone())) {
            continue;
        }
        if matches!(
            l.state,
            LabState::Pending | LabState::Stopped | LabState::Failed
        ) {
            continue;
        }
        if let Ok(other) = serde_json::from_value::<Lab>(l.spec.clone()) {
            u.vms += other.vms().count() as i64;
            u.memory_mib += other.vms().map(|v| v.memory.0 as i64).sum::<i64>();
        }
    }
    for f in kobako_lab::functions::list() {
        if f.owner.as_deref() != Some(owner) || claimed(&ops::Claim::Function(f.name.clone())) {
            continue;
        }
        u.vms += i64::from(f.concurrency);
        u.memory_mib += i64::from(f.concurrency) * i64::from(f.memory_mib);
    }
    for (c, h) in &held {
        if Some(c) != skip {
            u += *h;
        }
    }
    if disk {
        let bytes: u64 = labs
            .iter()
            .filter(|l| l.owner.as_deref() == Some(owner))
            .map(|l| crate::cascade::lab_disk_bytes(&db_state_dir(db), &l.name))
            .sum();
        u.disk_mib += bytes.div_ceil(1024 * 1024) as i64;
    }
    Ok(u)
}

/// The state directory the database lives in (checkpoints and captures are under it).
fn db_state_dir(db: &kobako_state::Db) -> std::path::PathBuf {
    db.path()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(kobako_state::state_root)
}

/// Checks that `want` more of `caller`'s quota is free beside what is in use and reserved,
/// and reserves it for `claim` in the same step (`None`: the caller has no such quota). 409
/// `quota_exceeded` naming the quota, what `what` needs and what uses the rest.
pub(crate) fn quota_reserve(
    db: &kobako_state::Db,
    caller: &Caller,
    claim: ops::Claim,
    want: ops::Usage,
    what: &str,
) -> ApiResult<Option<ops::Reservation>> {
    let u = &caller.user;
    let limited = (want.vms > 0 && u.max_vms.is_some())
        || (want.memory_mib > 0 && u.max_memory_mib.is_some())
        || (want.disk_mib > 0 && u.max_disk_mib.is_some());
    if caller.local || !limited {
        return Ok(None);
    }
    let mut held = ops::reservations();
    let used = quota_usage(db, caller.name(), &held, Some(&claim), want.disk_mib > 0)?;
    let over = |quota: &str, used: i64, want: i64, max: i64, unit: &str, uses: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "quota_exceeded",
            format!(
                "quota exceeded ({quota}): {what} needs {want}{unit}, you have {used}{unit} in use of {max}{unit} ({uses}); {}",
                if quota == "max_disk_mib" {
                    "delete checkpoints or captures, or ask an admin for a larger quota"
                } else {
                    "take another lab down, remove a function or ask an admin for a larger quota"
                }
            ),
        )
    };
    const RUNNING: &str = "labs that are up or starting and deployed functions' concurrency";
    if let Some(max) = u.max_vms.filter(|_| want.vms > 0) {
        if used.vms + want.vms > max {
            return Err(over("max_vms", used.vms, want.vms, max, " VM(s)", RUNNING));
        }
    }
    if let Some(max) = u.max_memory_mib.filter(|_| want.memory_mib > 0) {
        if used.memory_mib + want.memory_mib > max {
            return Err(over(
                "max_memory_mib",
                used.memory_mib,
                want.memory_mib,
                max,
                " MiB of memory",
                RUNNING,
            ));
        }
    }
    if let Some(max) = u.max_disk_mib.filter(|_| want.disk_mib > 0) {
        if used.disk_mib + want.disk_mib > max {
            return Err(over(
                "max_disk_mib",
                used.disk_mib,
                want.disk_mib,
                max,
                " MiB of disk",
                "checkpoints and packet captures of your labs, and those being written",
            ));
        }
    }
    Ok(Some(held.reserve(caller.name(), claim, want)))
}

/// Reserves up to `most` MiB of `caller`'s disk quota for `claim` (a capture that stops when
/// its file is full): what is left of the quota, at most `most`. `None`: no disk quota, take
/// `most`. 409 `quota_exceeded` when less than 1 MiB is left.
pub(crate) fn disk_reserve_upto(
    db: &kobako_state::Db,
    caller: &Caller,
    claim: ops::Claim,
    most: i64,
    what: &str,
) -> ApiResult<(i64, Option<ops::Reservation>)> {
    let Some(max) = caller.user.max_disk_mib.filter(|_| !caller.local) else {
        return Ok((most, None));
    };
    let left = {
        let held = ops::reservations();
        let used = quota_usage(db, caller.name(), &held, Some(&claim), true)?;
        max - used.disk_mib
    };
    let want = ops::Usage {
        disk_mib: left.clamp(1, most.max(1)),
        ..Default::default()
    };
    // Checked again with the reservation taken in one step (another request may have taken
    // some meanwhile).
    let r = quota_reserve(db, caller, claim, want, what)?;
    Ok((want.disk_mib, r))
}

/// The VMs and memory `lab` runs when it is up.
pub(crate) fn lab_usage(lab: &Lab) -> ops::Usage {
    ops::Usage {
        vms: lab.vms().count() as i64,
        memory_mib: lab.vms().map(|v| v.memory.0 as i64).sum(),
        disk_mib: 0,
    }
}

/// Reserves `caller`'s quota for every VM of `lab` (being brought up, restarted, restored or
/// having VMs started), beside the caller's other labs, functions and reservations.
pub(crate) async fn reserve_lab(
    st: &AppState,
    caller: &Caller,
    lab: &Lab,
) -> ApiResult<Option<ops::Reservation>> {
    let (c, want, name) = (
        caller.clone(),
        lab_usage(lab),
        lab.name.as_str().to_string(),
    );
    st.db
        .run(move |db| {
            quota_reserve(
                db,
                &c,
                ops::Claim::Lab(name.clone()),
                want,
                &format!("lab '{name}'"),
            )
        })
        .await
}

/// Whether `lab` alone fits `caller`'s quota (422 `quota_exceeded` otherwise: the lab file
/// asks for more than the quota allows at all). What runs is checked at `up` ([`reserve_lab`]).
fn quota_check(caller: &Caller, lab: &Lab) -> ApiResult<()> {
    let want = lab_usage(lab);
    let over = |what: &str, want: i64, max: i64, unit: &str| {
        ApiError::unprocessable(
            "quota_exceeded",
            format!(
                "quota exceeded: lab '{}' needs {want}{unit} {what}, more than your quota of {max}{unit}; make the lab smaller or ask an admin for a larger quota",
                lab.name.as_str()
            ),
        )
    };
    if let Some(max) = caller.user.max_vms {
        if want.vms > max {
            return Err(over("VMs", want.vms, max, ""));
        }
    }
    if let Some(max) = caller.user.max_memory_mib {
        if want.memory_mib > max {
            return Err(over("of memory", want.memory_mib, max, " MiB"));
        }
    }
    Ok(())
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

// ---- links ---------------------------------------------------------------------------------

/// A link change the host refused is the impairment's fault (422); the rest as every lab error.
fn link_err(e: kobako_lab::controller::LabError) -> ApiError {
    match e {
        kobako_lab::controller::LabError::Net { source, .. } => {
            ApiError::unprocessable("invalid_impairment", source.to_string())
        }
        e => e.into(),
    }
}

/// The lab (may change, is up) and its link `link`.
pub(crate) async fn running_link(
    st: &AppState,
    caller: &Caller,
    lab: &str,
    link: &str,
) -> ApiResult<spec::Link> {
    let row = lab_for(st, caller, lab, true).await?;
    let spec_lab: Lab = serde_json::from_value(row.spec.clone()).map_err(ApiError::internal)?;
    let Some(l) = spec_lab.link(link).cloned() else {
        let names: Vec<&str> = spec_lab.links.iter().map(|l| l.name.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "lab '{lab}' has no link '{link}' (links: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )));
    };
    if !matches!(
        row.state,
        LabState::Ready | LabState::Degraded | LabState::Starting
    ) {
        return Err(ApiError::conflict(format!(
            "lab '{lab}' is {}: POST /api/v1/labs/{lab}/up first",
            row.state
        )));
    }
    Ok(l)
}

/// The link as stored after a change.
async fn link_info(st: &AppState, lab: &str, l: &spec::Link) -> ApiResult<LinkInfo> {
    let (l2, k2) = (lab.to_string(), l.name.as_str().to_string());
    let row = st
        .db
        .run(move |db| Ok(db.links(&l2)?.into_iter().find(|x| x.name == k2)))
        .await?;
    Ok(LinkInfo {
        name: l.name.as_str().to_string(),
        endpoints: l.endpoints.iter().map(|e| e.to_string()).collect(),
        up: row.as_ref().map(|r| r.up).unwrap_or(true),
        impairment: row.and_then(|r| r.impairment),
    })
}

async fn set_link(
    st: AppState,
    caller: Caller,
    lab: String,
    link: String,
    up: bool,
) -> ApiResult<Json<LinkInfo>> {
    let l = running_link(&st, &caller, &lab, &link).await?;
    let (l2, k2) = (lab.clone(), link.clone());
    tokio::task::spawn_blocking(move || kobako_lab::controller::set_link_state(&l2, &k2, up))
        .await
        .map_err(ApiError::internal)?
        .map_err(link_err)?;
    Ok(Json(link_info(&st, &lab, &l).await?))
}

/// Heal a link (both ends' taps up).
#[utoipa::path(post, path = "/api/v1/labs/{name}/links/{link}/up", tag = "links",
    params(("name" = String, Path, description = "Lab name"), ("link" = String, Path, description = "Link name")),
    responses((status = 200, description = "Link up", body = LinkInfo)))]
pub async fn link_up(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((name, link)): ApiPath<(String, String)>,
) -> ApiResult<Json<LinkInfo>> {
    set_link(st, caller, name, link, true).await
}

/// Cut a link (both ends' taps down: no frame crosses it).
#[utoipa::path(post, path = "/api/v1/labs/{name}/links/{link}/down", tag = "links",
    params(("name" = String, Path, description = "Lab name"), ("link" = String, Path, description = "Link name")),
    responses((status = 200, description = "Link down", body = LinkInfo)))]
pub async fn link_down(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((name, link)): ApiPath<(String, String)>,
) -> ApiResult<Json<LinkInfo>> {
    set_link(st, caller, name, link, false).await
}

/// An impairment in lab file notation (`delay: 20ms`, `loss: 1%`, `rate: 10mbit`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImpairRequest {
    /// e.g. `20ms`
    pub delay: Option<String>,
    /// e.g. `5ms`
    pub jitter: Option<String>,
    /// e.g. `1%`
    pub loss: Option<String>,
    /// e.g. `10mbit`
    pub rate: Option<String>,
    pub corrupt: Option<String>,
    pub duplicate: Option<String>,
    pub reorder: Option<String>,
}

fn parse_impair(r: &ImpairRequest) -> ApiResult<spec::Impairment> {
    fn p<T: std::str::FromStr>(what: &str, v: &Option<String>) -> ApiResult<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        v.as_deref()
            .map(|s| {
                s.parse::<T>().map_err(|e| {
                    ApiError::unprocessable("invalid_impairment", format!("{what} '{s}': {e}"))
                })
            })
            .transpose()
    }
    let chance = |what: &str, v: &Option<String>| -> ApiResult<Option<spec::Chance>> {
        Ok(p::<spec::Percent>(what, v)?.map(|percent| spec::Chance {
            percent,
            correlation: spec::Percent(0),
        }))
    };
    Ok(spec::Impairment {
        delay: p("delay", &r.delay)?,
        jitter: p("jitter", &r.jitter)?,
        loss: chance("loss", &r.loss)?,
        rate: p("rate", &r.rate)?,
        corrupt: chance("corrupt", &r.corrupt)?,
        duplicate: chance("duplicate", &r.duplicate)?,
        reorder: chance("reorder", &r.reorder)?,
    })
}

async fn impair(
    st: AppState,
    caller: Caller,
    lab: String,
    link: String,
    imp: Option<spec::Impairment>,
) -> ApiResult<Json<LinkInfo>> {
    let l = running_link(&st, &caller, &lab, &link).await?;
    let (l2, k2) = (lab.clone(), link.clone());
    tokio::task::spawn_blocking(move || kobako_lab::controller::impair(&l2, &k2, imp))
        .await
        .map_err(ApiError::internal)?
        .map_err(link_err)?;
    Ok(Json(link_info(&st, &lab, &l).await?))
}

/// Set a link's impairment (delay, jitter, loss, rate, ...), both directions, live.
#[utoipa::path(post, path = "/api/v1/labs/{name}/links/{link}/impair", tag = "links",
    params(("name" = String, Path, description = "Lab name"), ("link" = String, Path, description = "Link name")),
    request_body = ImpairRequest,
    responses((status = 200, description = "Applied", body = LinkInfo)))]
pub async fn link_impair(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((name, link)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ImpairRequest>,
) -> ApiResult<Json<LinkInfo>> {
    let imp = parse_impair(&req)?;
    impair(st, caller, name, link, Some(imp)).await
}

/// Remove a link's impairment.
#[utoipa::path(delete, path = "/api/v1/labs/{name}/links/{link}/impair", tag = "links",
    params(("name" = String, Path, description = "Lab name"), ("link" = String, Path, description = "Link name")),
    responses((status = 200, description = "Cleared", body = LinkInfo)))]
pub async fn link_clear(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((name, link)): ApiPath<(String, String)>,
) -> ApiResult<Json<LinkInfo>> {
    impair(st, caller, name, link, None).await
}

// ---- operations ----------------------------------------------------------------------------

/// Recent operations (yours; admins and viewers: everyone's).
#[utoipa::path(get, path = "/api/v1/operations", tag = "operations",
    responses((status = 200, description = "Newest first (at most 100)", body = [Operation])))]
pub async fn list_operations(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Operation>>> {
    let user = (caller.user.role == crate::auth::Role::Member).then(|| caller.name().to_string());
    Ok(Json(
        st.db
            .run(move |db| ops::list(db, user.as_deref(), 100))
            .await?,
    ))
}

async fn find_operation(st: &AppState, id: &str) -> ApiResult<Operation> {
    let i = id.to_string();
    st.db
        .run(move |db| ops::get(db, &i))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no operation '{id}'")))
}

/// One operation and its progress.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses((status = 200, description = "The operation", body = Operation)))]
pub async fn get_operation(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Operation>> {
    let op = find_operation(&st, &id).await?;
    // Another user's operation is not there for a member (404, as for an unknown id).
    if caller.user.role == crate::auth::Role::Member && op.user != caller.name() {
        return Err(ApiError::not_found(format!("no operation '{id}'")));
    }
    Ok(Json(op))
}

/// Cancel a running scenario run: its remaining steps are skipped and its faults undone (as
/// Ctrl-C does to `kobako scenario run`); the operation then ends `cancelled`, still with its
/// report. Only scenario runs (`lab.scenario`) can be cancelled; members cancel their own
/// operations, admins any.
#[utoipa::path(post, path = "/api/v1/operations/{id}/cancel", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses((status = 202, description = "Cancel requested; poll the operation until it is `cancelled`", body = Operation)))]
pub async fn cancel_operation(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let op = find_operation(&st, &id).await?;
    match caller.user.role {
        crate::auth::Role::Admin => {}
        crate::auth::Role::Member if op.user == caller.name() => {}
        crate::auth::Role::Member => {
            return Err(ApiError::not_found(format!("no operation '{id}'")))
        }
        crate::auth::Role::Viewer => {
            return Err(ApiError::forbidden("viewers cannot cancel operations"))
        }
    }
    if op.state != "running" {
        return Err(ApiError::conflict(format!(
            "operation '{id}' has already ended ({}): nothing to cancel",
            op.state
        )));
    }
    let why = format!("cancelled by {}", caller.name());
    match st.cancels.cancel(&id, &why) {
        ops::CancelOutcome::Requested | ops::CancelOutcome::AlreadyRequested => {}
        ops::CancelOutcome::NotCancellable => {
            return Err(ApiError::conflict(format!(
                "operations of kind '{}' cannot be cancelled (only scenario runs, lab.scenario, can): wait for it to end (GET /api/v1/operations/{id})",
                op.kind
            )))
        }
    }
    Ok((StatusCode::ACCEPTED, Json(find_operation(&st, &id).await?)))
}

#[cfg(test)]
mod quota_tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::auth::{Role, User};

    /// A member with these quotas; each test its own name (reservations are per process).
    fn member(name: &str, max_vms: Option<i64>, max_disk_mib: Option<i64>) -> Caller {
        Caller {
            user: User {
                name: name.into(),
                role: Role::Member,
                max_vms,
                max_memory_mib: None,
                max_disk_mib,
                created_ms: 0,
            },
            local: false,
            cred: crate::auth::Credential::ApiToken { id: "t".into() },
        }
    }

    fn db(dir: &std::path::Path) -> kobako_state::Db {
        let db = kobako_state::Db::open_in(dir).unwrap();
        db.migrate_server().unwrap();
        db
    }

    #[test]
    fn concurrent_reservations_never_share_the_last_of_a_quota() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(db(dir.path()));
        let caller = member("ann1", Some(3), None);
        let go = Arc::new(Barrier::new(8));
        let results: Vec<_> = (0..8)
            .map(|i| {
                let (db, caller, go) = (db.clone(), caller.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    let want = ops::Usage {
                        vms: 1,
                        ..Default::default()
                    };
                    let claim = ops::Claim::Lab(format!("l{i}"));
                    quota_reserve(&db, &caller, claim, want, &format!("lab 'l{i}'"))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let held: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(|h| h.as_ref()))
            .collect();
        assert_eq!(held.len(), 3, "exactly the quota is reserved");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.code, "quota_exceeded");
            assert_eq!(e.status, StatusCode::CONFLICT);
            assert!(e.message.contains("max_vms"), "{}", e.message);
        }
        // A reservation released (its operation ended) frees its share.
        drop(results);
        let again = quota_reserve(
            &db,
            &caller,
            ops::Claim::Lab("l9".into()),
            ops::Usage {
                vms: 3,
                ..Default::default()
            },
            "lab 'l9'",
        )
        .unwrap();
        assert!(again.is_some());
    }

    #[test]
    fn a_reservation_of_a_thing_stands_for_it_and_is_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let caller = member("ann2", Some(2), None);
        let want = ops::Usage {
            vms: 2,
            ..Default::default()
        };
        let a = quota_reserve(&db, &caller, ops::Claim::Lab("a".into()), want, "lab 'a'").unwrap();
        // Checking `a` again (a restart) skips its own reservation; another lab does not fit.
        assert!(quota_reserve(&db, &caller, ops::Claim::Lab("a".into()), want, "lab 'a'").is_ok());
        let e =
            quota_reserve(&db, &caller, ops::Claim::Lab("b".into()), want, "lab 'b'").unwrap_err();
        assert!(e.message.contains("2 VM(s) in use of 2"), "{}", e.message);
        drop(a);
        // Other users' reservations and callers without quotas are not limited.
        assert!(member("ann2", None, None).user.max_vms.is_none());
        assert!(quota_reserve(
            &db,
            &member("ann2", None, None),
            ops::Claim::Lab("b".into()),
            want,
            "b"
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn disk_reservations_take_what_is_left_and_refuse_when_nothing_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let caller = member("ann3", None, Some(10));
        let (got, h1) =
            disk_reserve_upto(&db, &caller, ops::Claim::Disk("c1".into()), 64, "capture").unwrap();
        assert_eq!(got, 10, "all that is left, not the 64 asked");
        assert!(h1.is_some());
        let e = disk_reserve_upto(&db, &caller, ops::Claim::Disk("c2".into()), 64, "capture")
            .unwrap_err();
        assert_eq!(e.code, "quota_exceeded");
        assert!(e.message.contains("max_disk_mib"), "{}", e.message);
        drop(h1);
        let (got, _h) =
            disk_reserve_upto(&db, &caller, ops::Claim::Disk("c3".into()), 4, "capture").unwrap();
        assert_eq!(got, 4);
    }
}
