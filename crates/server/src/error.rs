//! The API's one error shape: `{"error": {"code", "message"}}` with a real status code.
//!
//! Handlers return [`ApiError`]; extractor rejections (bad JSON, unknown fields, wrong content
//! type, body too large, bad path or query parameters) are turned into it by [`ApiJson`],
//! [`ApiPath`] and [`ApiQuery`], so a client never sees axum's plain-text rejections. Internal
//! failures are logged with their cause and answered with a generic message.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `invalid_lab`, `quota_exceeded`, ...).
    pub code: String,
    /// One sentence for humans, naming the fix where there is one.
    pub message: String,
    /// Extra structured detail (lab file errors: file, line, column, path, message, fix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
    pub fn unauthorized(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
    }
    pub fn forbidden(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "conflict", m)
    }
    pub fn unprocessable(code: &'static str, m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, m)
    }
    pub fn unavailable(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
    }
    /// A failure inside the server: the cause is logged, the client gets a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error (logged by the server)",
        )
    }
    pub fn with_details(mut self, d: serde_json::Value) -> ApiError {
        self.details = Some(d);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<kobako_state::StateError> for ApiError {
    fn from(e: kobako_state::StateError) -> ApiError {
        match e {
            kobako_state::StateError::Busy { .. } => ApiError::conflict(e.to_string()),
            e => ApiError::internal(e),
        }
    }
}

impl ApiError {
    /// A `Retry-After` of `secs` seconds (429, 503).
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
}

/// The lab controller's errors, by what the caller can do about them: a lab that is not up
/// is a conflict (bring it up), a name that is not there 404, a bad name 400, a state that
/// refuses the action 409; host, runtime and task failures are the server's (500, logged).
/// Handlers that know more (an impairment the host refused, a capture on a stopped VM)
/// match those variants first and hand the rest here.
impl From<kobako_lab::controller::LabError> for ApiError {
    fn from(e: kobako_lab::controller::LabError) -> ApiError {
        use kobako_lab::controller::LabError;
        match e {
            LabError::NotFound(lab) => ApiError::conflict(format!(
                "lab '{lab}' is not up: POST /api/v1/labs/{lab}/up first"
            )),
            LabError::State(s) => s.into(),
            LabError::NoSuch(m) => ApiError::not_found(m),
            LabError::Ambiguous(m) | LabError::InvalidName(m) => ApiError::bad_request(m),
            LabError::Conflict(m) => ApiError::conflict(m),
            e => ApiError::internal(e),
        }
    }
}

/// The runtime's errors, by what the caller can do: no such VM 404, one that exists or is
/// not running 409, a configuration the host refuses 422, an agent that is gone 503, the
/// guest saying no 422; QMP, I/O and boot failures are the server's (500, logged).
impl From<kobako_runtime::RuntimeError> for ApiError {
    fn from(e: kobako_runtime::RuntimeError) -> ApiError {
        use kobako_runtime::RuntimeError;
        let m = e.to_string();
        match e {
            RuntimeError::NotFound(_) => ApiError::not_found(m),
            RuntimeError::Exists(_) | RuntimeError::NotRunning(_) => ApiError::conflict(m),
            RuntimeError::Invalid(_) | RuntimeError::NoSuchFile { .. } => {
                ApiError::unprocessable("invalid_config", m)
            }
            RuntimeError::AgentGone(_) => ApiError::unavailable(m),
            RuntimeError::Agent(_) => ApiError::unprocessable("guest_failed", m),
            e => ApiError::internal(e),
        }
    }
}

/// A function's errors: unknown 404, all slots busy 429 (retry in a second), a bad name or
/// limit 400; anything else is the function failing to deploy or run (422).
impl From<kobako_lab::functions::FunctionError> for ApiError {
    fn from(e: kobako_lab::functions::FunctionError) -> ApiError {
        use kobako_lab::functions::FunctionError;
        let m = e.to_string();
        match e {
            FunctionError::NotFound(_) => ApiError::not_found(m),
            FunctionError::Busy { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", m).retry_after(1)
            }
            FunctionError::InvalidName(_) | FunctionError::ZeroLimit => ApiError::bad_request(m),
            _ => ApiError::unprocessable("function_failed", m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r {
            JsonRejection::JsonDataError(e) => {
                // serde's message names the field ("unknown field `x`", "missing field `y`").
                let msg = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text());
                ApiError::unprocessable("invalid_body", format!("request body: {msg}"))
            }
            JsonRejection::JsonSyntaxError(e) => {
                let msg = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text());
                ApiError::bad_request(format!("request body is not valid JSON: {msg}"))
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            other => body_error(&other, other.status(), || other.body_text()),
        }
    }
}

/// An error reading a request body: 408 when the client paused longer than
/// [`crate::BODY_TIMEOUT`], else [`body_rejection`] with `status` and `text`.
pub fn body_error(
    e: &(dyn std::error::Error + 'static),
    status: StatusCode,
    text: impl FnOnce() -> String,
) -> ApiError {
    if body_stalled(e) {
        body_timeout()
    } else {
        body_rejection(status, text())
    }
}

/// Whether reading a body failed because the client paused longer than
/// [`crate::BODY_TIMEOUT`] (somewhere in the error's chain of sources).
fn body_stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// 408 for a body that stopped arriving.
fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body stopped arriving (no data for {} s); nothing was done — send it again without pausing",
            crate::BODY_TIMEOUT.as_secs()
        ),
    )
}

/// Rejections of reading the body itself (too large, broken stream).
fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            "request body too large for this endpoint",
        )
    } else {
        ApiError::new(status, "bad_request", text)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(format!("path parameter: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("query parameter: {}", r.body_text()))
    }
}

/// `axum::Json` with rejections in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// `axum::extract::Path` with rejections in the API's error shape.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// `axum::extract::Query` with rejections in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// 404 for paths no route matches.
pub async fn route_not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!(
            "no such endpoint: {} (the API is described at /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

/// 405 for a known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method (see /api/v1/openapi.json)",
    )
}

/// The catch-panic layer's answer: a generic 500 (the panic is logged, never sent).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!("handler panicked: {what}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal server error (logged by the server)",
    )
    .into_response()
}

/// The raw body (`Bytes`) with rejections (too large: 413) in the API's error shape.
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|r| body_error(&r, r.status(), || r.body_text()))
    }
}
