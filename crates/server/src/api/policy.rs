//! A lab's host-network policy: `GET`/`PUT /labs/{name}/policy`, and the publish checks at
//! create and at up.
//!
//! Host ports and egress are an admin's decision (see `kobako_lab::controller::netpolicy`): a
//! member's lab publishes host ports ≥ 1024 except 22 and the server's own ports, and its uplink
//! reaches no private or link-local range. An admin widens one lab with `PUT` (stored with the
//! lab, bound to its owner). Anyone who may see the lab may read its policy.
//!
//! Where the publish rules are checked: at create (what no `up` could ever do: 403), at `up`
//! before the operation starts (also conflicts with other labs and host services: 409), and
//! again by the controller when it publishes (the port could be taken in between), under a
//! host-wide lock.

use axum::extract::State;
use axum::Json;
use kobako_lab::controller::netpolicy::{
    self, Asker, NetPolicy, OwnerInfo, Principal, PublishDenied,
};
use kobako_lab::spec::Lab;
use kobako_state::LabRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::lab_for;
use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::AppState;

/// A lab's policy as shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub lab: String,
    /// The lab's owner (the policy applies to this owner's lab only).
    pub owner: Option<String>,
    /// Host ports the lab may publish besides the defaults (`"80"`, `"8000-8100"`).
    pub publish_ports: Vec<String>,
    /// Private/link-local ranges its uplink may reach (`"10.0.0.0/8"`).
    pub uplink_allow: Vec<String>,
    /// The admin who set it (none: defaults only).
    pub set_by: Option<String>,
    pub updated_ms: Option<i64>,
    /// Whether the defaults bind this lab (its owner is not an admin).
    pub restricted: bool,
    /// What every member's lab gets without a policy.
    pub defaults: Defaults,
}

/// The member defaults.
#[derive(Debug, Serialize, ToSchema)]
pub struct Defaults {
    /// Lowest host port a member's lab may publish.
    pub min_publish_port: u16,
    /// Host ports never published by a member's lab without a policy (22, the server's ports).
    pub never_publish: Vec<u16>,
    /// Ranges an uplink never reaches without a policy; the host's own addresses never.
    pub uplink_blocked: Vec<String>,
}

/// The body of `PUT`: replaces the lab's policy (empty lists: defaults only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    #[serde(default)]
    pub publish_ports: Vec<String>,
    #[serde(default)]
    pub uplink_allow: Vec<String>,
}

/// Tells the lab controller of this process the server's own listen ports and who a lab's
/// owner is (by the users table, read when a lab is brought up, so role changes count).
pub fn configure_controller(st: &AppState, server_ports: Vec<u16>) {
    let pool = st.db.clone();
    netpolicy::configure(netpolicy::HostNetConfig {
        server_ports,
        owner: Some(std::sync::Arc::new(move |name: &str| {
            owner_info(&pool.get(), name).ok().flatten()
        })),
    });
}

fn owner_info(db: &kobako_state::Db, name: &str) -> ApiResult<Option<OwnerInfo>> {
    Ok(auth::get_user(db, name)?.map(|u| OwnerInfo {
        admin: u.role == Role::Admin,
        since_ms: u.created_ms,
        max_vms: u.max_vms.and_then(|n| u32::try_from(n).ok()),
        max_memory_mib: u.max_memory_mib.and_then(|n| u64::try_from(n).ok()),
    }))
}

/// The principal and the policy in force for the stored lab `row`.
fn effective(db: &kobako_state::Db, row: &LabRow) -> ApiResult<(Principal, NetPolicy)> {
    let info = match row.owner.as_deref() {
        Some(o) => owner_info(db, o)?,
        None => None,
    };
    Ok(netpolicy::effective_with(
        db,
        &row.name,
        row.owner.as_deref(),
        info,
    )?)
}

fn defaults() -> Defaults {
    let mut never = vec![22];
    never.extend(netpolicy::host_config().server_ports.iter().copied());
    Defaults {
        min_publish_port: 1024,
        never_publish: never,
        uplink_blocked: netpolicy::UPLINK_BLOCKED
            .iter()
            .map(|(a, p)| format!("{a}/{p}"))
            .collect(),
    }
}

fn view(db: &kobako_state::Db, row: &LabRow) -> ApiResult<PolicyView> {
    let (who, policy) = effective(db, row)?;
    // Who set it and when, only while it is in force (a grant to a deleted user of the same
    // name is not shown).
    let stored = db
        .net_policy(&row.name)?
        .filter(|_| policy != NetPolicy::default());
    Ok(PolicyView {
        lab: row.name.clone(),
        owner: row.owner.clone(),
        publish_ports: policy.publish_ports.iter().map(|r| r.to_string()).collect(),
        uplink_allow: policy
            .uplink_allow
            .iter()
            .map(|a| a.cidr().to_string())
            .collect(),
        set_by: stored.as_ref().map(|p| p.set_by.clone()),
        updated_ms: stored.as_ref().map(|p| p.updated_ms),
        restricted: who == Principal::Member,
        defaults: defaults(),
    })
}

