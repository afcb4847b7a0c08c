//! Lab and scenario files from a request: where a member's text enters the server.
//!
//! The text is parsed on the blocking pool (a large or hostile document never holds an async
//! worker) within the parser's limits (`kobako_lab::spec::yaml::Limits::FILES`): a document
//! over them is a 413 (size) or 400 (values, depth) naming the limit, any other mistake a 422
//! with every error located. A member's lab may name only store objects: a field that names a
//! host file is a 403 listing each such field ([`refuse_host_paths`]).

use axum::http::StatusCode;
use kobako_lab::spec::{self, HostLimits, Lab, Limit, SpecErrors};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// The name a file has in error messages: the `?file=` query or `default`. It is only a
/// label (never opened): printable, at most 128 bytes.
pub fn display_name(q: Option<String>, default: &str) -> ApiResult<String> {
    let Some(f) = q else {
        return Ok(default.to_string());
    };
    if f.is_empty() || f.len() > 128 || f.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "`file` (the name errors give the document) must be 1 to 128 printable characters",
        ));
    }
    Ok(f)
}

/// The API error for a document that could not be read.
pub fn invalid(errs: SpecErrors, code: &'static str, what: &str) -> ApiError {
    let first = errs.0.first().map(|e| e.to_string()).unwrap_or_default();
    let details = serde_json::to_value(&errs).unwrap_or_default();
    match errs.limit() {
        Some(limit) => {
            let status = match limit {
                Limit::Size => StatusCode::PAYLOAD_TOO_LARGE,
                Limit::Values | Limit::Depth => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, "document_too_large", first).with_details(details)
        }
        None => ApiError::unprocessable(
            code,
            format!("{} problem(s) {what}; first: {first}", errs.0.len()),
        )
        .with_details(details),
    }
}

/// A request body that must be a text document (`what`: "lab file", "scenario file").
pub fn text(body: &[u8], what: &str) -> ApiResult<String> {
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request(format!("the {what} is not UTF-8 text")))
}

/// Parses and resolves a lab file (`body`, named `file` in errors: the `?file=` label; a
/// label ending in `.clab.yml` makes it a containerlab topology) on the blocking pool;
/// returns the name it was given and its labs.
pub async fn load_labs(body: &[u8], file: Option<String>) -> ApiResult<(String, Vec<Lab>)> {
    let text = text(body, "lab file")?;
    let file = display_name(file, "lab.yaml")?;
    let name = file.clone();
    let labs = tokio::task::spawn_blocking(move || {
        // A containerlab topology (named *.clab.yml) is converted first, as `kobako up` does.
        if spec::clab::is_clab_path(std::path::Path::new(&name)) {
            let conv = spec::clab::convert(&name, &text, None, &[])?;
            let converted = format!("{name} (converted from containerlab)");
            return spec::load_str(&converted, &conv.to_yaml(&name), &HostLimits::detect());
        }
        spec::load_str(&name, &text, &HostLimits::detect())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| invalid(e, "invalid_lab", "in the lab file"))?;
    Ok((file, labs))
}

/// Refuses labs that name an image or kernel that is not there and cannot be built (the
/// server's [`crate::Hooks::missing_artifacts`]): 422 `unknown_image`, each problem in
/// `error.details`, nothing stored.
pub fn refuse_missing_artifacts<'a>(
    st: &crate::AppState,
    labs: impl IntoIterator<Item = &'a Lab>,
) -> ApiResult<()> {
    let Some(check) = &st.hooks.missing_artifacts else {
        return Ok(());
    };
    let problems: Vec<String> = labs.into_iter().flat_map(|l| check(l)).collect();
    let Some(first) = problems.first() else {
        return Ok(());
    };
    let more = match problems.len() {
        1 => String::new(),
        n => format!(" (and {} more problem(s))", n - 1),
    };
    Err(ApiError::unprocessable(
        "unknown_image",
        format!("{first}{more}; nothing was created"),
    )
    .with_details(serde_json::to_value(&problems).unwrap_or_default()))
}

/// 403 when `caller` is not an admin and a lab names a host file (image, kernel or file
/// source): every such field is listed in `error.details`, with what to write instead.
pub fn refuse_host_paths<'a>(
    caller: &Caller,
    labs: impl IntoIterator<Item = &'a Lab>,
) -> ApiResult<()> {
    if caller.is_admin() {
        return Ok(());
    }
    let uses: Vec<_> = labs.into_iter().flat_map(|l| l.host_paths()).collect();
    let Some(first) = uses.first() else {
        return Ok(());
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "host_path_forbidden",
        format!(
            "`{}` names the server's file {}: only admins may use host paths in a lab ({} field(s) do); {}",
            first.field,
            first.path,
            uses.len(),
            first.instead
        ),
    )
    .with_details(serde_json::to_value(&uses).unwrap_or_default()))
}
