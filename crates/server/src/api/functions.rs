//! `/functions`: function as a VM — deploy (an operation: one boot and a warm snapshot), invoke
//! (synchronous: request body on stdin, a fresh clone per invocation), list, remove.
//!
//! The function's concurrency limit holds across the CLI and the API alike (slots are `flock`s
//! in the function's directory): an invocation that finds every slot busy for longer than the
//! function's timeout (at least 30 s) gets 429. The per-invocation timeout is enforced in the
//! guest (`timed_out: true`, exit 124). Members see, invoke and remove their own functions,
//! admins every function, viewers only list.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kobako_lab::functions::{self, Function, Invocation};
use kobako_lab::spec::{self, HostLimits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiBytes, ApiError, ApiJson, ApiPath, ApiResult};
use crate::ops::{self, Operation};
use crate::AppState;

/// A deployed function.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionInfo {
    pub name: String,
    pub owner: Option<String>,
    pub image: String,
    pub memory_mib: u32,
    /// `sh -c` handler: stdin is the request body, stdout the answer.
    pub run: String,
    pub timeout_secs: u64,
    /// Invocations at the same time, at most.
    pub concurrency: u32,
    pub deployed_ms: i64,
    /// Cold boot of the VM that became its warm snapshot.
    pub boot_ms: u64,
    pub snapshot_bytes: u64,
}

impl From<Function> for FunctionInfo {
    fn from(f: Function) -> Self {
        FunctionInfo {
            name: f.name,
            owner: f.owner,
            image: f.image,
            memory_mib: f.memory_mib,
            run: f.run,
            timeout_secs: f.timeout_secs,
            concurrency: f.concurrency,
            deployed_ms: f.deployed_ms,
            boot_ms: f.boot_ms,
            snapshot_bytes: f.snapshot_bytes,
        }
    }
}

fn default_image() -> String {
    "tiny".into()
}
fn default_memory() -> String {
    "128M".into()
}
fn default_timeout() -> u64 {
    30
}
fn default_concurrency() -> u32 {
    2
}

/// A function to deploy (replaces one of the same name).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFunction {
    /// 1-32 lowercase letters, digits or `-`.
    pub name: String,
    /// `sh -c` handler.
    pub run: String,
    /// A stored image name (default `tiny`).
    #[serde(default = "default_image")]
    pub image: String,
    /// Guest memory, e.g. `128M`.
    #[serde(default = "default_memory")]
    pub memory: String,
    /// Seconds an invocation may run (default 30).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Invocations at the same time, at most (default 2).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
}

/// What an invocation returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationResult {
    pub function: String,
    /// The clone it ran in (destroyed since).
    pub clone: String,
    /// Standard output (UTF-8, lossy).
    pub stdout: String,
    pub stderr: String,
    /// The exit status a shell would report (128 + signal; 124 on timeout).
    pub exit: i32,
    pub timed_out: bool,
    /// Milliseconds: slot_wait, restore, identity, run, destroy, total.
    #[schema(value_type = Object)]
    pub timings: serde_json::Value,
}

impl From<Invocation> for InvocationResult {
    fn from(i: Invocation) -> Self {
        InvocationResult {
            exit: i.exit_code(),
            function: i.function,
            clone: i.clone,
            stdout: String::from_utf8_lossy(&i.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&i.stderr).into_owned(),
            timed_out: i.timed_out,
            timings: serde_json::to_value(&i.timings).unwrap_or_default(),
        }
    }
}

/// The function `name` if the caller may see it (`write`: change or invoke it).
async fn function_for(caller: &Caller, name: &str, write: bool) -> ApiResult<Function> {
    if write {
        caller.require_write()?;
    }
    let n = name.to_string();
    let f = tokio::task::spawn_blocking(move || functions::get(&n))
        .await
        .map_err(ApiError::internal)??;
    let owner = f.owner.as_deref();
    // Another member's function is not there for this caller (404, no owner named).
    if !caller.can_see(owner) {
        return Err(ApiError::not_found(format!("no function '{name}'")));
    }
    if write && !caller.can_change(owner) {
        return Err(ApiError::forbidden(format!(
            "function '{name}': user '{}' is a {} and may use it but not change it",
            caller.name(),
            caller.user.role.as_str()
        )));
    }
    Ok(f)
}

/// Functions you may see.
#[utoipa::path(get, path = "/api/v1/functions", tag = "functions",
    responses((status = 200, description = "Functions", body = [FunctionInfo])))]
pub async fn list_functions(caller: Caller) -> ApiResult<Json<Vec<FunctionInfo>>> {
    let all = tokio::task::spawn_blocking(functions::list)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        all.into_iter()
            .filter(|f| caller.can_see(f.owner.as_deref()))
            .map(Into::into)
            .collect(),
    ))
}

