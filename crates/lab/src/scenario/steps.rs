//! What each step kind does. A step kind is a field of [`Step`](super::Step) (parsed and
//! validated there), one name in `Step::actions`, and one branch here that returns an
//! [`Outcome`]: what was expected, what was observed, why it failed, and measured numbers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_agent::proto::ExecRequest;
use kobako_runtime::{Runtime, VmDir};

use super::model::*;
use super::run::{other, Undo};
use crate::controller::{self, Progress, Resolver, Result};
use crate::spec::model::Chance;
use crate::spec::units::Percent;
use crate::spec::Impairment;

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

pub(super) struct Outcome {
    pub(super) expected: Option<String>,
    pub(super) observed: Option<String>,
    pub(super) failure: Option<String>,
    pub(super) metrics: serde_json::Value,
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

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_step(
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
