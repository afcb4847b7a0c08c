//! Scenarios: ordered fault-injection and check steps run against a running lab, with a report
//! a CI job can gate on.
//!
//! ```yaml
//! name: delay-budget
//! lab: web-stack                  # or --lab
//! steps:
//!   - wait_ready: 60s
//!   - name: baseline
//!     rtt: { from: client.pc, to: 10.20.0.10, count: 3 }
//!     expect: { max_ms: 50 }
//!   - impair: { link: ab, delay: 100ms, loss: 5% }
//!   - after: 1s                   # wait before this step
//!     exec: { vm: client.pc, cmd: "wget -qO- http://10.20.0.10:8080/health" }
//!     expect: { exit: 0, stdout_contains: ok }
//!   - link: { link: ab, state: down }
//!   - sleep: 2s
//! ```
//! Every step has exactly one action (`wait_ready`, `impair`, `clear`, `link`, `exec`, `rtt`,
//! `sleep`, `pause`, `resume`, `restart`), an optional `name`, `after` and `expect`. The file is
//! checked like a lab file (line, column, path, fix). Faults are undone at the end, on failure
//! and on Ctrl-C: links get back the state and impairment they had before the run, paused VMs
//! continue. The first failed step ends the run; the rest are reported as skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_agent::proto::ExecRequest;
use kobako_runtime::{Runtime, VmDir};
use serde::{Deserialize, Serialize};

use crate::controller::{self, LabError, LabRecord, Progress, Resolver, Result};
use crate::spec::error::SpecErrors;
use crate::spec::model::Chance;
use crate::spec::units::{BitRate, Micros, Percent};
use crate::spec::Impairment;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The running lab it is for (`--lab` overrides).
    #[serde(default)]
    pub lab: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    /// Wait this long before the step.
    #[serde(default)]
    pub after: Option<Micros>,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub wait_ready: Option<Micros>,
    #[serde(default)]
    pub impair: Option<ImpairStep>,
    /// Clear the impairments of this link.
    #[serde(default)]
    pub clear: Option<String>,
    #[serde(default)]
    pub link: Option<LinkStep>,
    #[serde(default)]
    pub exec: Option<ExecStep>,
    #[serde(default)]
    pub rtt: Option<RttStep>,
    #[serde(default)]
    pub sleep: Option<Micros>,
    #[serde(default)]
    pub pause: Option<String>,
    #[serde(default)]
    pub resume: Option<String>,
    #[serde(default)]
    pub restart: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairStep {
    pub link: String,
    #[serde(default)]
    pub delay: Option<Micros>,
    #[serde(default)]
    pub jitter: Option<Micros>,
    #[serde(default)]
    pub loss: Option<Percent>,
    #[serde(default)]
    pub rate: Option<BitRate>,
    #[serde(default)]
    pub corrupt: Option<Percent>,
    #[serde(default)]
    pub duplicate: Option<Percent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpDown {
    Up,
    Down,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStep {
    pub link: String,
    pub state: UpDown,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStep {
    pub vm: String,
    /// `sh -c` command.
    pub cmd: String,
    #[serde(default)]
    pub timeout: Option<Micros>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttStep {
    pub from: String,
    pub to: String,
    #[serde(default = "three")]
    pub count: u32,
}

fn three() -> u32 {
    3
}

/// What a step must observe. Unset fields are not checked; an `exec` without `expect` must
/// exit 0.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub exit: Option<i32>,
    #[serde(default)]
    pub stdout_contains: Option<String>,
    #[serde(default)]
    pub stdout_not_contains: Option<String>,
    /// Round trip (rtt: the average), milliseconds.
    #[serde(default)]
    pub max_ms: Option<f64>,
    #[serde(default)]
    pub min_ms: Option<f64>,
    /// Packet loss of an `rtt` step, percent.
    #[serde(default)]
    pub max_loss: Option<f64>,
    #[serde(default)]
    pub min_loss: Option<f64>,
}

/// Parses and checks a scenario file.
pub fn load_str(file: &str, text: &str) -> std::result::Result<Scenario, SpecErrors> {
    let (v, mut errs) = crate::spec::parse::parse::<Scenario>(file, text);
    let Some((s, src)) = v else {
        return Err(SpecErrors(errs));
    };
    for (i, st) in s.steps.iter().enumerate() {
        let n = st.actions().len();
        if n != 1 {
            let path = crate::spec::error::Path::root().key("steps").index(i);
            errs.push(crate::spec::error::SpecError {
                file: file.into(),
                pos: src.root.get(&path).map(|n| n.pos).unwrap_or_default(),
                path,
                message: format!(
                    "step {} has {} actions: {}",
                    i + 1,
                    n,
                    if n == 0 {
                        "none".to_string()
                    } else {
                        st.actions().join(", ")
                    }
                ),
                fix: Some(
                    "give each step exactly one of wait_ready, impair, clear, link, exec, rtt, sleep, pause, resume, restart".into(),
                ),
            });
        }
    }
    if errs.is_empty() {
        Ok(s)
    } else {
        Err(SpecErrors(errs))
    }
}

impl Step {
    fn actions(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |b: bool, n| {
            if b {
                v.push(n)
            }
        };
        add(self.wait_ready.is_some(), "wait_ready");
        add(self.impair.is_some(), "impair");
        add(self.clear.is_some(), "clear");
        add(self.link.is_some(), "link");
        add(self.exec.is_some(), "exec");
        add(self.rtt.is_some(), "rtt");
        add(self.sleep.is_some(), "sleep");
        add(self.pause.is_some(), "pause");
        add(self.resume.is_some(), "resume");
        add(self.restart.is_some(), "restart");
        v
    }

    fn title(&self, i: usize) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "step {} ({})",
                i + 1,
                self.actions().first().copied().unwrap_or("?")
            )
        })
    }
}

