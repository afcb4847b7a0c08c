//! Running a `wasm:` step ([`super::wasm`] declares and checks it): the module (crates/wasmstep)
//! gets a host API over this lab only — exec in its VMs, impair, clear or cut its links, step
//! variables — and the links it touched are handed to the run's undo, also when the step is
//! stopped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ctx::{exec_in, other, Ctx, Fault, Outcome};
use super::wasm::WasmStep;
use crate::controller::{self, LabError, Result};
use crate::spec::model::Chance;
use crate::spec::units::{BitRate, Micros, Percent};
use crate::spec::Impairment;

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Why a host call of the module was refused or failed; the module reads the text.
#[derive(Debug, thiserror::Error)]
enum HostError {
    /// A name with another lab's prefix.
    #[error("{what} '{name}' is not in lab {lab}: a step reaches its own lab only")]
    OtherLab {
        what: &'static str,
        name: String,
        lab: String,
    },
    /// The step was cancelled (Ctrl-C, deadline): nothing more is changed.
    #[error("the step was stopped")]
    Stopped,
    /// The list of touched links is unusable (a thread panicked holding it).
    #[error("poisoned: the list of links this step changed is lost")]
    Poisoned,
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// The host API over this lab's controller and agents.
struct LabHost {
    lab: String,
    rt: tokio::runtime::Handle,
    vars: BTreeMap<String, String>,
    touched: Arc<Mutex<Vec<String>>>,
    cancel: Arc<AtomicBool>,
}

impl LabHost {
    /// A name within this lab (`NAME` or `LAB/NAME` of this lab only).
    fn local<'a>(
        &self,
        what: &'static str,
        name: &'a str,
    ) -> std::result::Result<&'a str, HostError> {
        match name.split_once('/') {
            None => Ok(name),
            Some((l, n)) if l == self.lab => Ok(n),
            Some(_) => Err(HostError::OtherLab {
                what,
                name: name.into(),
                lab: self.lab.clone(),
            }),
        }
    }

    /// Notes a link before changing it, so the run's cleanup restores it even if the step is
    /// interrupted right after; refuses once the step is cancelled.
    fn touch(&self, link: &str) -> std::result::Result<(), HostError> {
        self.touched
            .lock()
            .map_err(|_| HostError::Poisoned)?
            .push(link.into());
        if self.cancel.load(Ordering::SeqCst) {
            return Err(HostError::Stopped);
        }
        Ok(())
    }
}

impl kobako_wasmstep::HostApi for LabHost {
    type Error = HostError;

    fn exec(
        &mut self,
        vm: &str,
        cmd: &str,
        timeout: Duration,
    ) -> std::result::Result<kobako_wasmstep::ExecOutput, HostError> {
        let vm = self.local("VM", vm)?;
        let (code, stdout, stderr) = self.rt.block_on(exec_in(&self.lab, vm, cmd, timeout))?;
        Ok(kobako_wasmstep::ExecOutput {
            code,
            stdout,
            stderr,
        })
    }

    fn impair(
        &mut self,
        link: &str,
        imp: &kobako_wasmstep::Impair,
    ) -> std::result::Result<(), HostError> {
        let link = self.local("link", link)?;
        let ms = |v: u32| (v > 0).then_some(Micros(v as u64 * 1000));
        let i = Impairment {
            delay: ms(imp.delay_ms),
            jitter: ms(imp.jitter_ms),
            // Percent counts 0.0001 %; the ABI's loss 0.01 %.
            loss: (imp.loss_bp > 0).then(|| Chance {
                percent: Percent(imp.loss_bp * 100),
                correlation: Default::default(),
            }),
            rate: (imp.rate_kbit > 0).then_some(BitRate(imp.rate_kbit as u64 * 1000)),
            corrupt: None,
            duplicate: None,
            reorder: None,
        };
        self.touch(link)?;
        Ok(controller::impair(&self.lab, link, Some(i))?)
    }

