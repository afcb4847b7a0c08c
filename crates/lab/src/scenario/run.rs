//! Running a scenario against a lab: the steps in order, then the undo of their faults.

use std::sync::Arc;
use std::time::Instant;

use kobako_runtime::{Runtime, VmDir};

use super::model::*;
use super::report::{Report, StepResult};
use super::steps::run_step;
use crate::controller::{self, LabError, LabRecord, Progress, Resolver, Result};
use crate::spec::Impairment;

pub(super) fn other(e: impl std::fmt::Display) -> LabError {
    LabError::Other(e.to_string())
}

/// Undo bookkeeping: link states/impairments before the run, paused VMs.
pub(super) struct Undo {
    pub(super) links: Vec<kobako_state::LinkRow>,
    pub(super) touched: Vec<String>,
    pub(super) paused: Vec<String>,
}

async fn cleanup(rt: &Arc<dyn Runtime>, lab: &str, undo: &Undo) -> Vec<String> {
    let mut done = Vec::new();
    for v in &undo.paused {
        if rt.resume(&VmDir::for_name(v)).await.is_ok() {
            done.push(format!("resumed {v}"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in &undo.touched {
        if !seen.insert(l.clone()) {
            continue;
        }
        let before = undo.links.iter().find(|r| &r.name == l);
        let (up, imp) = match before {
            Some(r) => (
                r.up,
                r.impairment
                    .clone()
                    .and_then(|v| serde_json::from_value::<Impairment>(v).ok()),
            ),
            None => (true, None),
        };
        let a = controller::impair(lab, l, imp);
        let b = controller::set_link_state(lab, l, up);
        if a.is_ok() && b.is_ok() {
            done.push(format!(
                "link {l}: back to {}{}",
                if up { "up" } else { "down" },
                if imp.is_some() {
                    " with its impairment"
                } else {
                    ""
                }
            ));
        } else {
            done.push(format!("link {l}: could not be restored"));
        }
    }
    done
}

/// Runs scenario `s` against running lab `lab`.
pub async fn run(
    rt: Arc<dyn Runtime>,
    s: &Scenario,
    lab: &str,
    resolve: &Resolver,
    progress: &dyn Progress,
) -> Result<Report> {
    let rec = LabRecord::load(lab).ok_or_else(|| LabError::NotFound(lab.into()))?;
    let db = controller::db()?;
    let mut undo = Undo {
        links: db.links(&rec.name)?,
        touched: Vec::new(),
        paused: Vec::new(),
    };
    let started_ms = kobako_state::now_ms();
    let t0 = Instant::now();
    let mut steps = Vec::new();
    let mut failed = false;
    let mut interrupted = false;
    for (i, st) in s.steps.iter().enumerate() {
        let title = st.title(i);
        let action = st.actions().first().copied().unwrap_or("?").to_string();
        if failed || interrupted {
            steps.push(StepResult {
                index: i + 1,
                name: title,
                action,
                status: "skipped".into(),
                started_ms: t0.elapsed().as_millis() as u64,
                duration_ms: 0,
                expected: None,
                observed: None,
                message: None,
                metrics: serde_json::json!({}),
            });
            continue;
        }
        if let Some(a) = st.after {
            tokio::time::sleep(a.duration()).await;
        }
        let ts = t0.elapsed().as_millis() as u64;
        let t = Instant::now();
        let r = tokio::select! {
            r = run_step(&rt, lab, st, &mut undo, resolve, progress) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        let dur = t.elapsed().as_millis() as u64;
        let mut res = StepResult {
            index: i + 1,
            name: title.clone(),
            action,
            status: "passed".into(),
            started_ms: ts,
            duration_ms: dur,
            expected: None,
            observed: None,
            message: None,
            metrics: serde_json::json!({}),
        };
        match r {
            None => {
                interrupted = true;
                res.status = "failed".into();
                res.message = Some("interrupted (Ctrl-C)".into());
            }
            Some(Err(e)) => {
                failed = true;
                res.status = "failed".into();
                res.message = Some(e.to_string());
            }
            Some(Ok(o)) => {
                res.expected = o.expected;
                res.observed = o.observed;
                res.metrics = o.metrics;
                if let Some(f) = o.failure {
                    failed = true;
                    res.status = "failed".into();
                    res.message = Some(f);
                }
            }
        }
        progress.event(&format!(
            "[{:>6} ms] {} {}{}{}",
            ts,
            if res.status == "passed" {
                "ok  "
            } else {
                "FAIL"
            },
            title,
            res.observed
                .as_ref()
                .map(|o| format!(": {o}"))
                .unwrap_or_default(),
            res.message
                .as_ref()
                .map(|m| format!(" — {m}"))
                .unwrap_or_default()
        ));
        steps.push(res);
    }
    let cleanup = cleanup(&rt, lab, &undo).await;
    for c in &cleanup {
        progress.event(&format!("cleanup: {c}"));
    }
    Ok(Report {
        scenario: s.name.clone(),
        lab: lab.into(),
        passed: !failed && !interrupted,
        started_ms,
        duration_ms: t0.elapsed().as_millis() as u64,
        steps,
        cleanup,
    })
}
