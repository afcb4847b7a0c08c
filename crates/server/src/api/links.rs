//! `/labs/{name}/links`: a running lab's links cut, healed and impaired live, and
//! [`LinkInfo`], a link with its live state; `/labs/{name}/counters`: the traffic counters of
//! every VM interface (what the topology view draws on its edges).

use axum::extract::State;
use axum::Json;
use kobako_lab::spec::{self, Lab};
use kobako_state::LabState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::lab_for;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::AppState;

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

/// Traffic counters of one VM interface, read from its host port; from the VM's side.
#[derive(Debug, Serialize, ToSchema)]
pub struct IfaceCountersInfo {
    /// `node.vm`.
    pub vm: String,
    /// The guest's interface name.
    pub iface: String,
    /// `link:NAME`, `network:NAME` or `node-network`.
    pub attach: String,
    pub sent_bytes: u64,
    pub sent_packets: u64,
    pub received_bytes: u64,
    pub received_packets: u64,
    /// Frames dropped on the host port.
    pub dropped: u64,
}

/// Traffic counters of every VM interface of a running lab (counted since each VM started;
/// a client polls and takes differences for rates). A lab that is not up has none: `[]`.
#[utoipa::path(get, path = "/api/v1/labs/{name}/counters", tag = "links",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 200, description = "Counters per VM interface", body = [IfaceCountersInfo]),
        (status = 404, description = "No such lab (or not yours)")))]
pub async fn lab_counters(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<IfaceCountersInfo>>> {
    let row = lab_for(&st, &caller, &name, false).await?;
    if !matches!(
        row.state,
        LabState::Ready | LabState::Degraded | LabState::Starting
    ) {
        return Ok(Json(Vec::new()));
    }
    let counters = tokio::task::spawn_blocking(move || kobako_lab::controller::counters(&name))
        .await
        .map_err(ApiError::internal)?;
    let counters = match counters {
        Ok(c) => c,
        // Taken down between the state check and the read.
        Err(kobako_lab::controller::LabError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(
        counters
            .into_iter()
            .map(|c| IfaceCountersInfo {
                vm: c.vm,
                iface: c.iface,
                attach: c.attach,
                sent_bytes: c.sent_bytes,
                sent_packets: c.sent_packets,
                received_bytes: c.received_bytes,
                received_packets: c.received_packets,
                dropped: c.dropped,
            })
            .collect(),
    ))
}
