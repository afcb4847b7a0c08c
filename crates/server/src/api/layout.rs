//! Where the web UI draws a lab's boxes: `GET`/`PUT /labs/{name}/layout`.
//!
//! The layout is presentation, not part of the lab: it is kept by the server per lab
//! (`<state>/server/layouts/<lab>.json`, written atomically) instead of in the lab file, whose
//! schema rejects unknown keys on purpose and whose every change would otherwise show up in
//! `up`'s plan, in `save` and in diffs. Deleting the lab removes it. Reading needs the right to
//! see the lab; saving, the right to change it (viewers may move boxes, but only for
//! themselves).

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::State;
use axum::Json;
use kobako_state::now_ms;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::lab_for;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::AppState;

/// Most positions in one layout.
pub const MAX_ITEMS: usize = 2000;

/// A point of the drawing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// Positions of the drawing's items (`node:NAME`, `net:NAME`), as the UI names them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub positions: BTreeMap<String, Point>,
    /// Who saved it last (set by the server).
    #[serde(default)]
    pub user: Option<String>,
    /// When (set by the server; 0: never saved).
    #[serde(default)]
    pub updated_ms: i64,
}

fn file(st: &AppState, lab: &str) -> PathBuf {
    crate::lab_files::layout_file(&st.state_dir, lab)
}

/// The lab's saved layout (no positions when none was saved).
#[utoipa::path(get, path = "/api/v1/labs/{name}/layout", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 200, description = "The layout", body = Layout)))]
pub async fn get_layout(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(lab): ApiPath<String>,
) -> ApiResult<Json<Layout>> {
    lab_for(&st, &caller, &lab, false).await?;
    let p = file(&st, &lab);
    match tokio::fs::read(&p).await {
        Ok(b) => Ok(Json(serde_json::from_slice(&b).unwrap_or_default())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Json(Layout::default())),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Save where the lab's items are drawn (replaces the saved layout).
#[utoipa::path(put, path = "/api/v1/labs/{name}/layout", tag = "labs",
    params(("name" = String, Path, description = "Lab name")),
    request_body = Layout,
    responses((status = 200, description = "Saved", body = Layout)))]
pub async fn put_layout(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(lab): ApiPath<String>,
    ApiJson(mut layout): ApiJson<Layout>,
) -> ApiResult<Json<Layout>> {
    lab_for(&st, &caller, &lab, true).await?;
    if layout.positions.len() > MAX_ITEMS {
        return Err(ApiError::unprocessable(
            "invalid_layout",
            format!(
                "{} positions: a layout holds at most {MAX_ITEMS}",
                layout.positions.len()
            ),
        ));
    }
    for (k, p) in &layout.positions {
        if k.is_empty() || k.len() > 200 {
            return Err(ApiError::unprocessable(
                "invalid_layout",
                "position names are 1 to 200 characters (node:NAME, net:NAME)",
            ));
        }
        if !(p.x.is_finite() && p.y.is_finite() && p.x.abs() <= 1e6 && p.y.abs() <= 1e6) {
            return Err(ApiError::unprocessable(
                "invalid_layout",
                format!("position of '{k}': x and y are numbers within ±1000000"),
            ));
        }
    }
    layout.user = Some(caller.name().to_string());
    layout.updated_ms = now_ms();
    let p = file(&st, &lab);
    let body = serde_json::to_vec(&layout).map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &p)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(layout))
}
