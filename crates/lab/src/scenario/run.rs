//! Running a scenario against a lab: the steps with their timing (`at`, `after`, `every`/`for`,
//! `within`/`since`, parallel groups), then the undo of their faults.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kobako_runtime::Runtime;

use super::ctx::{Ctx, Outcome};
use super::model::*;
use super::report::{Report, Sample, StepResult};
use super::steps::run_once;
use crate::controller::{self, BootSettings, LabError, LabRecord, Progress, Result};

struct Exec<'a> {
    ctx: Ctx<'a>,
    failed: AtomicBool,
    results: Mutex<BTreeMap<String, StepResult>>,
}

/// Checks the assertions of `st` against `o`'s numbers; the first that fails, if any.
fn asserts(st: &Step, o: &Outcome, elapsed_ms: Option<u64>) -> Option<String> {
    for a in st.assert.iter().filter_map(|a| Assertion::parse(a).ok()) {
        let v = if a.metric == "elapsed_ms" {
            match elapsed_ms {
                Some(e) => Some(e as f64),
                None => continue,
            }
        } else {
            o.metrics.get(&a.metric).and_then(|v| v.as_f64())
        };
        match v {
            None => return Some(format!("{a}: no {} measured", a.metric)),
            Some(v) if !a.holds(v) => {
                return Some(format!("{a} does not hold: {} = {v}", a.metric))
            }
            _ => {}
        }
    }
    None
}

