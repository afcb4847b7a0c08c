//! The sandbox's logic against a fake lab: limits, load-time checks, the host API as the
//! checked-in example module uses it. (Real labs: crates/cli/tests/labs.rs.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_wasmstep::{run, ExecOutput, Failure, HostApi, Impair, Limits, LoadError, Module};

/// A lab of one VM `a.h` pinging through link `ab`: the round trip is `base` plus twice the
/// link's delay (when `honest`).
struct Fake {
    base: f64,
    delay: u32,
    honest: bool,
    vars: BTreeMap<String, String>,
    calls: Vec<String>,
    logs: Vec<String>,
}

impl Fake {
    fn new(vars: &[(&str, &str)]) -> Fake {
        Fake {
            base: 1.5,
            delay: 0,
            honest: true,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            calls: Vec::new(),
            logs: Vec::new(),
        }
    }
}

impl HostApi for Fake {
    type Error = String;
    fn exec(&mut self, vm: &str, cmd: &str, timeout: Duration) -> Result<ExecOutput, String> {
        self.calls.push(format!("exec {vm}: {cmd}"));
        assert!(timeout <= Duration::from_secs(60), "{timeout:?}");
        if vm != "a.h" {
            return Err(format!("no VM {vm} in lab fake"));
        }
        let rtt = self.base + 2.0 * self.delay as f64;
        Ok(ExecOutput {
            code: 0,
            stdout: format!(
                "3 packets transmitted, 3 packets received, 0% packet loss\nround-trip min/avg/max = {:.3}/{:.3}/{:.3} ms\n",
                rtt - 0.1,
                rtt,
                rtt + 0.1
            ),
            stderr: String::new(),
        })
    }
    fn impair(&mut self, link: &str, imp: &Impair) -> Result<(), String> {
        self.calls.push(format!("impair {link} {imp:?}"));
        if link != "ab" {
            return Err(format!("no link {link}"));
        }
        if self.honest {
            self.delay = imp.delay_ms;
        }
        Ok(())
    }
    fn clear(&mut self, link: &str) -> Result<(), String> {
        self.calls.push(format!("clear {link}"));
        self.delay = 0;
        Ok(())
    }
    fn set_link(&mut self, link: &str, up: bool) -> Result<(), String> {
        self.calls.push(format!("link {link} {up}"));
        Ok(())
    }
    fn var_get(&mut self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn var_set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.into(), value.into());
    }
    fn log(&mut self, line: &str) {
        self.logs.push(line.into());
    }
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios/wasm/delay-probe")
}

/// Compiled once (an unoptimized build of the compiler takes seconds for it).
fn example() -> Module {
    static M: std::sync::OnceLock<Module> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let t = Instant::now();
        let m =
            Module::load(&example_dir().join("delay_probe.wasm")).expect("example module loads");
        println!(
            "example module loaded (compiled, checked) in {:?}",
            t.elapsed()
        );
        m
    })
    .clone()
}

fn wat(src: &str) -> Result<Module, LoadError> {
    Module::from_bytes("t.wasm", &wat::parse_str(src).expect("test WAT parses"))
}

fn limits(fuel: u64, timeout_ms: u64) -> Limits {
    Limits {
        fuel,
        timeout: Duration::from_millis(timeout_ms),
        ..Limits::default()
    }
}

const PROBE_VARS: &[(&str, &str)] = &[("from", "a.h"), ("to", "10.0.0.2"), ("link", "ab")];