/// The lab's host-network policy (published ports and uplink ranges beyond the defaults).
#[utoipa::path(get, path = "/api/v1/labs/{name}/policy", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 200, description = "The policy", body = PolicyView)))]
pub async fn get_policy(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<PolicyView>> {
    let row = lab_for(&st, &caller, &name, false).await?;
    Ok(Json(st.db.run(move |db| view(db, &row)).await?))
}

/// Set the lab's host-network policy (admins only): host ports its owner may publish besides
/// the defaults, and private ranges its uplink may reach. Applies at the lab's next `up`.
#[utoipa::path(put, path = "/api/v1/labs/{name}/policy", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    request_body = PolicyBody,
    responses((status = 200, description = "Stored", body = PolicyView)))]
pub async fn put_policy(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PolicyBody>,
) -> ApiResult<Json<PolicyView>> {
    let row = lab_for(&st, &caller, &name, true).await?;
    if !caller.is_admin() && !caller.local {
        return Err(ApiError::forbidden(
            "a lab's host ports and uplink ranges are an admin's decision: ask an admin to set this lab's policy",
        ));
    }
    let invalid = |m: String| ApiError::unprocessable("invalid_policy", m);
    if body.publish_ports.len() > netpolicy::MAX_POLICY_ENTRIES
        || body.uplink_allow.len() > netpolicy::MAX_POLICY_ENTRIES
    {
        return Err(invalid(format!(
            "at most {} entries per list (use ranges such as \"8000-8100\")",
            netpolicy::MAX_POLICY_ENTRIES
        )));
    }
    let policy = NetPolicy {
        publish_ports: body
            .publish_ports
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, netpolicy::PolicyError>>()
            .map_err(|e| invalid(format!("publish_ports: {e}")))?,
        uplink_allow: body
            .uplink_allow
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, netpolicy::PolicyError>>()
            .map_err(|e| invalid(format!("uplink_allow: {e}")))?,
    };
    policy.validate().map_err(|e| invalid(e.to_string()))?;
    let value = serde_json::to_value(&policy).map_err(ApiError::internal)?;
    let by = caller.name().to_string();
    let v = st
        .db
        .run(move |db| {
            db.put_net_policy(&row.name, row.owner.as_deref(), &value, &by)?;
            db.event(
                Some(&row.name),
                None,
                "lab.policy",
                &serde_json::json!({"by": by, "policy": value}),
            )?;
            view(db, &row)
        })
        .await?;
    Ok(Json(v))
}

fn denied(e: PublishDenied) -> ApiError {
    let code = if e.is_conflict() {
        "port_in_use"
    } else {
        "port_not_allowed"
    };
    let status = if e.is_conflict() {
        axum::http::StatusCode::CONFLICT
    } else {
        axum::http::StatusCode::FORBIDDEN
    };
    ApiError::new(status, code, e.to_string())
}

/// At create: a member's labs publish only what the defaults (and a policy already granted to
/// this member for that lab name) allow (403 naming the port and the fix), and no port taken
/// now (409).
pub(crate) async fn check_create(st: &AppState, caller: &Caller, labs: &[Lab]) -> ApiResult<()> {
    if caller.local || caller.is_admin() || labs.iter().all(|l| l.publish.is_empty()) {
        return Ok(());
    }
    let owner = caller.name().to_string();
    let info = OwnerInfo {
        admin: false,
        since_ms: caller.user.created_ms,
        max_vms: None,
        max_memory_mib: None,
    };
    let labs = labs.to_vec();
    st.db
        .run(move |db| {
            for lab in &labs {
                let (_, policy) =
                    netpolicy::effective_with(db, lab.name.as_str(), Some(&owner), Some(info))?;
                netpolicy::check_allowed(
                    &lab.publish,
                    Principal::Member,
                    &policy,
                    &netpolicy::host_config().server_ports,
                )
                .map_err(|e| denied_in(lab, e))?;
                // Taken now (by a host service or a lab that is up): say so at once; `up`
                // checks again, as the port may be taken in between.
                netpolicy::check_free(db, lab, Principal::Member, Asker::Member(&owner))?
                    .map_err(|e| denied_in(lab, e))?;
            }
            Ok(())
        })
        .await
}

fn denied_in(lab: &Lab, e: PublishDenied) -> ApiError {
    let mut a = denied(e);
    a.message = format!("lab '{}': {}", lab.name.as_str(), a.message);
    a
}

/// At up, before the operation starts: the lab's owner's rules with its policy, and host ports
/// free now (not published by another lab that is up; for a member's lab, no host service on
/// them). Another member's lab is not named. The controller checks again when it publishes.
pub(crate) async fn check_up(
    st: &AppState,
    caller: &Caller,
    row: &LabRow,
    lab: &Lab,
) -> ApiResult<()> {
    if lab.publish.is_empty() {
        return Ok(());
    }
    let (caller_admin, caller_name) =
        (caller.local || caller.is_admin(), caller.name().to_string());
    let row = row.clone();
    let lab = lab.clone();
    st.db
        .run(move |db| {
            let (who, policy) = effective(db, &row)?;
            netpolicy::check_allowed(
                &lab.publish,
                who,
                &policy,
                &netpolicy::host_config().server_ports,
            )
            .map_err(|e| denied_in(&lab, e))?;
            let asker = if caller_admin {
                Asker::Admin
            } else {
                Asker::Member(&caller_name)
            };
            netpolicy::check_free(db, &lab, who, asker)?.map_err(|e| denied_in(&lab, e))
        })
        .await
}