/// The result of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub index: usize,
    pub name: String,
    pub action: String,
    /// `passed`, `failed`, `skipped`.
    pub status: String,
    /// Milliseconds from the start of the run.
    pub started_ms: u64,
    pub duration_ms: u64,
    pub expected: Option<String>,
    pub observed: Option<String>,
    pub message: Option<String>,
    /// Measured values (rtt_ms, loss_pct) for plots.
    pub metrics: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub lab: String,
    pub passed: bool,
    pub started_ms: i64,
    pub duration_ms: u64,
    pub steps: Vec<StepResult>,
    /// What was undone at the end.
    pub cleanup: Vec<String>,
}

fn other(e: impl std::fmt::Display) -> LabError {
    LabError::Other(e.to_string())
}

async fn agent(lab: &str, vm: &str) -> Result<kobako_runtime::agent::AgentClient> {
    let name = controller::resolve_vm(vm, Some(lab))?;
    let dir = VmDir::for_name(&name);
    if dir.vm_pid().is_none() {
        return Err(other(format!("VM {name} is not running")));
    }
    let (c, _) = kobako_runtime::wait_ready(&dir, Duration::from_secs(30))
        .await
        .map_err(other)?;
    Ok(c)
}

async fn sh(lab: &str, vm: &str, cmd: &str, timeout: Duration) -> Result<(i32, String, String)> {
    let c = agent(lab, vm).await?;
    let out = c
        .exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), cmd.into()],
            env: Vec::new(),
            cwd: None,
            timeout_ms: Some(timeout.as_millis() as u64),
            stdin: false,
            tty: None,
            user: None,
        })
        .await
        .map_err(other)?;
    let code = if out.timed_out {
        124
    } else {
        out.code.unwrap_or(128 + out.signal.unwrap_or(0))
    };
    Ok((
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `ping` output → (average rtt ms if any reply, loss %).
pub fn parse_ping(out: &str) -> (Option<f64>, Option<f64>) {
    let loss = out
        .lines()
        .find(|l| l.contains("packet loss"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.contains("packet loss"))?
                .trim()
                .split('%')
                .next()?
                .trim()
                .parse()
                .ok()
        });
    let avg = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok());
    (avg, loss)
}

struct Outcome {
    expected: Option<String>,
    observed: Option<String>,
    failure: Option<String>,
    metrics: serde_json::Value,
}

fn check_num(what: &str, v: Option<f64>, min: Option<f64>, max: Option<f64>) -> Option<String> {
    match v {
        None if min.is_some() || max.is_some() => Some(format!("no {what} measured")),
        Some(v) => {
            if let Some(m) = max {
                if v > m {
                    return Some(format!("{what} {v:.1} > {m}"));
                }
            }
            if let Some(m) = min {
                if v < m {
                    return Some(format!("{what} {v:.1} < {m}"));
                }
            }
            None
        }
        None => None,
    }
}

