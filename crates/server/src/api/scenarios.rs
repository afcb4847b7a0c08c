//! Scenario runs over the API: `POST /api/v1/labs/{name}/scenarios` with a scenario file checks
//! it (structure, assertions, names against the lab) before anything runs, then runs it as an
//! operation (`lab.scenario`): its progress lines are the live step lines, its result the
//! report (JSON, JUnit XML, HTML). A failed scenario is a failed operation that still carries
//! its report; `POST /api/v1/operations/{id}/cancel` stops a run (faults undone, operation
//! `cancelled`, report with the steps not run as skipped). Changing a lab's links and VMs, it needs write access to the lab, like `up`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kobako_lab::controller::LabRecord;
use kobako_lab::scenario;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::access::lab_for;
use crate::api::labfile;
use crate::auth::Caller;
use crate::error::{ApiBytes, ApiError, ApiPath, ApiQuery, ApiResult};
use crate::ops::{self, Operation};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ScenarioQuery {
    /// The file's name as shown in errors (default `scenario.yaml`).
    pub file: Option<String>,
}

fn invalid(errs: kobako_lab::spec::SpecErrors, what: &str) -> ApiError {
    labfile::invalid(
        errs,
        "invalid_scenario",
        &format!("{what}; nothing was run"),
    )
}

/// Run a scenario (the YAML of `kobako scenario run`) against the running lab: 202 and an
/// operation whose progress is the step lines and whose result is the report
/// (`{passed, report, junit, html}`); the operation fails when the scenario does.
#[utoipa::path(post, path = "/api/v1/labs/{name}/scenarios", tag = "labs",
    params(("name" = String, Path, description = "Lab name"), ScenarioQuery),
    request_body(content = String, content_type = "application/yaml", description = "The scenario file"),
    responses((status = 202, description = "Started", body = Operation)))]
pub async fn run_scenario(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ScenarioQuery>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    lab_for(&st, &caller, &name, true).await?;
    let text = labfile::text(&body, "scenario file")?;
    let file = labfile::display_name(q.file, "scenario.yaml")?;
    // Only an admin's scenario may read WASM modules from the server's disk (`file` then
    // also places them); parsing runs on the blocking pool, within the parser's limits.
    let admin = caller.is_admin();
    let s = tokio::task::spawn_blocking(move || {
        if admin {
            scenario::load_str(&file, &text)
        } else {
            scenario::load_str_untrusted(&file, &text)
        }
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| invalid(e, "in the scenario file"))?;
    let n = name.clone();
    let rec = tokio::task::spawn_blocking(move || LabRecord::load(&n))
        .await
        .map_err(ApiError::internal)?
        .filter(|r| {
            r.vms
                .iter()
                .any(|v| kobako_runtime::VmDir::for_name(v).vm_pid().is_some())
        })
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "lab '{name}' is not running: bring it up first (POST /api/v1/labs/{name}/up)"
            ))
        })?;
    scenario::check_against(&s, &rec.lab)
        .map_err(|e| invalid(e, &format!("against lab '{name}'")))?;
    let lab = name.clone();
    let op = ops::start_custom(
        &st,
        name,
        "lab.scenario",
        caller.name().to_string(),
        move |st, sink, cancelled| async move {
            let rt = st.hooks.runtime.clone();
            let boot = st.hooks.boot.clone();
            let r = scenario::run_until(rt, &s, &lab, &boot, &*sink, cancelled.wait()).await;
            match r {
                Err(e) => ops::Ended {
                    result: None,
                    error: Some(e.to_string()),
                    stopped: None,
                },
                Ok(rep) => {
                    let error = (!rep.passed).then(|| {
                        let f = rep.steps.iter().find(|s| s.status == "failed");
                        format!(
                            "scenario '{}' failed{}",
                            rep.scenario,
                            f.map(|f| format!(
                                ": step {} '{}' at {} ms: {}",
                                f.id,
                                f.name,
                                f.started_ms,
                                f.message.as_deref().unwrap_or("")
                            ))
                            .unwrap_or_default()
                        )
                    });
                    let stopped = rep.interrupted.clone();
                    let v = serde_json::json!({
                        "passed": rep.passed,
                        "junit": rep.junit(),
                        "html": rep.html(),
                        "report": rep,
                    });
                    ops::Ended {
                        result: Some(v),
                        error,
                        stopped,
                    }
                }
            }
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}