#[test]
fn the_example_module_drives_the_host_api_and_passes() {
    let m = example();
    let t = Instant::now();
    let (out, host) = run(&m, Fake::new(PROBE_VARS), &Limits::default());
    assert!(out.passed(), "{:?} {:?}", out.failure, out.logs);
    println!(
        "example run: {:?} wall (incl. 200 ms sleep), fuel used {}, {} host calls; loaded and ran in {:?}",
        out.elapsed,
        out.fuel_used,
        out.calls.len(),
        t.elapsed()
    );
    // What it did to the (fake) lab, in order.
    let impair_at = host
        .calls
        .iter()
        .position(|c| c.starts_with("impair ab"))
        .unwrap();
    let clear_at = host.calls.iter().position(|c| c == "clear ab").unwrap();
    assert!(impair_at < clear_at, "{:?}", host.calls);
    assert!(
        host.calls[impair_at].contains("delay_ms: 100"),
        "{:?}",
        host.calls
    );
    assert_eq!(
        host.calls
            .iter()
            .filter(|c| c.starts_with("exec a.h: ping -c 3 -W 2 10.0.0.2"))
            .count(),
        3
    );
    // The variables it left: the round trips it measured.
    assert_eq!(host.vars["baseline_ms"], "1.5");
    assert_eq!(host.vars["delayed_ms"], "201.5");
    assert_eq!(host.vars["restored_ms"], "1.5");
    assert_eq!(out.asserts_passed, 2);
    assert!(
        out.logs.iter().any(|l| l == "with 100 ms on ab: 201.5 ms"),
        "{:?}",
        out.logs
    );
    assert_eq!(out.logs, host.logs);
    assert!(
        out.calls
            .iter()
            .any(|c| c.what.starts_with("impair ab: delay 100 ms") && c.result == "ok"),
        "{:?}",
        out.calls
    );
    assert!(
        out.elapsed >= Duration::from_millis(200),
        "slept {:?}",
        out.elapsed
    );
    assert!(out.fuel_used > 0);

    // A step variable changes what it does.
    let mut vars = PROBE_VARS.to_vec();
    vars.push(("delay_ms", "40"));
    let (out, host) = run(&m, Fake::new(&vars), &Limits::default());
    assert!(out.passed(), "{:?}", out.failure);
    assert_eq!(host.vars["delayed_ms"], "81.5");
}

#[test]
fn the_example_module_fails_with_its_assertion_when_the_delay_does_not_show() {
    let mut f = Fake::new(PROBE_VARS);
    f.honest = false;
    let (out, host) = run(&example(), f, &Limits::default());
    match &out.failure {
        Some(Failure::Assert(m)) => assert!(
            m.contains("round trip 1.5 ms with 100 ms delay on ab, expected at least 191.5 ms"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    // Stopped at the assertion: nothing after it ran.
    assert!(
        !host.calls.iter().any(|c| c.starts_with("clear")),
        "{:?}",
        host.calls
    );

    // A missing variable and a host error reach the report as the step's failure.
    let (out, _) = run(
        &example(),
        Fake::new(&[("from", "a.h")]),
        &Limits::default(),
    );
    assert_eq!(
        out.failure,
        Some(Failure::Assert("step variable `to` is not set".into()))
    );
    let (out, _) = run(
        &example(),
        Fake::new(&[("from", "a.h"), ("to", "10.0.0.2"), ("link", "nosuch")]),
        &Limits::default(),
    );
    assert_eq!(out.failure, Some(Failure::Assert("no link nosuch".into())));
    let (out, _) = run(
        &example(),
        Fake::new(&[
            ("from", "a.h"),
            ("to", "x"),
            ("link", "ab"),
            ("delay_ms", "lots"),
        ]),
        &Limits::default(),
    );
    assert_eq!(
        out.failure,
        Some(Failure::Assert("delay_ms \"lots\" is not a number".into()))
    );
}

const LOOP: &str = r#"(module (memory (export "memory") 1)
  (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))"#;

#[test]
fn an_endless_loop_is_stopped_by_fuel() {
    let t = Instant::now();
    let (out, host) = run(
        &wat(LOOP).unwrap(),
        Fake::new(&[]),
        &limits(50_000_000, 60_000),
    );
    assert_eq!(out.failure, Some(Failure::OutOfFuel(50_000_000)));
    assert_eq!(out.fuel_used, 50_000_000);
    assert!(host.calls.is_empty());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    println!("50M fuel of `loop br` ran out in {:?}", out.elapsed);
    assert!(out.failure.unwrap().to_string().contains("endless loop"));
}

#[test]
fn an_endless_loop_is_stopped_by_the_deadline() {
    let (out, _) = run(&wat(LOOP).unwrap(), Fake::new(&[]), &limits(u64::MAX, 300));
    assert_eq!(
        out.failure,
        Some(Failure::Deadline(Duration::from_millis(300)))
    );
    assert!(
        out.elapsed >= Duration::from_millis(300),
        "{:?}",
        out.elapsed
    );
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);

    // Sleeping in the host forever: each host call checks the deadline too.
    let m = wat(r#"(module (import "kobako" "sleep_ms" (func $s (param i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "run") (result i32) (loop $l (drop (call $s (i32.const 100000))) (br $l)) (i32.const 0)))"#)
    .unwrap();
    let (out, _) = run(&m, Fake::new(&[]), &limits(u64::MAX, 300));
    assert_eq!(
        out.failure,
        Some(Failure::Deadline(Duration::from_millis(300)))
    );
    assert!(out.elapsed < Duration::from_secs(2), "{:?}", out.elapsed);

    // Ctrl-C: the cancel flag stops it the same way.
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c.store(true, Ordering::Relaxed);
    });
    let l = Limits {
        cancel: Some(cancel),
        ..limits(u64::MAX, 60_000)
    };
    let (out, _) = run(&wat(LOOP).unwrap(), Fake::new(&[]), &l);
    th.join().unwrap();
    assert_eq!(out.failure, Some(Failure::Cancelled));
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
}