fn expected_text(st: &Step, o: &Outcome) -> Option<String> {
    let mut parts: Vec<String> = o.expected.iter().cloned().collect();
    parts.extend(st.assert.iter().cloned());
    if let Some(w) = st.within {
        parts.push(format!(
            "within {w}{}",
            st.since
                .as_ref()
                .map(|s| format!(" of '{s}'"))
                .unwrap_or_default()
        ));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

impl Exec<'_> {
    fn event(&self, line: String) {
        self.ctx.progress.event(&line);
    }

    /// Runs `steps` in order (ids under `prefix`).
    fn seq<'s>(
        &'s self,
        steps: &'s [Step],
        prefix: &'s str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 's>> {
        Box::pin(async move {
            for (i, st) in steps.iter().enumerate() {
                if self.failed.load(Ordering::SeqCst) {
                    return;
                }
                let id = if prefix.is_empty() {
                    format!("{}", i + 1)
                } else {
                    format!("{prefix}.{}", i + 1)
                };
                self.step(st, id).await;
            }
        })
    }

    fn step<'s>(
        &'s self,
        st: &'s Step,
        id: String,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 's>> {
        Box::pin(async move {
            let ctx = &self.ctx;
            if let Some(at) = st.at {
                let due = ctx.t0 + at.duration();
                tokio::time::sleep_until(due.into()).await;
            }
            if let Some(a) = st.after {
                tokio::time::sleep(a.duration()).await;
            }
            let title = st.title(&id);
            let start = Instant::now();
            let started_ms = ctx.now_ms();
            self.event(format!("[{started_ms:>6} ms] …    {title}"));
            let mut res = StepResult {
                index: 0,
                id: id.clone(),
                name: title.clone(),
                action: st.action().into(),
                status: "passed".into(),
                started_ms,
                duration_ms: 0,
                expected: None,
                observed: None,
                message: None,
                metrics: serde_json::json!({}),
                samples: Vec::new(),
            };
            if let Some(group) = &st.parallel {
                let branches = group
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.step(s, format!("{id}.{}", i + 1)));
                super::ctx::join_all(branches).await;
                if self.failed.load(Ordering::SeqCst) {
                    res.status = "failed".into();
                    res.message = Some("a step of the group failed".into());
                }
            } else if let Some(group) = &st.steps {
                self.seq(group, &id).await;
                if self.failed.load(Ordering::SeqCst) {
                    res.status = "failed".into();
                    res.message = Some("a step of the group failed".into());
                }
            } else {
                self.leaf(st, &mut res, start).await;
            }
            res.duration_ms = start.elapsed().as_millis() as u64;
            if let Some(n) = &st.name {
                ctx.marks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(n.clone(), Instant::now());
            }
            let ok = res.status == "passed";
            if !ok && st.parallel.is_none() && st.steps.is_none() {
                self.failed.store(true, Ordering::SeqCst);
            }
            self.event(format!(
                "[{:>6} ms] {} {}{}{}",
                ctx.now_ms(),
                if ok { "ok  " } else { "FAIL" },
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
            self.results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, res);
        })
    }

    /// One action step, with its repetition and retry.
    async fn leaf(&self, st: &Step, res: &mut StepResult, start: Instant) {
        let ctx = &self.ctx;
        let interval = st
            .every
            .map(|e| e.duration())
            .unwrap_or(Duration::from_millis(500));
        let deadline = st.within.map(|w| {
            let from = st
                .since
                .as_ref()
                .and_then(|s| {
                    ctx.marks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(s)
                        .copied()
                })
                .unwrap_or(start);
            (from, from + w.duration())
        });
        let repeat_until = match (st.every, st.for_) {
            (Some(_), Some(f)) if st.within.is_none() => Some(start + f.duration()),
            _ => None,
        };
        let mut first_failure: Option<(u64, String)> = None;
        loop {
            let tick = Instant::now();
            let t_ms = ctx.now_ms();
            let attempt = run_once(ctx, st).await;
            let mut o = match attempt {
                Ok(o) => o,
                Err(e) => Outcome {
                    failure: Some(e.to_string()),
                    ..Default::default()
                },
            };
            if !st.keep {
                ctx.add_faults(&o.faults);
            }
            let elapsed = deadline.map(|(from, _)| Instant::now().saturating_duration_since(from));
            if o.failure.is_none() {
                o.failure = asserts(st, &o, elapsed.map(|e| e.as_millis() as u64));
            }
            res.expected = expected_text(st, &o);
            res.observed = o.observed.clone();
            let metrics = serde_json::Value::Object(o.metrics.clone());
            let repeated = repeat_until.is_some() || deadline.is_some();
            if repeated {
                res.samples.push(Sample {
                    t_ms,
                    ok: o.failure.is_none(),
                    metrics: metrics.clone(),
                });
            }
            res.metrics = metrics;
            if let Some((from, end)) = deadline {
                if o.failure.is_none() {
                    let e = Instant::now().saturating_duration_since(from).as_millis() as u64;
                    res.metrics["elapsed_ms"] = e.into();
                    res.observed = Some(format!(
                        "{} (after {e} ms)",
                        res.observed.clone().unwrap_or_else(|| "held".into())
                    ));
                    break;
                }
                if Instant::now() + interval > end || self.failed.load(Ordering::SeqCst) {
                    res.status = "failed".into();
                    res.message = Some(format!(
                        "not within {}: {}",
                        st.within.map(|w| w.to_string()).unwrap_or_default(),
                        o.failure.unwrap_or_default()
                    ));
                    return;
                }
            } else if let Some(until) = repeat_until {
                if let Some(f) = o.failure.take() {
                    first_failure.get_or_insert((t_ms, f));
                }
                if Instant::now() + interval > until || self.failed.load(Ordering::SeqCst) {
                    break;
                }
            } else {
                if let Some(f) = o.failure {
                    res.status = "failed".into();
                    res.message = Some(f);
                    return;
                }
                // A fault held for `for`, then undone.
                if let (Some(f), true) = (st.for_, st.is_fault()) {
                    tokio::time::sleep(f.duration()).await;
                    let done = ctx.undo(Some(&o.faults)).await;
                    res.observed = Some(format!(
                        "{}held {f}, then undone: {}",
                        res.observed
                            .as_ref()
                            .map(|o| format!("{o}; "))
                            .unwrap_or_default(),
                        done.join("; ")
                    ));
                }
                break;
            }
            tokio::time::sleep_until((tick + interval).into()).await;
        }
        if let Some((t, f)) = first_failure {
            let n = res.samples.len();
            let bad = res.samples.iter().filter(|s| !s.ok).count();
            let pct = (n - bad) as f64 * 100.0 / n.max(1) as f64;
            let min = st
                .expect
                .as_ref()
                .and_then(|e| e.min_pass_pct)
                .unwrap_or(100.0);
            res.metrics["pass_pct"] = ((pct * 10.0).round() / 10.0).into();
            let summary = format!("{} of {n} samples passed ({pct:.1}%)", n - bad);
            if pct < min {
                res.status = "failed".into();
                res.message = Some(format!(
                    "{summary}, needed {min}%; first failure at {t} ms: {f}"
                ));
            } else {
                res.message = Some(format!("{summary}; first failure at {t} ms: {f}"));
            }
            res.expected = Some(format!(
                "{}{}",
                res.expected
                    .as_ref()
                    .map(|e| format!("{e} in "))
                    .unwrap_or_default(),
                if min < 100.0 {
                    format!("≥ {min}% of samples")
                } else {
                    "every sample".into()
                }
            ));
        } else if repeat_until.is_some() {
            res.metrics["pass_pct"] = 100.into();
            res.observed = Some(format!(
                "all {} samples passed; last: {}",
                res.samples.len(),
                res.observed.clone().unwrap_or_default()
            ));
        }
    }
}

