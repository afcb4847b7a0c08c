//! `/auth/oidc`: OpenID Connect login (see [`crate::oidc`]).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiQuery, ApiResult};
use crate::oidc::{self, Oidc};
use crate::{AppState, AuditSlot};

/// Whether OpenID Connect login is on (the web UI shows its button then).
#[derive(Debug, Serialize, ToSchema)]
pub struct OidcInfo {
    pub enabled: bool,
    /// The issuer users sign in at.
    pub issuer: Option<String>,
    /// Where to send the browser to sign in.
    pub login_url: Option<String>,
}

fn configured(st: &AppState) -> ApiResult<std::sync::Arc<Oidc>> {
    st.oidc.clone().ok_or_else(|| {
        ApiError::not_found(
            "OpenID Connect login is not configured on this server \
             (start `kobako serve` with --oidc-issuer and --oidc-client-id)",
        )
    })
}

/// Is OpenID Connect login available (no authentication).
#[utoipa::path(get, path = "/api/v1/auth/oidc", tag = "auth",
    responses((status = 200, description = "OIDC settings", body = OidcInfo)))]
pub async fn oidc_info(State(st): State<AppState>) -> Json<OidcInfo> {
    Json(match &st.oidc {
        Some(o) => OidcInfo {
            enabled: true,
            issuer: Some(o.cfg.issuer.clone()),
            login_url: Some("/api/v1/auth/oidc/login".into()),
        },
        None => OidcInfo {
            enabled: false,
            issuer: None,
            login_url: None,
        },
    })
}

/// Start an OpenID Connect login: redirects to the identity provider (no authentication).
#[utoipa::path(get, path = "/api/v1/auth/oidc/login", tag = "auth",
    responses((status = 302, description = "To the identity provider's login page")))]
pub async fn oidc_login(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let o = configured(&st)?;
    let redirect = match &o.cfg.redirect_url {
        Some(u) => u.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| {
                    !h.is_empty()
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
                })
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "no usable Host header to build the callback URL \
                         (start kobako serve with --oidc-redirect-url)",
                    )
                })?;
            format!("https://{host}/api/v1/auth/oidc/callback")
        }
    };
    let (url, binding) = tokio::task::spawn_blocking(move || o.begin(redirect))
        .await
        .map_err(ApiError::internal)??;
    // Binds the login's state to this browser: the callback must come with the same cookie.
    // Lax: the identity provider's redirect back is a top-level GET navigation.
    let cookie = format!(
        "{}={binding}; Path=/api/v1/auth/oidc; Max-Age=600; HttpOnly; Secure; SameSite=Lax",
        oidc::BINDING_COOKIE
    );
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set by the identity provider when the login failed.
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Where the identity provider sends the browser back: signs the user in and opens the UI.
#[utoipa::path(get, path = "/api/v1/auth/oidc/callback", tag = "auth",
    params(CallbackQuery),
    responses((status = 200, description = "Signed in: a page that stores the session and opens the UI", content_type = "text/html", body = String)))]
pub async fn oidc_callback(
    State(st): State<AppState>,
    headers: HeaderMap,
    axum::Extension(slot): axum::Extension<AuditSlot>,
    ApiQuery(q): ApiQuery<CallbackQuery>,
) -> ApiResult<Response> {
    let o = configured(&st)?;
    if let Some(e) = q.error {
        return Err(ApiError::unauthorized(format!(
            "the identity provider did not sign you in: {e}{}",
            q.error_description
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        )));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return Err(ApiError::bad_request(
            "`code` and `state` are required (this URL is for the identity provider's redirect)",
        ));
    };
    let o2 = o.clone();
    let binding = oidc::binding_from(&headers);
    let (sub, name) =
        tokio::task::spawn_blocking(move || o2.finish(&code, &state, binding.as_deref()))
            .await
            .map_err(ApiError::internal)??;
    slot.0.lock().unwrap_or_else(|e| e.into_inner()).user = Some(name.clone());
    let role = o.cfg.role;
    let st2 = st.clone();
    let pair = st
        .db
        .run(move |db| oidc::sign_in(&st2, db, &sub, &name, role))
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::SET_COOKIE,
                "kobako_oidc=; Path=/api/v1/auth/oidc; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
            ),
        ],
        oidc::session_page(&pair),
    )
        .into_response())
}