#[test]
fn host_imports_outside_the_api_are_refused_at_load() {
    // A module built for WASI (files, clock, environment) does not load.
    let e = wat(r#"(module
      (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)))"#)
    .unwrap_err();
    assert!(
        e.message.contains("wasi_snapshot_preview1.path_open"),
        "{e}"
    );
    assert!(e.message.contains("wasi_snapshot_preview1.fd_write"), "{e}");
    assert!(
        e.fix.contains("no WASI") && e.fix.contains("wasm32-unknown-unknown"),
        "{e}"
    );
    assert_eq!(e.file, "t.wasm");

    // Unknown functions of the kobako module, wrong signatures, imported memories.
    let e = wat(
        r#"(module (import "kobako" "open_file" (func (param i32 i32) (result i32)))
      (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)))"#,
    )
    .unwrap_err();
    assert!(
        e.message
            .contains("kobako.open_file, which the host API does not have"),
        "{e}"
    );
    assert!(e.fix.contains("exec") && e.fix.contains("README"), "{e}");
    let e = wat(r#"(module (import "kobako" "log" (func (param i32)))
      (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)))"#)
    .unwrap_err();
    assert!(
        e.message
            .contains("kobako.log as (i32) -> (), but the host API has (i32, i32) -> ()"),
        "{e}"
    );
    let e = wat(
        r#"(module (import "env" "memory" (memory 1)) (memory (export "memory") 1)
      (func (export "run") (result i32) (i32.const 0)))"#,
    );
    assert!(e.is_err());
}

