//! The context a scenario run gives its steps ([`Ctx`]): the lab, the runtime, the faults to
//! undo, step variables; exec in a VM, impair/cut a link (undone like any fault), sleep. Also
//! what a step attempt reports ([`Outcome`], [`Fault`]). Used by the built-in step kinds
//! ([`super::steps`]) and by module steps ([`super::wasm_run`]), so those do not depend on
//! each other for it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kobako_agent::proto::ExecRequest;
use kobako_runtime::{Runtime, VmDir};

use crate::controller::{self, BootSettings, LabError, LabRecord, Progress, Result};
use crate::spec::{Attachment, Impairment};

/// A step that cannot run, in its own words ([`LabError::Step`]).
pub(super) fn other(e: impl std::fmt::Display) -> LabError {
    LabError::Step(e.to_string())
}

/// A fault a step left, and how it is undone.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A link's state or impairment changed (undone: back to what it was before the run).
    Link(String),
    /// A paused VM (runtime name).
    Paused(String),
    /// A killed VM (`node.vm`): restarted.
    Killed(String),
    /// A VM interface taken off its network by `partition` (`node.vm`, interface).
    Port(String, String),
}

/// What one attempt of a step saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub expected: Option<String>,
    pub observed: Option<String>,
    pub failure: Option<String>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Faults this attempt left (undone at the end, or after the step's `for`).
    pub faults: Vec<Fault>,
}

impl Outcome {
    pub(super) fn metric(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.metrics.insert(k.into(), v.into());
    }
}

/// A run's context: the lab, the runtime, the faults to undo, step variables. Locks are never
/// held across an await.
pub struct Ctx<'a> {
    pub rt: Arc<dyn Runtime>,
    pub lab: String,
    pub rec: LabRecord,
    pub boot: &'a BootSettings,
    pub progress: &'a dyn Progress,
    pub t0: Instant,
    /// Link rows before the run (what undo goes back to).
    pub(super) links_before: Vec<kobako_state::LinkRow>,
    pub(super) faults: Mutex<Vec<Fault>>,
    /// When each named step ended (for `since`).
    pub(super) marks: Mutex<BTreeMap<String, Instant>>,
    /// Step variables (read and written by module steps).
    pub vars: Mutex<BTreeMap<String, String>>,
}

impl Ctx<'_> {
    /// Milliseconds since the start of the run.
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// Runs `sh -c cmd` in VM `vm` (`node.vm`): exit code (124 on timeout), stdout, stderr.
    pub async fn exec(
        &self,
        vm: &str,
        cmd: &str,
        timeout: Duration,
    ) -> Result<(i32, String, String)> {
        exec_in(&self.lab, vm, cmd, timeout).await
    }

    /// Sets (`Some`) or clears a link's impairment; undone at the end of the run.
    pub fn impair(&self, link: &str, imp: Option<Impairment>) -> Result<Fault> {
        controller::impair(&self.lab, link, imp)?;
        Ok(Fault::Link(link.into()))
    }

    /// Cuts or heals a link; undone at the end of the run.
    pub fn set_link(&self, link: &str, up: bool) -> Result<Fault> {
        controller::set_link_state(&self.lab, link, up)?;
        Ok(Fault::Link(link.into()))
    }

    /// An address for `t` as seen from VM `from`: itself if it is one, else the address of VM
    /// `t` on a subnet `from` is on, else its first address on a network or link (not the
    /// node network).
    pub fn address(&self, from: &str, t: &str) -> Result<String> {
        if t.parse::<std::net::IpAddr>().is_ok() {
            return Ok(t.into());
        }
        let lab = &self.rec.lab;
        let vm = lab.find_vm(t)?;
        let mine: Vec<crate::spec::Cidr> = lab
            .find_vm(from)
            .map(|f| {
                f.interfaces
                    .iter()
                    .flat_map(|i| i.addresses.iter().copied())
                    .collect()
            })
            .unwrap_or_default();
        let all = || {
            vm.interfaces
                .iter()
                .filter(|i| !matches!(i.attach, Attachment::NodeNetwork))
                .flat_map(|i| i.addresses.iter())
        };
        all()
            .find(|c| mine.iter().any(|m| m.network().contains(c.addr)))
            .or_else(|| all().next())
            .or_else(|| vm.interfaces.iter().flat_map(|i| i.addresses.iter()).next())
            .map(|c| c.addr.to_string())
            .ok_or_else(|| other(format!("VM {t} has no address to reach it by")))
    }

    pub(super) fn add_faults(&self, f: &[Fault]) {
        let mut all = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        for x in f {
            if !all.contains(x) {
                all.push(x.clone());
            }
        }
    }

    /// Undoes faults `which` (all when `None`), newest first; one line per fault.
    pub(super) async fn undo(&self, which: Option<&[Fault]>) -> Vec<String> {
        let todo: Vec<Fault> = {
            let mut all = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            let (take, keep): (Vec<Fault>, Vec<Fault>) = all
                .drain(..)
                .partition(|f| which.is_none_or(|w| w.contains(f)));
            *all = keep;
            take
        };
        let mut done = Vec::new();
        for f in todo.iter().rev() {
            done.push(self.undo_one(f).await);
        }
        done
    }

    async fn undo_one(&self, f: &Fault) -> String {
        let lab = &self.lab;
        match f {
            Fault::Paused(v) => match self.rt.resume(&VmDir::for_name(v)).await {
                Ok(()) => format!("resumed {v}"),
                Err(e) => format!("{v}: could not be resumed ({e})"),
            },
            Fault::Port(v, i) => match controller::set_port_state(lab, v, i, true) {
                Ok(()) => format!("{v} {i}: back on its network"),
                Err(e) => format!("{v} {i}: could not be put back ({e})"),
            },
            Fault::Killed(v) => {
                let target = v.clone();
                match controller::restart(
                    self.rt.clone(),
                    lab,
                    Some(&target),
                    self.boot,
                    self.progress,
                )
                .await
                {
                    Ok(r) if r.ok() => format!("restarted {v}"),
                    Ok(_) => format!("{v}: restarted but not ready"),
                    Err(e) => format!("{v}: could not be restarted ({e})"),
                }
            }
            Fault::Link(l) => {
                let before = self.links_before.iter().find(|r| &r.name == l);
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
                match (a, b) {
                    (Ok(()), Ok(())) => format!(
                        "link {l}: back to {}{}",
                        if up { "up" } else { "down" },
                        if imp.is_some() {
                            " with its impairment"
                        } else {
                            ""
                        }
                    ),
                    (Err(e), _) | (_, Err(e)) => format!("link {l}: could not be restored ({e})"),
                }
            }
        }
    }
}

/// Runs `sh -c cmd` in VM `vm` (`node.vm`) of lab `lab`: exit code (124 on timeout), stdout, stderr.
pub(super) async fn exec_in(
    lab: &str,
    vm: &str,
    cmd: &str,
    timeout: Duration,
) -> Result<(i32, String, String)> {
    let name = controller::resolve_in_lab(lab, vm)?;
    let dir = VmDir::for_name(&name);
    if dir.vm_pid().is_none() {
        return Err(other(format!("VM {name} is not running")));
    }
    let (c, _) = kobako_runtime::wait_ready(&dir, Duration::from_secs(30)).await?;
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
        .await?;
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

/// Runs `futs` concurrently (in this task); their outputs in order.
pub(super) async fn join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
