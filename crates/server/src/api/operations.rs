//! `/operations`: the operations of this server (lab up/down, scenario runs, ...), listed,
//! shown and cancelled.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::ops::{self, Operation};
use crate::AppState;

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