#[test]
fn missing_or_wrong_exports_are_refused_at_load_with_a_fix() {
    let e = wat(r#"(module (memory (export "memory") 1) (func (export "main") (result i32) (i32.const 0)))"#)
        .unwrap_err();
    assert!(
        e.message
            .contains("no exported function `run` (exports: memory, main)"),
        "{e}"
    );
    assert!(e.fix.contains("pub extern \"C\" fn run() -> i32"), "{e}");
    let e = wat(r#"(module (memory (export "memory") 1) (func (export "run")))"#).unwrap_err();
    assert!(
        e.message
            .contains("export `run` has the signature () -> ()"),
        "{e}"
    );
    let e = wat(r#"(module (func (export "run") (result i32) (i32.const 0)))"#).unwrap_err();
    assert!(e.message.contains("no exported memory `memory`"), "{e}");

    let e = Module::from_bytes("x.wasm", b"#!/bin/sh\nrm -rf /\n").unwrap_err();
    assert!(e.message.contains("not a WebAssembly module"), "{e}");
    let e = Module::from_bytes("x.wasm", b"\0asm\x01\0\0\0\x05garbage").unwrap_err();
    assert!(e.message.contains("not a valid WebAssembly module"), "{e}");
    let e = Module::load(Path::new("/nonexistent/step.wasm")).unwrap_err();
    assert!(
        e.message.contains("cannot read") && e.file == "/nonexistent/step.wasm",
        "{e}"
    );
}

#[test]
fn memory_is_capped() {
    // Growing past the cap stops the module.
    let m = wat(r#"(module (memory (export "memory") 1)
      (func (export "run") (result i32) (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i32.const 0)))"#)
    .unwrap();
    let l = Limits {
        memory: 4 << 20,
        ..Limits::default()
    };
    let (out, _) = run(&m, Fake::new(&[]), &l);
    match out.failure {
        Some(Failure::Memory { limit, wanted }) => {
            assert_eq!(limit, 4 << 20);
            assert!(wanted > limit);
        }
        other => panic!("{other:?}"),
    }
    // A module whose initial memory is above the cap does not start.
    let m = wat(r#"(module (memory (export "memory") 128) (func (export "run") (result i32) (i32.const 0)))"#).unwrap();
    let (out, _) = run(&m, Fake::new(&[]), &l);
    assert!(
        matches!(
            out.failure,
            Some(Failure::Memory {
                limit: 4194304,
                wanted: 8388608
            })
        ),
        "{:?}",
        out.failure
    );
    // Under the cap it runs.
    let (out, _) = run(&m, Fake::new(&[]), &Limits::default());
    assert!(out.passed(), "{:?}", out.failure);
}

#[test]
fn bad_pointers_traps_and_return_codes_are_reported() {
    let m = wat(r#"(module (import "kobako" "log" (func $log (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "run") (result i32) (call $log (i32.const 65530) (i32.const 100)) (i32.const 0)))"#)
    .unwrap();
    let (out, _) = run(&m, Fake::new(&[]), &Limits::default());
    assert_eq!(
        out.failure,
        Some(Failure::Trap(
            "log: string at 65530+100 is outside the module's memory (65536 bytes)".into()
        ))
    );
    let m = wat(
        r#"(module (memory (export "memory") 1) (func $f (export "run") (result i32) (call $f)))"#,
    )
    .unwrap();
    let (out, _) = run(&m, Fake::new(&[]), &Limits::default());
    assert!(
        matches!(&out.failure, Some(Failure::Trap(t)) if t.contains("stack overflow")),
        "{:?}",
        out.failure
    );
    let m = wat(
        r#"(module (memory (export "memory") 1) (func (export "run") (result i32) unreachable))"#,
    )
    .unwrap();
    let (out, _) = run(&m, Fake::new(&[]), &Limits::default());
    assert!(
        matches!(&out.failure, Some(Failure::Trap(t)) if t.contains("unreachable")),
        "{:?}",
        out.failure
    );

    // A host error comes back as -1 with the message in the result buffer; here run() returns it.
    let m = wat(r#"(module
      (import "kobako" "exec" (func $exec (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (data (i32.const 0) "x.ytrue")
      (func (export "run") (result i32) (call $exec (i32.const 0) (i32.const 3) (i32.const 3) (i32.const 4) (i32.const 0))))"#)
    .unwrap();
    let (out, host) = run(&m, Fake::new(&[]), &Limits::default());
    assert_eq!(out.failure, Some(Failure::Returned(-1)));
    assert_eq!(host.calls, vec!["exec x.y: true"]);
    assert_eq!(out.calls[0].result, "error: no VM x.y in lab fake");
}

/// The checked-in module is what its source builds to (needs Debian's rustc and
/// libstd-rust-dev-wasm32, which scripts/setup.sh installs).
#[test]
fn the_checked_in_example_is_built_from_its_source() {
    let std = Path::new("/usr/lib/rustlib/wasm32-unknown-unknown");
    if !Path::new("/usr/bin/rustc").exists() || !std.exists() {
        println!(
            "skipped: no /usr/bin/rustc with {} (apt-get install rustc libstd-rust-dev-wasm32)",
            std.display()
        );
        return;
    }
    let dir = tempfile_dir();
    let out = dir.join("delay_probe.wasm");
    let st = std::process::Command::new(example_dir().join("build.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let built = std::fs::read(&out).unwrap();
    let checked_in = std::fs::read(example_dir().join("delay_probe.wasm")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        built == checked_in,
        "examples/scenarios/wasm/delay-probe/delay_probe.wasm is stale: run its build.sh and commit the result"
    );
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kobako-wasmstep-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