    fn clear(&mut self, link: &str) -> std::result::Result<(), HostError> {
        let link = self.local("link", link)?;
        self.touch(link)?;
        Ok(controller::impair(&self.lab, link, None)?)
    }

    fn set_link(&mut self, link: &str, up: bool) -> std::result::Result<(), HostError> {
        let link = self.local("link", link)?;
        self.touch(link)?;
        Ok(controller::set_link_state(&self.lab, link, up)?)
    }

    fn var_get(&mut self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn var_set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.into(), value.into());
    }

    fn log(&mut self, _line: &str) {}
}

/// Stops the module and hands the links it touched to the run's undo when the step future is
/// dropped (Ctrl-C) as well as when it ends.
struct Guard<'a, 'c> {
    ctx: &'a Ctx<'c>,
    touched: Arc<Mutex<Vec<String>>>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Guard<'_, '_> {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let links: Vec<Fault> = match self.touched.lock() {
            Ok(mut t) => t.drain(..).map(Fault::Link).collect(),
            Err(_) => Vec::new(),
        };
        self.ctx.add_faults(&links);
    }
}

pub(super) async fn run(ctx: &Ctx<'_>, w: &WasmStep) -> Result<Outcome> {
    let m = w
        .loaded
        .clone()
        .ok_or_else(|| other(format!("{}: the module was not loaded", w.module)))?;
    let vars = {
        let mut v = ctx.vars.lock().unwrap_or_else(|e| e.into_inner());
        for (k, x) in &w.vars {
            v.insert(k.clone(), scalar(x));
        }
        v.clone()
    };
    let touched = Arc::new(Mutex::new(Vec::new()));
    let cancel = Arc::new(AtomicBool::new(false));
    let guard = Guard {
        ctx,
        touched: touched.clone(),
        cancel: cancel.clone(),
    };
    let host = LabHost {
        lab: ctx.lab.clone(),
        rt: tokio::runtime::Handle::current(),
        vars,
        touched,
        cancel: cancel.clone(),
    };
    let d = kobako_wasmstep::Limits::default();
    let limits = kobako_wasmstep::Limits {
        fuel: w.fuel.unwrap_or(d.fuel),
        timeout: w.timeout.map(|t| t.duration()).unwrap_or(d.timeout),
        memory: w
            .memory
            .map(|m| m.0 as usize * (1 << 20))
            .unwrap_or(d.memory),
        cancel: Some(cancel),
    };
    let (out, host) = tokio::task::spawn_blocking(move || kobako_wasmstep::run(&m, host, &limits))
        .await
        .map_err(other)?;
    drop(guard);
    *ctx.vars.lock().unwrap_or_else(|e| e.into_inner()) = host.vars.clone();
    for l in &out.logs {
        ctx.progress.event(&format!("           wasm: {l}"));
    }
    let mut o = Outcome {
        expected: Some("run() returns 0, every assertion holds".into()),
        observed: Some(format!(
            "{} assertions held, {} host calls, fuel {}, {} ms{}",
            out.asserts_passed,
            out.calls.len(),
            out.fuel_used,
            out.elapsed.as_millis(),
            out.logs
                .last()
                .map(|l| format!("; last log: {l}"))
                .unwrap_or_default()
        )),
        failure: out.failure.as_ref().map(|f| f.to_string()),
        ..Default::default()
    };
    o.metrics.insert("fuel".into(), out.fuel_used.into());
    o.metrics
        .insert("host_calls".into(), out.calls.len().into());
    o.metrics.insert(
        "calls".into(),
        out.calls
            .iter()
            .map(|c| format!("[{} ms] {} -> {}", c.at_ms, c.what, c.result))
            .collect::<Vec<_>>()
            .into(),
    );
    o.metrics.insert("logs".into(), out.logs.clone().into());
    o.metrics.insert(
        "vars".into(),
        serde_json::to_value(&host.vars).unwrap_or_default(),
    );
    Ok(o)
}
