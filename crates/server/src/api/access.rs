//! Who may see and change a lab: [`lab_for`] loads a lab for a caller (404 as if it did not
//! exist when they may not see it, 403 when they may see but not change it). Used by every
//! handler that names a lab, so none of them depends on `labs` for it.

use kobako_state::LabRow;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Loads a lab the caller may see (`write`: may change); 404 / 403 otherwise.
pub(crate) async fn lab_for(
    st: &AppState,
    caller: &Caller,
    name: &str,
    write: bool,
) -> ApiResult<LabRow> {
    if write {
        caller.require_write()?;
    }
    let n = name.to_string();
    let row = st
        .db
        .run(move |db| Ok(db.lab(&n)?))
        .await?
        .ok_or_else(|| not_found(name))?;
    check_access(caller, name, row.owner.as_deref(), write)?;
    Ok(row)
}

pub(super) fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("no lab '{name}' (GET /api/v1/labs lists them)"))
}

/// 404 when `caller` may not see a lab owned by `owner` (as if it did not exist: no owner is
/// named), 403 when `write` and the caller may see but not change it.
pub(super) fn check_access(
    caller: &Caller,
    name: &str,
    owner: Option<&str>,
    write: bool,
) -> ApiResult<()> {
    if !caller.can_see(owner) {
        return Err(not_found(name));
    }
    if write && !caller.can_change(owner) {
        return Err(ApiError::forbidden(format!(
            "lab '{name}': user '{}' is a {} and may read this lab but not change it",
            caller.name(),
            caller.user.role.as_str()
        )));
    }
    Ok(())
}