/// Deploy a function: its image boots once and is kept as a warm snapshot. 202 and an
/// operation (its result is the function).
#[utoipa::path(post, path = "/api/v1/functions", tag = "functions",
    request_body = NewFunction,
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn deploy_function(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewFunction>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    caller.require_write()?;
    let name = body.name.clone();
    // Replacing someone else's function is changing it.
    if let Ok(old) = functions::get(&name) {
        if !caller.can_change(old.owner.as_deref()) {
            return Err(ApiError::conflict(format!(
                "a function named '{name}' exists and is not yours: pick another name"
            )));
        }
    }
    if body.run.trim().is_empty() {
        return Err(ApiError::bad_request("run: the handler command is empty"));
    }
    if body.concurrency == 0 || body.timeout_secs == 0 {
        return Err(ApiError::bad_request(
            "concurrency and timeout_secs must be at least 1",
        ));
    }
    let memory = kobako_runtime::config::parse_mib(&body.memory)
        .map_err(|e| ApiError::bad_request(format!("memory: {e}")))?;
    let hold = fn_quota_check(&st, &caller, &name, body.concurrency, memory).await?;
    let image_ok = !body.image.is_empty()
        && body
            .image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !image_ok {
        return Err(ApiError::bad_request(format!(
            "image '{}': a stored image name (GET /api/v1/images)",
            body.image
        )));
    }
    // The function's VM as a one-VM lab: the same image and kernel resolution as labs.
    let yaml = format!(
        "name: fn\nnodes:\n  f:\n    vms:\n      v: {{ image: {}, memory: {memory}M }}\n",
        body.image
    );
    let lab = spec::load_str("function", &yaml, &HostLimits::detect())
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("no lab"))?;
    let vm = lab
        .vms()
        .next()
        .cloned()
        .ok_or_else(|| ApiError::internal("no VM"))?;
    let boot = st.hooks.boot.clone();
    let rt = st.hooks.runtime.clone();
    let owner = (!caller.local).then(|| caller.name().to_string());
    let task = move |_, _, _, progress: ops::OpProgress| -> ops::TaskFuture {
        crate::ops::boxed(async move {
            let _hold = hold;
            let vm_name = format!("fn-{}-warm", body.name);
            let cfg = tokio::task::spawn_blocking(move || boot.vm_config(&vm, &vm_name))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let owned = cfg.owned_paths.clone();
            let f = Function {
                name: body.name,
                owner,
                image: body.image,
                memory_mib: memory,
                run: body.run,
                timeout_secs: body.timeout_secs,
                concurrency: body.concurrency,
                deployed_ms: 0,
                boot_ms: 0,
                snapshot_bytes: 0,
            };
            let r = functions::deploy(rt, f, cfg, &progress).await;
            let _ = kobako_runtime::vmdir::remove_paths(&owned);
            let f = r.map_err(|e| e.to_string())?;
            serde_json::to_value(FunctionInfo::from(f)).map_err(|e| e.to_string())
        })
    };
    let o = ops::start_task(&st, None, "fn.deploy", caller.name().to_string(), task).await?;
    Ok((StatusCode::ACCEPTED, Json(o)))
}

/// A deployed function reserves `concurrency` VMs of `memory` MiB of its owner's quota (its
/// clones can all run at once), beside the owner's labs that are up and what other requests
/// are starting. The reservation is returned to be held until the deployment is registered.
async fn fn_quota_check(
    st: &AppState,
    caller: &Caller,
    name: &str,
    concurrency: u32,
    memory: u32,
) -> ApiResult<Option<ops::Reservation>> {
    let want = ops::Usage {
        vms: i64::from(concurrency),
        memory_mib: i64::from(concurrency) * i64::from(memory),
        disk_mib: 0,
    };
    let c = caller.clone();
    let (claim, what) = (
        ops::Claim::Function(name.to_string()),
        format!("function '{name}' ({concurrency} concurrent clones of {memory} MiB)"),
    );
    st.db
        .run(move |db| crate::api::quota::quota_reserve(db, &c, claim, want, &what))
        .await
}

/// Invoke a function: the request body is its stdin; it runs in a fresh clone of the warm
/// snapshot, destroyed afterwards. 200 with its output and exit status (a failing handler is
/// still a 200: see `exit`); 429 when every slot stayed busy.
#[utoipa::path(post, path = "/api/v1/functions/{name}/invoke", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Ran", body = InvocationResult)))]
pub async fn invoke_function(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Json<InvocationResult>> {
    let f = function_for(&caller, &name, true).await?;
    // Its clones run within what the deployment reserved; this refuses them when the quota
    // no longer holds it (lowered by an admin since).
    drop(fn_quota_check(&st, &caller, &name, f.concurrency, f.memory_mib).await?);
    let inv = functions::invoke(st.hooks.runtime.clone(), &name, body.to_vec()).await?;
    Ok(Json(inv.into()))
}

/// Remove a function (running invocations finish in their clones).
#[utoipa::path(delete, path = "/api/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 204, description = "Removed")))]
pub async fn delete_function(
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    function_for(&caller, &name, true).await?;
    tokio::task::spawn_blocking(move || functions::remove(&name))
        .await
        .map_err(ApiError::internal)??;
    Ok(StatusCode::NO_CONTENT)
}
