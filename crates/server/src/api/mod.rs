//! The API's handlers (`/api/v1`), registered with `utoipa_axum::routes!` so every route is in
//! the OpenAPI document with the path, parameters and bodies its handler declares.

mod access;
pub mod auth_api;
pub mod captures;
pub mod checkpoints;
pub mod events;
pub mod functions;
pub mod labfile;
pub mod labs;
pub mod layout;
pub mod links;
pub mod misc;
pub mod nodes;
pub mod oidc_api;
pub mod operations;
pub mod policy;
mod quota;
pub mod scenarios;
pub mod vms;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Doc, RefOr, Response, ResponseBuilder};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kobako API",
        description = "Labs of microVMs: create from lab files, bring up/down, exec, files, consoles, events. \
Authenticate with `Authorization: Bearer TOKEN` (POST /api/v1/auth/login, or an API token). \
Errors are `{\"error\":{\"code\",\"message\"}}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    tags(
        (name = "auth"), (name = "labs"), (name = "vms"), (name = "links"),
        (name = "operations"), (name = "images"), (name = "users"), (name = "tokens"),
        (name = "events"), (name = "system"), (name = "checkpoints"), (name = "functions")
    )
)]
struct ApiDoc;

/// Routes without authentication (everything else needs a bearer token or the Unix socket).
const PUBLIC: &[&str] = &[
    "/api/v1/health",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/auth/logout",
    "/api/v1/auth/oidc",
    "/api/v1/auth/oidc/login",
    "/api/v1/auth/oidc/callback",
];

/// Every API route with its OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(misc::health))
        .routes(routes!(auth_api::login))
        .routes(routes!(auth_api::refresh))
        .routes(routes!(auth_api::logout))
        .routes(routes!(auth_api::me))
        .routes(routes!(auth_api::ticket))
        .routes(routes!(oidc_api::oidc_info))
        .routes(routes!(oidc_api::oidc_login))
        .routes(routes!(oidc_api::oidc_callback))
        .routes(routes!(auth_api::list_users, auth_api::create_user))
        .routes(routes!(
            auth_api::get_user,
            auth_api::update_user,
            auth_api::delete_user
        ))
        .routes(routes!(auth_api::list_tokens, auth_api::create_token))
        .routes(routes!(auth_api::revoke_token))
        .routes(routes!(labs::list_labs, labs::create_lab))
        .routes(routes!(labs::get_lab, labs::replace_lab, labs::delete_lab))
        .routes(routes!(layout::get_layout, layout::put_layout))
        .routes(routes!(policy::get_policy, policy::put_policy))
        .routes(routes!(labs::lab_up))
        .routes(routes!(labs::lab_down))
        .routes(routes!(labs::lab_restart))
        .routes(routes!(nodes::node_start))
        .routes(routes!(nodes::node_stop))
        .routes(routes!(nodes::node_restart))
        .routes(routes!(nodes::vm_start))
        .routes(routes!(nodes::vm_stop))
        .routes(routes!(nodes::vm_restart))
        .routes(routes!(links::lab_counters))
        .routes(routes!(links::link_up))
        .routes(routes!(links::link_down))
        .routes(routes!(links::link_impair, links::link_clear))
        .routes(routes!(captures::start_capture))
        .routes(routes!(captures::list_captures))
        .routes(routes!(captures::download_capture))
        .routes(routes!(captures::stop_capture))
        .routes(routes!(scenarios::run_scenario))
        .routes(routes!(operations::list_operations))
        .routes(routes!(operations::get_operation))
        .routes(routes!(operations::cancel_operation))
        .routes(routes!(vms::get_vm))
        .routes(routes!(vms::exec))
        .routes(routes!(vms::download, vms::upload))
        .routes(routes!(vms::console))
        .routes(routes!(vms::tty))
        .routes(routes!(misc::list_images))
        .routes(routes!(misc::build_image))
        .routes(routes!(misc::list_templates))
        .routes(routes!(misc::audit_log))
        .routes(routes!(events::events))
        .routes(routes!(
            checkpoints::list_checkpoints,
            checkpoints::create_checkpoint
        ))
        .routes(routes!(checkpoints::restore_checkpoint))
        .routes(routes!(checkpoints::delete_checkpoint))
        .routes(routes!(
            functions::list_functions,
            functions::deploy_function
        ))
        .routes(routes!(functions::invoke_function))
        .routes(routes!(functions::delete_function))
}

/// Completes the generated document: the bearer scheme, security on every non-public route,
/// and the error body as the `default` response of every operation.
pub fn finish_doc(mut doc: Doc) -> Doc {
    let comps = doc.components.get_or_insert_with(Default::default);
    comps.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or kbk_ API token")
                .build(),
        ),
    );
    let err: Response = ResponseBuilder::new()
        .description("Error: `{\"error\":{\"code\",\"message\"}}` (400 bad input, 401 no or bad credentials, 403 not allowed, 404 not found, 409 conflict or quota, 413 too large, 422 invalid content, 429 too many failed logins, 503 unavailable)")
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            op.responses
                .responses
                .entry("default".into())
                .or_insert_with(|| RefOr::T(err.clone()));
            if !public {
                op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
        }
    }
    doc
}
