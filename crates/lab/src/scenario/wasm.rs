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
//!
//! This module holds the step as declared and its load-time check; running it is
//! [`super::wasm_run`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::spec::error::{Path as SpecPath, SpecError};
use crate::spec::parse::Source;
use crate::spec::units::{MemMib, Micros};

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

/// Loads and checks the module of `wasm` step `w` at `path` (`dir`: the scenario file's
/// directory); errors point at the step's `module` with the loader's fix. Without `read`, no
/// module is opened and the step is an error (the caller may not read the server's files).
pub(super) fn check_step(
    dir: &Path,
    w: &mut WasmStep,
    path: &SpecPath,
    src: &Source,
    read: bool,
    errs: &mut Vec<SpecError>,
) {
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
        return;
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
