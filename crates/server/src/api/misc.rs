//! Health, images, templates, audit log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::ops::{self, Operation};
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    pub version: String,
    /// Id of the newest event (a quick database check).
    pub last_event_id: i64,
}

/// Liveness and database check (no authentication).
#[utoipa::path(get, path = "/api/v1/health", tag = "system",
    responses((status = 200, description = "Serving", body = Health)))]
pub async fn health(State(st): State<AppState>) -> ApiResult<Json<Health>> {
    let last = st
        .db
        .run(|db| Ok(db.last_event_id()?))
        .await
        .map_err(|_| ApiError::unavailable("the state database does not answer"))?;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        last_event_id: last,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageInfo {
    pub name: String,
    /// tiny, debian, import.
    #[schema(value_type = String)]
    pub kind: serde_json::Value,
    pub format: String,
    pub size: u64,
    pub virtual_size: u64,
    pub created: String,
    pub packages: Vec<String>,
    pub cloud_init: bool,
}

/// Images in the image store.
#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    responses((status = 200, description = "Images", body = [ImageInfo])))]
pub async fn list_images(_caller: Caller) -> ApiResult<Json<Vec<ImageInfo>>> {
    let list = tokio::task::spawn_blocking(|| {
        kobako_image::store::Store::at(&kobako_image::store::root()).list()
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(
        list.into_iter()
            .map(|i| {
                let m = i.manifest;
                ImageInfo {
                    name: m.name,
                    kind: serde_json::to_value(m.kind).unwrap_or_default(),
                    format: m.format,
                    size: m.size,
                    virtual_size: m.virtual_size,
                    created: m.created,
                    packages: m.packages,
                    cloud_init: m.cloud_init,
                }
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    /// `debian` (mmdebstrap minbase + systemd + agent) or `tiny`.
    pub kind: String,
    /// Image name (default: the kind).
    pub name: Option<String>,
    /// Extra Debian packages.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// Build an image (admins only): 202 and an operation with the build's progress.
#[utoipa::path(post, path = "/api/v1/images/build", tag = "images",
    request_body = BuildImage,
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn build_image(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<BuildImage>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    caller.require_admin()?;
    if !matches!(req.kind.as_str(), "debian" | "tiny") {
        return Err(ApiError::unprocessable(
            "invalid_kind",
            format!("image kind '{}': debian or tiny", req.kind),
        ));
    }
    let name = req.name.unwrap_or_else(|| req.kind.clone());
    kobako_image::store::validate_name(&name)
        .map_err(|e| ApiError::unprocessable("invalid_name", e.to_string()))?;
    if let Some(p) = req.packages.iter().find(|p| {
        p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    }) {
        return Err(ApiError::unprocessable(
            "invalid_package",
            format!("package name '{p}' is not a Debian package name"),
        ));
    }
    let op = ops::start_image_build(&st, req.kind, name, req.packages, caller.name().to_string())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateInfo {
    pub name: String,
    pub description: Option<String>,
    /// The template file (a node definition in YAML).
    pub text: String,
}

/// Node templates shipped with kobako (use with `template: NAME` in a lab file).
#[utoipa::path(get, path = "/api/v1/templates", tag = "labs",
    responses((status = 200, description = "Templates", body = [TemplateInfo])))]
pub async fn list_templates(_caller: Caller) -> Json<Vec<TemplateInfo>> {
    Json(
        kobako_lab::spec::templates::BUILTIN
            .iter()
            .map(|(name, text)| TemplateInfo {
                name: name.to_string(),
                description: text
                    .lines()
                    .find_map(|l| l.strip_prefix("description:"))
                    .map(|d| d.trim().trim_matches('"').to_string()),
                text: text.to_string(),
            })
            .collect(),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub ts_ms: i64,
    pub user: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries before this id (paging back).
    pub before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Who changed what, newest first (admins only).
#[utoipa::path(get, path = "/api/v1/audit", tag = "system",
    params(AuditQuery),
    responses((status = 200, description = "Audit entries", body = [AuditEntry])))]
pub async fn audit_log(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    caller.require_admin()?;
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let before = q.before.unwrap_or(i64::MAX);
    let v = st
        .db
        .run(move |db| {
            Ok(db
                .audit_before(before, limit)?
                .into_iter()
                .map(|a| AuditEntry {
                    id: a.id,
                    ts_ms: a.ts_ms,
                    user: a.user,
                    method: a.method,
                    path: a.path,
                    status: a.status,
                })
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(v))
}
