//! `wasm:` steps: a WebAssembly module (crates/wasmstep) run against this lab.
//!
//! ```yaml
//! - name: delay shows up and goes away
//!   wasm:
//!     module: wasm/delay-probe/delay_probe.wasm   # relative to the scenario file
//!     vars: { from: a.h, to: 10.81.0.2, link: ab }
//!     fuel: 100000000        # default 1e9
//!     timeout: 60s           # wall clock, host calls included (default 60 s)
//!     memory: 16M            # linear memory cap (default 64M)
//! ```
//! The module is loaded and checked (imports, exports) when the scenario file is, so a missing
//! export or a WASI import is reported with file and line before any step runs. Its host API
//! reaches this lab only: VMs and links are resolved in it, names of other labs are refused.
//! Links it impairs or cuts are restored at the end like those of other steps.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::steps::{exec_in, other, Ctx, Fault, Outcome};
use super::Step;
use crate::controller::{self, Result};
use crate::spec::error::{Path as SpecPath, SpecError};
use crate::spec::model::Chance;
use crate::spec::parse::Source;
use crate::spec::units::{BitRate, MemMib, Micros, Percent};
use crate::spec::Impairment;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmStep {
    /// The .wasm file, relative to the scenario file.
    pub module: String,
    /// Step variables set before the module runs (it may read and change them; later `wasm`
    /// steps see the changes).
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub fuel: Option<u64>,
    #[serde(default)]
    pub timeout: Option<Micros>,
    #[serde(default)]
    pub memory: Option<MemMib>,
    /// The checked module (filled by `load_str`).
    #[serde(skip)]
    pub loaded: Option<kobako_wasmstep::Module>,
}

/// Loads and checks the module of every `wasm` step (groups included); errors point at the
/// step's `module` with the loader's fix. Without `read`, no module is opened and every
/// `wasm` step is an error (the caller may not read the server's files).
pub(super) fn check(
    file: &str,
    steps: &mut [Step],
    at: &SpecPath,
    key: &str,
    src: &Source,
    read: bool,
    errs: &mut Vec<SpecError>,
) {
    let dir = Path::new(file).parent().unwrap_or(Path::new("."));
    for (i, st) in steps.iter_mut().enumerate() {
        let path = at.key(key).index(i);
        if let Some(g) = st.parallel.as_mut() {
            check(file, g, &path, "parallel", src, read, errs);
        }
        if let Some(g) = st.steps.as_mut() {
            check(file, g, &path, "steps", src, read, errs);
        }
        let Some(w) = st.wasm.as_mut() else { continue };
        let path = path.key("wasm");
        for (k, v) in &w.vars {
            if v.is_object() || v.is_array() || v.is_null() {
                errs.push(src.error(
                    &path.key("vars").key(k),
                    format!("step variable `{k}` is not a string, number or boolean"),
                    Some("give it a scalar value, e.g. `delay_ms: 100`".into()),
                ));
            }
        }
        if !read {
            errs.push(src.error(
                &path.key("module"),
                format!(
                    "wasm step module '{}': modules are read from the server's filesystem, which only admins may name",
                    w.module
                ),
                Some(
                    "ask an admin to run this scenario, or run it as root on the server with `kobako scenario run`"
                        .into(),
                ),
            ));
            continue;
        }
        match kobako_wasmstep::Module::load(&dir.join(&w.module)) {
            Ok(m) => w.loaded = Some(m),
            Err(e) => errs.push(src.error(
                &path.key("module"),
                format!("{}: {}", e.file, e.message),
                Some(e.fix),
            )),
        }
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
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
    fn local<'a>(&self, what: &str, name: &'a str) -> std::result::Result<&'a str, String> {
        match name.split_once('/') {
            None => Ok(name),
            Some((l, n)) if l == self.lab => Ok(n),
            Some(_) => Err(format!(
                "{what} '{name}' is not in lab {}: a step reaches its own lab only",
                self.lab
            )),
        }
    }

    /// Notes a link before changing it, so the run's cleanup restores it even if the step is
    /// interrupted right after; refuses once the step is cancelled.
    fn touch(&self, link: &str) -> std::result::Result<(), String> {
        self.touched
            .lock()
            .map_err(|_| "poisoned".to_string())?
            .push(link.into());
        if self.cancel.load(Ordering::SeqCst) {
            return Err("the step was stopped".into());
        }
        Ok(())
    }
}

impl kobako_wasmstep::HostApi for LabHost {
    fn exec(
        &mut self,
        vm: &str,
        cmd: &str,
        timeout: Duration,
    ) -> std::result::Result<kobako_wasmstep::ExecOutput, String> {
        let vm = self.local("VM", vm)?;
        let (code, stdout, stderr) = self
            .rt
            .block_on(exec_in(&self.lab, vm, cmd, timeout))
            .map_err(|e| e.to_string())?;
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
    ) -> std::result::Result<(), String> {
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
        controller::impair(&self.lab, link, Some(i)).map_err(|e| e.to_string())
    }

    fn clear(&mut self, link: &str) -> std::result::Result<(), String> {
        let link = self.local("link", link)?;
        self.touch(link)?;
        controller::impair(&self.lab, link, None).map_err(|e| e.to_string())
    }

    fn set_link(&mut self, link: &str, up: bool) -> std::result::Result<(), String> {
        let link = self.local("link", link)?;
        self.touch(link)?;
        controller::set_link_state(&self.lab, link, up).map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use crate::scenario::load_str;

    /// A module with memory and `main` but no `run` (hand-assembled).
    const NO_RUN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f,
        0x03, 0x02, 0x01, 0x00, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x11, 0x02, 0x06, 0x6d, 0x65,
        0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x04, 0x6d, 0x61, 0x69, 0x6e, 0x00, 0x00, 0x0a, 0x06,
        0x01, 0x04, 0x00, 0x41, 0x00, 0x0b,
    ];

    #[test]
    fn module_problems_are_located_in_the_scenario_file_before_anything_runs() {
        let d = std::env::temp_dir().join(format!("kobako-scn-wasm-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("norun.wasm"), NO_RUN).unwrap();
        let file = d.join("s.yaml");
        let f = file.to_str().unwrap();
        let text = "name: x\nsteps:\n  - sleep: 1s\n  - parallel:\n      - wasm: { module: norun.wasm }\n      - wasm:\n          module: missing.wasm\n          vars: { a: [1] }\n";
        let e = load_str(f, text).unwrap_err().to_string();
        assert!(e.contains("s.yaml:5:"), "{e}");
        assert!(
            e.contains("no exported function `run` (exports: memory, main)"),
            "{e}"
        );
        assert!(e.contains("pub extern \"C\" fn run() -> i32"), "{e}");
        assert!(
            e.contains("s.yaml:7:") && e.contains("cannot read the module"),
            "{e}"
        );
        assert!(
            e.contains("s.yaml:8:") && e.contains("step variable `a`"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);

        // The example scenario loads, its module checked and kept for the run.
        let ex = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/scenarios/wasm-delay-probe.yaml");
        let s = load_str(ex.to_str().unwrap(), &std::fs::read_to_string(&ex).unwrap()).unwrap();
        let w = s.steps[1].wasm.as_ref().unwrap();
        assert!(w.loaded.is_some());
        assert_eq!(w.fuel, Some(100_000_000));
    }
}