/// Undo bookkeeping: link states/impairments before the run, paused VMs.
struct Undo {
    links: Vec<kobako_state::LinkRow>,
    touched: Vec<String>,
    paused: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    rt: &Arc<dyn Runtime>,
    lab: &str,
    st: &Step,
    undo: &mut Undo,
    resolve: &Resolver,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let mut o = Outcome {
        expected: None,
        observed: None,
        failure: None,
        metrics: serde_json::json!({}),
    };
    let ex = st.expect.clone().unwrap_or_default();
    if let Some(t) = st.wait_ready {
        let deadline = Instant::now() + t.duration();
        loop {
            let db = controller::db()?;
            let vms = db.vms(lab)?;
            let not: Vec<String> = vms
                .iter()
                .filter(|r| controller::observed(r).0 != kobako_state::VmState::Ready)
                .map(|r| r.name.clone())
                .collect();
            if !vms.is_empty() && not.is_empty() {
                o.observed = Some(format!("{} VMs ready", vms.len()));
                break;
            }
            if Instant::now() > deadline {
                o.failure = Some(format!("not ready after {t}: {}", not.join(", ")));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else if let Some(i) = &st.impair {
        let chance = |p: Option<Percent>| {
            p.map(|percent| Chance {
                percent,
                correlation: Default::default(),
            })
        };
        let imp = Impairment {
            delay: i.delay,
            jitter: i.jitter,
            loss: chance(i.loss),
            rate: i.rate,
            corrupt: chance(i.corrupt),
            duplicate: chance(i.duplicate),
            reorder: None,
        };
        undo.touched.push(i.link.clone());
        controller::impair(lab, &i.link, Some(imp))?;
    } else if let Some(l) = &st.clear {
        undo.touched.push(l.clone());
        controller::impair(lab, l, None)?;
    } else if let Some(l) = &st.link {
        undo.touched.push(l.link.clone());
        controller::set_link_state(lab, &l.link, l.state == UpDown::Up)?;
    } else if let Some(e) = &st.exec {
        let timeout = e
            .timeout
            .map(|t| t.duration())
            .unwrap_or(Duration::from_secs(30));
        let (code, out, err) = sh(lab, &e.vm, &e.cmd, timeout).await?;
        let want_exit = ex.exit.unwrap_or(0);
        o.expected = Some(format!(
            "exit {want_exit}{}{}",
            ex.stdout_contains
                .as_ref()
                .map(|s| format!(", stdout contains {s:?}"))
                .unwrap_or_default(),
            ex.stdout_not_contains
                .as_ref()
                .map(|s| format!(", stdout without {s:?}"))
                .unwrap_or_default()
        ));
        let short: String = out.chars().take(400).collect();
        o.observed = Some(format!("exit {code}, stdout {short:?}"));
        o.metrics = serde_json::json!({"exit": code});
        if code != want_exit {
            o.failure = Some(format!(
                "exit {code}, expected {want_exit}{}",
                if err.trim().is_empty() {
                    String::new()
                } else {
                    format!(" (stderr: {})", err.trim())
                }
            ));
        } else if let Some(s) = ex.stdout_contains.as_ref().filter(|s| !out.contains(*s)) {
            o.failure = Some(format!("stdout does not contain {s:?}"));
        } else if let Some(s) = ex.stdout_not_contains.as_ref().filter(|s| out.contains(*s)) {
            o.failure = Some(format!("stdout contains {s:?}"));
        }
    } else if let Some(r) = &st.rtt {
        let cmd = format!("ping -c {} -W 2 {}", r.count.max(1), r.to);
        let (_, out, _) = sh(
            lab,
            &r.from,
            &cmd,
            Duration::from_secs(10 + 3 * r.count as u64),
        )
        .await?;
        let (avg, loss) = parse_ping(&out);
        o.metrics = serde_json::json!({"rtt_ms": avg, "loss_pct": loss});
        o.observed = Some(format!(
            "rtt {} ms, loss {}%",
            avg.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
            loss.map(|v| format!("{v:.0}")).unwrap_or("-".into())
        ));
        let mut want = Vec::new();
        if let Some(m) = ex.min_ms {
            want.push(format!("rtt ≥ {m} ms"));
        }
        if let Some(m) = ex.max_ms {
            want.push(format!("rtt ≤ {m} ms"));
        }
        if let Some(m) = ex.min_loss {
            want.push(format!("loss ≥ {m}%"));
        }
        if let Some(m) = ex.max_loss {
            want.push(format!("loss ≤ {m}%"));
        }
        o.expected = (!want.is_empty()).then(|| want.join(", "));
        o.failure = check_num("rtt ms", avg, ex.min_ms, ex.max_ms)
            .or_else(|| check_num("loss %", loss, ex.min_loss, ex.max_loss));
    } else if let Some(d) = st.sleep {
        tokio::time::sleep(d.duration()).await;
    } else if let Some(v) = &st.pause {
        let name = controller::resolve_vm(v, Some(lab))?;
        rt.pause(&VmDir::for_name(&name)).await.map_err(other)?;
        undo.paused.push(name);
    } else if let Some(v) = &st.resume {
        let name = controller::resolve_vm(v, Some(lab))?;
        rt.resume(&VmDir::for_name(&name)).await.map_err(other)?;
        undo.paused.retain(|p| p != &name);
    } else if let Some(t) = &st.restart {
        let target = t.strip_prefix(&format!("{lab}/")).unwrap_or(t);
        let r = controller::restart(rt.clone(), lab, Some(target), resolve, progress).await?;
        if !r.ok() {
            o.failure = Some("restarted VMs did not all become ready".into());
        }
    }
    Ok(o)
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

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Report {
    /// JUnit XML: one test case per step.
    pub fn junit(&self) -> String {
        let failures = self.steps.iter().filter(|s| s.status == "failed").count();
        let skipped = self.steps.iter().filter(|s| s.status == "skipped").count();
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
            xml(&self.scenario),
            self.steps.len(),
            self.duration_ms as f64 / 1000.0
        );
        for s in &self.steps {
            x.push_str(&format!(
                "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
                xml(&self.lab),
                xml(&s.name),
                s.duration_ms as f64 / 1000.0
            ));
            match s.status.as_str() {
                "failed" => x.push_str(&format!(
                    "<failure message=\"{}\">expected: {}\nobserved: {}\nat {} ms</failure>",
                    xml(s.message.as_deref().unwrap_or("")),
                    xml(s.expected.as_deref().unwrap_or("-")),
                    xml(s.observed.as_deref().unwrap_or("-")),
                    s.started_ms
                )),
                "skipped" => x.push_str("<skipped/>"),
                _ => {}
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("</testsuite>\n");
        x
    }

    /// A self-contained HTML page: verdict, a timeline of the steps, and the measured RTTs.
    pub fn html(&self) -> String {
        let total = self.duration_ms.max(1) as f64;
        let mut rows = String::new();
        for s in &self.steps {
            let left = s.started_ms as f64 / total * 100.0;
            let width = (s.duration_ms as f64 / total * 100.0).max(0.4);
            let color = match s.status.as_str() {
                "passed" => "#2e7d32",
                "failed" => "#c62828",
                _ => "#9e9e9e",
            };
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td><div class=bar><span style=\"left:{left:.2}%;width:{width:.2}%;background:{color}\"></span></div></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                s.index,
                xml(&s.name),
                xml(&s.status),
                s.started_ms,
                xml(s.expected.as_deref().unwrap_or("")),
                xml(s.observed.as_deref().unwrap_or("")),
                xml(s.message.as_deref().unwrap_or(""))
            ));
        }
        // RTT over time as an inline SVG polyline.
        let pts: Vec<(f64, f64)> = self
            .steps
            .iter()
            .filter_map(|s| Some((s.started_ms as f64, s.metrics.get("rtt_ms")?.as_f64()?)))
            .collect();
        let max_rtt = pts.iter().map(|p| p.1).fold(1.0f64, f64::max);
        let poly: Vec<String> = pts
            .iter()
            .map(|(t, r)| {
                format!(
                    "{:.1},{:.1}",
                    t / total * 600.0,
                    150.0 - r / max_rtt * 140.0
                )
            })
            .collect();
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>{name}</title><style>\
             body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;font-size:14px}}\
             .bar{{position:relative;width:300px;height:10px;background:#eee}}\
             .bar span{{position:absolute;top:0;height:10px}}</style></head><body>\
             <h1>{name}: {verdict}</h1><p>lab {lab}, {n} steps, {dur} ms</p>\
             <table><tr><th>#</th><th>step</th><th>status</th><th>at</th><th>timeline</th><th>expected</th><th>observed</th><th>message</th></tr>{rows}</table>\
             <h2>RTT over time (max {max_rtt:.0} ms)</h2><svg width=600 height=150 style=\"border:1px solid #ccc\">\
             <polyline fill=none stroke=#1565c0 stroke-width=2 points=\"{poly}\"/></svg>\
             <h2>Cleanup</h2><ul>{cleanup}</ul></body></html>\n",
            name = xml(&self.scenario),
            verdict = if self.passed { "PASSED" } else { "FAILED" },
            lab = xml(&self.lab),
            n = self.steps.len(),
            dur = self.duration_ms,
            poly = poly.join(" "),
            cleanup = self
                .cleanup
                .iter()
                .map(|c| format!("<li>{}</li>", xml(c)))
                .collect::<String>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_is_parsed() {
        let busybox = "3 packets transmitted, 3 packets received, 0% packet loss\nround-trip min/avg/max = 0.263/0.301/0.340 ms\n";
        assert_eq!(parse_ping(busybox), (Some(0.301), Some(0.0)));
        let lost = "2 packets transmitted, 0 packets received, 100% packet loss\n";
        assert_eq!(parse_ping(lost), (None, Some(100.0)));
        let iputils = "3 packets transmitted, 3 received, 0% packet loss, time 2003ms\nrtt min/avg/max/mdev = 0.040/0.050/0.061/0.008 ms\n";
        assert_eq!(parse_ping(iputils), (Some(0.05), Some(0.0)));
    }

    #[test]
    fn steps_need_exactly_one_action_and_unknown_keys_are_located() {
        let e = load_str(
            "s.yaml",
            "name: x\nsteps:\n  - sleep: 1s\n    exec: { vm: a.b, cmd: \"true\" }\n  - {}\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("s.yaml:3:") && text.contains("exec, sleep"),
            "{text}"
        );
        assert!(
            text.contains("s.yaml:5:") && text.contains("none"),
            "{text}"
        );
        let e = load_str("s.yaml", "name: x\nsteps:\n  - slep: 1s\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("s.yaml:3:") && text.contains("slep"),
            "{text}"
        );
        let e = load_str("s.yaml", "name: x\nsteps:\n  - sleep: soon\n").unwrap_err();
        assert!(e.to_string().contains("s.yaml:3:"), "{e}");
        let ok = load_str(
            "s.yaml",
            "name: x\nlab: l\nsteps:\n  - impair: { link: ab, delay: 100ms, loss: 5% }\n  - rtt: { from: a.h, to: 10.0.0.2 }\n    expect: { min_ms: 190 }\n",
        )
        .unwrap();
        assert_eq!(ok.steps.len(), 2);
    }

    #[test]
    fn reports_render_junit_and_html() {
        let r = Report {
            scenario: "s<1>".into(),
            lab: "l".into(),
            passed: false,
            started_ms: 0,
            duration_ms: 1000,
            steps: vec![
                StepResult {
                    index: 1,
                    name: "baseline".into(),
                    action: "rtt".into(),
                    status: "passed".into(),
                    started_ms: 0,
                    duration_ms: 400,
                    expected: Some("rtt ≤ 50 ms".into()),
                    observed: Some("rtt 1.0 ms".into()),
                    message: None,
                    metrics: serde_json::json!({"rtt_ms": 1.0}),
                },
                StepResult {
                    index: 2,
                    name: "slow".into(),
                    action: "rtt".into(),
                    status: "failed".into(),
                    started_ms: 500,
                    duration_ms: 400,
                    expected: Some("rtt ≤ 50 ms".into()),
                    observed: Some("rtt 201.0 ms".into()),
                    message: Some("rtt ms 201.0 > 50".into()),
                    metrics: serde_json::json!({"rtt_ms": 201.0}),
                },
            ],
            cleanup: vec!["link ab: back to up".into()],
        };
        let j = r.junit();
        assert!(j.contains("tests=\"2\" failures=\"1\""), "{j}");
        assert!(
            j.contains("<failure message=\"rtt ms 201.0 &gt; 50\">"),
            "{j}"
        );
        assert!(j.contains("s&lt;1&gt;"));
        let h = r.html();
        assert!(h.contains("FAILED") && h.contains("<polyline") && h.contains("back to up"));
    }
}