/// Runs scenario `s` against running lab `lab`; Ctrl-C stops it (faults are still undone).
pub async fn run(
    rt: Arc<dyn Runtime>,
    s: &Scenario,
    lab: &str,
    boot: &BootSettings,
    progress: &dyn Progress,
) -> Result<Report> {
    run_until(rt, s, lab, boot, progress, async {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted (Ctrl-C)".to_string()
    })
    .await
}

/// Runs scenario `s` against running lab `lab` until it ends or `stop` completes with the
/// reason ("interrupted (Ctrl-C)", "cancelled by alice"): the steps not run are reported
/// as skipped with that reason, and faults are undone as after a normal end. Names are
/// checked against the lab before any step runs.
pub async fn run_until(
    rt: Arc<dyn Runtime>,
    s: &Scenario,
    lab: &str,
    boot: &BootSettings,
    progress: &dyn Progress,
    stop: impl Future<Output = String>,
) -> Result<Report> {
    let rec = LabRecord::load(lab).ok_or_else(|| LabError::NotFound(lab.into()))?;
    check_against(s, &rec.lab)?;
    let db = controller::db()?;
    let links_before = db.links(&rec.name)?;
    let started_ms = kobako_state::now_ms();
    let t0 = Instant::now();
    let ex = Exec {
        ctx: Ctx {
            rt,
            lab: lab.into(),
            rec,
            boot,
            progress,
            t0,
            links_before,
            faults: Mutex::new(Vec::new()),
            marks: Mutex::new(BTreeMap::new()),
            vars: Mutex::new(BTreeMap::new()),
        },
        failed: AtomicBool::new(false),
        results: Mutex::new(BTreeMap::new()),
    };
    let interrupted = tokio::select! {
        _ = ex.seq(&s.steps, "") => None,
        why = stop => Some(why),
    };
    if let Some(why) = &interrupted {
        progress.event(&format!("{why}: undoing faults"));
    }
    let cleanup = if s.keep {
        let kept = ex
            .ctx
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        vec![format!("kept {kept} faults (keep: true)")]
    } else {
        ex.ctx.undo(None).await
    };
    for c in &cleanup {
        progress.event(&format!("cleanup: {c}"));
    }
    let mut results = ex.results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut steps = Vec::new();
    for (i, (id, _, st)) in walk(&s.steps).into_iter().enumerate() {
        let mut r = results.remove(&id).unwrap_or_else(|| StepResult {
            index: 0,
            id: id.clone(),
            name: st.title(&id),
            action: st.action().into(),
            status: "skipped".into(),
            started_ms: t0.elapsed().as_millis() as u64,
            duration_ms: 0,
            expected: None,
            observed: None,
            message: interrupted.clone(),
            metrics: serde_json::json!({}),
            samples: Vec::new(),
        });
        r.index = i + 1;
        steps.push(r);
    }
    let failed = steps.iter().any(|r| r.status == "failed");
    Ok(Report {
        scenario: s.name.clone(),
        lab: lab.into(),
        passed: !failed && interrupted.is_none(),
        interrupted,
        started_ms,
        duration_ms: t0.elapsed().as_millis() as u64,
        steps,
        cleanup,
    })
}
