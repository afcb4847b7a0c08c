//! The web UI at `/` (the files `kobako-web` embeds from `web/dist`), next to the API under
//! `/api/v1`: every path no API route matches comes here. Under `/api/` it stays the API's
//! JSON 404; elsewhere GET and HEAD get the file or, for an app route such as `/labs/x`,
//! `index.html` (the app routes in the browser). Hashed assets are cached for a year,
//! `index.html` is revalidated with its ETag on every load.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::{route_not_found, ApiError};

/// The router's fallback.
pub async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return route_not_found(uri).await.into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} {path}: the web UI is read with GET; the API is under /api/v1"),
        )
        .into_response();
    }
    if !kobako_web::embedded() {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, kobako_web::NOT_BUILT).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return r;
    }
    let Some(asset) = kobako_web::lookup(path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no file {path} in the web UI"),
        )
        .into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
    let mut b = Response::builder()
        .header(header::ETAG, asset.etag)
        .header(header::CACHE_CONTROL, asset.cache_control())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if asset.path == "index.html" {
        b = b
            .header(header::X_FRAME_OPTIONS, "DENY")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                 connect-src 'self'; frame-ancestors 'none'",
            );
    }
    if fresh {
        return b
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(asset.data)
    };
    b.status(StatusCode::OK)
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::CONTENT_LENGTH, asset.data.len())
        .body(body)
        .unwrap_or_default()
}
