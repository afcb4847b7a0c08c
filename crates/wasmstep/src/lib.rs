//! WASM steps for kobako scenarios: a WebAssembly module run by wasmtime against a small host
//! API (exec in a VM, impair/clear/cut/heal a link, sleep, step variables, assert, log).
//!
//! The sandbox: the module gets nothing but the functions of import module `kobako` (no WASI:
//! no host files, network, clock or environment), its own linear memory (capped), a fuel budget
//! (instructions) and a wall-clock deadline (epoch interruption, also checked by every host
//! call). Everything that would reach the lab goes through [`HostApi`], which the scenario runner
//! implements for its one lab. The ABI is described in this crate's README.md.
//!
//! ```no_run
//! # use kobako_wasmstep::*;
//! # fn f<H: HostApi + 'static>(host: H) -> Result<(), LoadError> {
//! let m = Module::load("probe.wasm".as_ref())?; // checked: imports, exports
//! let (out, _host) = run(&m, host, &Limits::default());
//! if let Some(f) = &out.failure {
//!     eprintln!("failed: {f}");
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Config, Engine, Extern, ExternType, FuncType, Linker, ResourceLimiter, Store, Trap,
    UpdateDeadline, ValType,
};

/// The import module every host function lives in.
pub const HOST_MODULE: &str = "kobako";
/// The function a module must export: `run() -> i32`, 0 = passed.
pub const ENTRY: &str = "run";
/// The memory a module must export (the host reads and writes strings there).
pub const MEMORY: &str = "memory";
/// Longest string the host reads from or hands to a module (stdout beyond this is cut).
pub const MAX_STRING: usize = 1 << 20;
/// Log lines kept in an [`Outcome`] (the rest are counted).
pub const MAX_LOG_LINES: usize = 200;

/// Output of [`HostApi::exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (128+N when killed by signal N, 124 on timeout).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// An impairment as a module asks for it (both directions of a link; 0 = not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impair {
    pub delay_ms: u32,
    pub jitter_ms: u32,
    /// Loss in hundredths of a percent (500 = 5 %).
    pub loss_bp: u32,
    /// Rate limit in kbit/s.
    pub rate_kbit: u32,
}

/// What a module may do to the lab. The scenario runner implements it for one lab; every name
/// (VM, link) is resolved within that lab only.
pub trait HostApi {
    /// Why a call was refused or failed. The module receives its text (the call returns -1 and
    /// `result_read` reads the message) and the run's call log records it.
    type Error: fmt::Display;
    /// Runs `sh -c cmd` in VM `vm` (NODE.VM) with a timeout.
    fn exec(&mut self, vm: &str, cmd: &str, timeout: Duration) -> Result<ExecOutput, Self::Error>;
    fn impair(&mut self, link: &str, imp: &Impair) -> Result<(), Self::Error>;
    fn clear(&mut self, link: &str) -> Result<(), Self::Error>;
    /// Cut (`up == false`) or heal a link.
    fn set_link(&mut self, link: &str, up: bool) -> Result<(), Self::Error>;
    fn var_get(&mut self, name: &str) -> Option<String>;
    fn var_set(&mut self, name: &str, value: &str);
    /// A line the module logged (also kept in the [`Outcome`]).
    fn log(&mut self, line: &str);
}

/// Bounds of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Fuel (about one unit per WebAssembly instruction).
    pub fuel: u64,
    /// Wall-clock budget, host calls (exec, sleep) included.
    pub timeout: Duration,
    /// Linear memory cap in bytes.
    pub memory: usize,
    /// Set to stop the run (Ctrl-C).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 1_000_000_000,
            timeout: Duration::from_secs(60),
            memory: 64 << 20,
            cancel: None,
        }
    }
}

/// A module that cannot be used, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.file, self.message, self.fix)
    }
}

impl std::error::Error for LoadError {}

/// Why a run did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("assertion failed: {0}")]
    Assert(String),
    #[error("run() returned {0} (0 = passed)")]
    Returned(i32),
    #[error("stopped: used all its fuel ({0} units; an endless loop?)")]
    OutOfFuel(u64),
    #[error("stopped: deadline of {0:?} passed")]
    Deadline(Duration),
    #[error("stopped: cancelled")]
    Cancelled,
    #[error("stopped: memory limit of {limit} bytes (wanted {wanted})")]
    Memory { limit: usize, wanted: usize },
    #[error("stopped: {0}")]
    Trap(String),
    #[error("could not start: {0}")]
    Start(String),
}

/// One host call, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub at_ms: u64,
    pub what: String,
    pub result: String,
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `None`: passed (run() returned 0, no assertion failed).
    pub failure: Option<Failure>,
    pub elapsed: Duration,
    pub fuel_used: u64,
    /// Assertions that held.
    pub asserts_passed: u32,
    pub calls: Vec<Call>,
    pub logs: Vec<String>,
    pub logs_dropped: u64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// A checked, compiled module.
#[derive(Clone)]
pub struct Module {
    file: String,
    inner: wasmtime::Module,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module").field("file", &self.file).finish()
    }
}

/// The host API: name, parameters, results (all i32 unless said otherwise).
const API: &[(&str, &[ValType], &[ValType])] = &[
    ("log", &[ValType::I32, ValType::I32], &[]),
    (
        "exec",
        &[
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
        ],
        &[ValType::I32],
    ),
    (
        "impair",
        &[
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
        ],
        &[ValType::I32],
    ),
    ("clear", &[ValType::I32, ValType::I32], &[ValType::I32]),
    (
        "link",
        &[ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    ("sleep_ms", &[ValType::I32], &[ValType::I32]),
    ("var_get", &[ValType::I32, ValType::I32], &[ValType::I32]),
    (
        "var_set",
        &[ValType::I32, ValType::I32, ValType::I32, ValType::I32],
        &[],
    ),
    ("assert", &[ValType::I32, ValType::I32, ValType::I32], &[]),
    ("result_len", &[], &[ValType::I32]),
    (
        "result_read",
        &[ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    ("elapsed_ms", &[], &[ValType::I64]),
];

fn sig(params: &[ValType], results: &[ValType]) -> String {
    let l = |v: &[ValType]| {
        v.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", l(params), l(results))
}

fn func_sig(f: &FuncType) -> String {
    sig(
        &f.params().collect::<Vec<_>>(),
        &f.results().collect::<Vec<_>>(),
    )
}

fn same(a: &[ValType], b: impl ExactSizeIterator<Item = ValType>) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ValType::eq(x, &y))
}

/// One engine for every module: fuel metering and epoch interruption compiled in.
fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut c = Config::new();
        c.consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            // Steps spend their time in host calls: compile fast, not clever.
            .cranelift_opt_level(wasmtime::OptLevel::None);
        Engine::new(&c).expect("wasmtime engine config is valid")
    })
}

impl Module {
    /// Reads, compiles and checks a module file.
    pub fn load(path: &Path) -> Result<Module, LoadError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| LoadError {
            file: file.clone(),
            message: format!("cannot read the module: {e}"),
            fix: "give the path of a built .wasm file, relative to the scenario file".into(),
        })?;
        Module::from_bytes(&file, &bytes)
    }

    /// Compiles and checks a module; `file` names it in errors.
    pub fn from_bytes(file: &str, bytes: &[u8]) -> Result<Module, LoadError> {
        let err = |message: String, fix: &str| LoadError {
            file: file.into(),
            message,
            fix: fix.into(),
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(err(
                "not a WebAssembly module (no \\0asm header)".into(),
                "build the module for wasm32-unknown-unknown (see the build.sh beside the example) and name the .wasm file",
            ));
        }
        let inner = wasmtime::Module::new(engine(), bytes).map_err(|e| {
            err(
                format!("not a valid WebAssembly module: {e:#}"),
                "rebuild it for wasm32-unknown-unknown",
            )
        })?;
        let mut bad = Vec::new();
        let mut wasi = false;
        for imp in inner.imports() {
            let what = format!("{}.{}", imp.module(), imp.name());
            if imp.module().starts_with("wasi") {
                wasi = true;
            }
            let ExternType::Func(f) = imp.ty() else {
                bad.push(format!(
                    "imports {what}, which is not a function (a module brings its own memory and tables)"
                ));
                continue;
            };
            if imp.module() != HOST_MODULE {
                bad.push(format!("imports {what} {}", func_sig(&f)));
                continue;
            }
            match API.iter().find(|(n, _, _)| *n == imp.name()) {
                None => bad.push(format!("imports {what}, which the host API does not have")),
                Some((_, p, r)) => {
                    if !(same(p, f.params()) && same(r, f.results())) {
                        bad.push(format!(
                            "imports {what} as {}, but the host API has {}",
                            func_sig(&f),
                            sig(p, r)
                        ));
                    }
                }
            }
        }
        if !bad.is_empty() {
            let names: Vec<&str> = API.iter().map(|a| a.0).collect();
            let fix = if wasi {
                format!(
                    "WASM steps get no WASI (no host files, network, clock or environment): build for wasm32-unknown-unknown, not wasm32-wasi, and use only the `{HOST_MODULE}` functions ({})",
                    names.join(", ")
                )
            } else {
                format!(
                    "use only the `{HOST_MODULE}` host API ({}) with the signatures in crates/wasmstep/README.md",
                    names.join(", ")
                )
            };
            return Err(err(
                format!(
                    "the module asks for what the sandbox does not give: {}",
                    bad.join("; ")
                ),
                &fix,
            ));
        }
        let exports: Vec<String> = inner.exports().map(|e| e.name().to_string()).collect();
        match inner.get_export(ENTRY) {
            Some(ExternType::Func(f)) if f.params().len() == 0 && same(&[ValType::I32], f.results()) => {}
            Some(ExternType::Func(f)) => {
                return Err(err(
                    format!("export `{ENTRY}` has the signature {}, not () -> (i32)", func_sig(&f)),
                    "declare it as `#[no_mangle] pub extern \"C\" fn run() -> i32` (0 = passed)",
                ))
            }
            _ => {
                return Err(err(
                    format!(
                        "no exported function `{ENTRY}` (exports: {})",
                        if exports.is_empty() { "none".into() } else { exports.join(", ") }
                    ),
                    "export the entry point: `#[no_mangle] pub extern \"C\" fn run() -> i32` (0 = passed) in a cdylib crate",
                ))
            }
        }
        if !matches!(inner.get_export(MEMORY), Some(ExternType::Memory(_))) {
            return Err(err(
                format!("no exported memory `{MEMORY}` (the host passes strings through it)"),
                "export the linear memory as `memory` (Rust cdylibs do; with a C toolchain pass --export-memory)",
            ));
        }
        Ok(Module {
            file: file.into(),
            inner,
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }
}

/// Stops a run from inside a host call or the epoch callback.
#[derive(Debug)]
struct Stop(Failure);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Stop {}

struct Limiter {
    memory: usize,
    denied: Option<(usize, usize)>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.denied = Some((self.memory, desired));
            return Err(wasmtime::Error::new(Stop(Failure::Memory {
                limit: self.memory,
                wanted: desired,
            })));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

struct State<H> {
    host: H,
    start: Instant,
    deadline: Instant,
    timeout: Duration,
    cancel: Option<Arc<AtomicBool>>,
    limiter: Limiter,
    result: Vec<u8>,
    asserts_passed: u32,
    calls: Vec<Call>,
    logs: VecDeque<String>,
    logs_dropped: u64,
}

impl<H> State<H> {
    fn check_time(&self) -> Result<(), Failure> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(Failure::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(Failure::Deadline(self.timeout));
        }
        Ok(())
    }

    fn call(&mut self, what: String, result: String) {
        if self.calls.len() < 1000 {
            self.calls.push(Call {
                at_ms: self.start.elapsed().as_millis() as u64,
                what,
                result,
            });
        }
    }

    fn set_result(&mut self, s: &str) {
        let b = s.as_bytes();
        self.result = b[..b.len().min(MAX_STRING)].to_vec();
    }
}

type C<'a, H> = Caller<'a, State<H>>;

fn stop(f: Failure) -> wasmtime::Error {
    wasmtime::Error::new(Stop(f))
}

fn trap(msg: String) -> wasmtime::Error {
    stop(Failure::Trap(msg))
}

fn memory<H>(c: &mut C<'_, H>) -> wasmtime::Result<wasmtime::Memory> {
    match c.get_export(MEMORY) {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(trap("the module has no exported memory".into())),
    }
}

/// A UTF-8 string at (ptr, len) in the module's memory.
fn read_str<H>(c: &mut C<'_, H>, ptr: i32, len: i32, what: &str) -> wasmtime::Result<String> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    if l > MAX_STRING {
        return Err(trap(format!(
            "{what}: string of {l} bytes (at most {MAX_STRING})"
        )));
    }
    let m = memory(c)?;
    let data = m.data(&*c);
    let bytes = p
        .checked_add(l)
        .and_then(|end| data.get(p..end))
        .ok_or_else(|| {
            trap(format!(
                "{what}: string at {p}+{l} is outside the module's memory ({} bytes)",
                data.len()
            ))
        })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| trap(format!("{what}: string is not UTF-8")))
}

fn check<H>(c: &C<'_, H>) -> wasmtime::Result<()> {
    c.data().check_time().map_err(stop)
}

fn linker<H: HostApi + 'static>() -> wasmtime::Result<Linker<State<H>>> {
    let mut l: Linker<State<H>> = Linker::new(engine());
    l.func_wrap(HOST_MODULE, "log", |mut c: C<H>, p: i32, n: i32| {
        let s = read_str(&mut c, p, n, "log")?;
        let st = c.data_mut();
        st.host.log(&s);
        if st.logs.len() < MAX_LOG_LINES {
            st.logs.push_back(s);
        } else {
            st.logs_dropped += 1;
        }
        Ok(())
    })?;
    l.func_wrap(
        HOST_MODULE,
        "exec",
        |mut c: C<H>, vp: i32, vn: i32, cp: i32, cn: i32, timeout_ms: i32| {
            check(&c)?;
            let vm = read_str(&mut c, vp, vn, "exec vm")?;
            let cmd = read_str(&mut c, cp, cn, "exec cmd")?;
            let st = c.data_mut();
            let want = if timeout_ms > 0 {
                Duration::from_millis(timeout_ms as u64)
            } else {
                Duration::from_secs(30)
            };
            let left = st.deadline.saturating_duration_since(Instant::now());
            let r = st.host.exec(&vm, &cmd, want.min(left));
            let short: String = cmd.chars().take(80).collect();
            match r {
                Ok(o) => {
                    st.call(format!("exec {vm}: {short}"), format!("exit {}", o.code));
                    st.set_result(&o.stdout);
                    Ok(o.code.max(0))
                }
                Err(e) => {
                    let e = e.to_string();
                    st.call(format!("exec {vm}: {short}"), format!("error: {e}"));
                    st.set_result(&e);
                    Ok(-1)
                }
            }
        },
    )?;
    l.func_wrap(
        HOST_MODULE,
        "impair",
        |mut c: C<H>, lp: i32, ln: i32, delay: i32, jitter: i32, loss: i32, rate: i32| {
            check(&c)?;
            let link = read_str(&mut c, lp, ln, "impair link")?;
            if [delay, jitter, loss, rate].iter().any(|v| *v < 0) || loss > 10_000 {
                let e = "impair: values must be ≥ 0 and loss ≤ 10000 (hundredths of a percent)";
                c.data_mut().set_result(e);
                return Ok(-1);
            }
            let imp = Impair {
                delay_ms: delay as u32,
                jitter_ms: jitter as u32,
                loss_bp: loss as u32,
                rate_kbit: rate as u32,
            };
            let st = c.data_mut();
            let r = st.host.impair(&link, &imp);
            let what = format!(
                "impair {link}: delay {delay} ms, jitter {jitter} ms, loss {}.{:02} %, rate {rate} kbit/s",
                loss / 100,
                loss % 100
            );
            Ok(host_result(st, what, r))
        },
    )?;
    l.func_wrap(HOST_MODULE, "clear", |mut c: C<H>, lp: i32, ln: i32| {
        check(&c)?;
        let link = read_str(&mut c, lp, ln, "clear link")?;
        let st = c.data_mut();
        let r = st.host.clear(&link);
        Ok(host_result(st, format!("clear {link}"), r))
    })?;
    l.func_wrap(
        HOST_MODULE,
        "link",
        |mut c: C<H>, lp: i32, ln: i32, up: i32| {
            check(&c)?;
            let link = read_str(&mut c, lp, ln, "link")?;
            let st = c.data_mut();
            let r = st.host.set_link(&link, up != 0);
            let what = format!("link {link} {}", if up != 0 { "up" } else { "down" });
            Ok(host_result(st, what, r))
        },
    )?;
    l.func_wrap(HOST_MODULE, "sleep_ms", |c: C<H>, ms: i32| {
        check(&c)?;
        let until = Instant::now() + Duration::from_millis(ms.max(0) as u64);
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(0);
            }
            check(&c)?;
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    })?;
    l.func_wrap(HOST_MODULE, "var_get", |mut c: C<H>, p: i32, n: i32| {
        let name = read_str(&mut c, p, n, "var_get")?;
        let st = c.data_mut();
        match st.host.var_get(&name) {
            Some(v) => {
                st.set_result(&v);
                Ok(st.result.len() as i32)
            }
            None => {
                st.result.clear();
                Ok(-1)
            }
        }
    })?;
    l.func_wrap(
        HOST_MODULE,
        "var_set",
        |mut c: C<H>, np: i32, nn: i32, vp: i32, vn: i32| {
            let name = read_str(&mut c, np, nn, "var_set name")?;
            let value = read_str(&mut c, vp, vn, "var_set value")?;
            let st = c.data_mut();
            st.host.var_set(&name, &value);
            let short: String = value.chars().take(80).collect();
            st.call(format!("var {name} = {short:?}"), "set".into());
            Ok(())
        },
    )?;
    l.func_wrap(
        HOST_MODULE,
        "assert",
        |mut c: C<H>, ok: i32, p: i32, n: i32| {
            let msg = read_str(&mut c, p, n, "assert")?;
            if ok != 0 {
                c.data_mut().asserts_passed += 1;
                Ok(())
            } else {
                Err(stop(Failure::Assert(msg)))
            }
        },
    )?;
    l.func_wrap(HOST_MODULE, "result_len", |c: C<H>| {
        Ok(c.data().result.len() as i32)
    })?;
    l.func_wrap(
        HOST_MODULE,
        "result_read",
        |mut c: C<H>, p: i32, cap: i32| {
            let m = memory(&mut c)?;
            let (data, st) = m.data_and_store_mut(&mut c);
            let n = st.result.len().min(cap.max(0) as usize);
            let p = p as u32 as usize;
            let dst = p
                .checked_add(n)
                .and_then(|end| data.get_mut(p..end))
                .ok_or_else(|| {
                    trap(format!(
                        "result_read: buffer at {p}+{n} is outside the module's memory"
                    ))
                })?;
            dst.copy_from_slice(&st.result[..n]);
            Ok(n as i32)
        },
    )?;
    l.func_wrap(HOST_MODULE, "elapsed_ms", |c: C<H>| {
        Ok(c.data().start.elapsed().as_millis() as i64)
    })?;
    Ok(l)
}

fn host_result<H: HostApi>(st: &mut State<H>, what: String, r: Result<(), H::Error>) -> i32 {
    match r {
        Ok(()) => {
            st.call(what, "ok".into());
            st.result.clear();
            0
        }
        Err(e) => {
            let e = e.to_string();
            st.call(what, format!("error: {e}"));
            st.set_result(&e);
            -1
        }
    }
}

/// Ticks the engine's epoch while a run is going (the epoch callback then checks the clock).
struct Ticker {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start() -> Ticker {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !d.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    engine().increment_epoch();
                }
            })
            .ok();
        Ticker { done, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn failure_of(e: &wasmtime::Error, limits: &Limits) -> Failure {
    if let Some(Stop(f)) = e.downcast_ref::<Stop>() {
        return f.clone();
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure::OutOfFuel(limits.fuel),
        Some(Trap::Interrupt) => Failure::Deadline(limits.timeout),
        Some(Trap::StackOverflow) => Failure::Trap("stack overflow (endless recursion?)".into()),
        Some(Trap::UnreachableCodeReached) => {
            Failure::Trap("unreachable instruction (a Rust panic without a hook, or abort)".into())
        }
        Some(t) => Failure::Trap(t.to_string()),
        None => Failure::Trap(format!("{e:#}")),
    }
}

/// Runs `run()` of module `m` against `host` within `limits` and hands `host` back. Never
/// panics on what the module does; every way it ends is in the [`Outcome`].
pub fn run<H: HostApi + 'static>(m: &Module, host: H, limits: &Limits) -> (Outcome, H) {
    let start = Instant::now();
    let state = State {
        host,
        start,
        deadline: start + limits.timeout,
        timeout: limits.timeout,
        cancel: limits.cancel.clone(),
        limiter: Limiter {
            memory: limits.memory,
            denied: None,
        },
        result: Vec::new(),
        asserts_passed: 0,
        calls: Vec::new(),
        logs: VecDeque::new(),
        logs_dropped: 0,
    };
    let mut store = Store::new(engine(), state);
    store.limiter(|s| &mut s.limiter);
    let mut failure = None;
    if let Err(e) = store.set_fuel(limits.fuel) {
        failure = Some(Failure::Start(e.to_string()));
    }
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| match ctx.data().check_time() {
        Ok(()) => Ok(UpdateDeadline::Continue(1)),
        Err(f) => Err(stop(f)),
    });
    let _ticker = Ticker::start();
    if failure.is_none() {
        failure = run_inner(m, &mut store, limits).err();
    }
    if let (Some(Failure::Trap(_)), Some((limit, wanted))) = (&failure, store.data().limiter.denied)
    {
        failure = Some(Failure::Memory { limit, wanted });
    }
    let fuel_left = store.get_fuel().unwrap_or(0);
    let st = store.into_data();
    let out = Outcome {
        failure,
        elapsed: start.elapsed(),
        fuel_used: limits.fuel.saturating_sub(fuel_left),
        asserts_passed: st.asserts_passed,
        calls: st.calls,
        logs: st.logs.into(),
        logs_dropped: st.logs_dropped,
    };
    (out, st.host)
}

fn run_inner<H: HostApi + 'static>(
    m: &Module,
    store: &mut Store<State<H>>,
    limits: &Limits,
) -> Result<(), Failure> {
    let l = linker().map_err(|e| Failure::Start(e.to_string()))?;
    let inst = l
        .instantiate(&mut *store, &m.inner)
        .map_err(|e| match failure_of(&e, limits) {
            Failure::Trap(_) => Failure::Start(format!("{e:#}")),
            f => f,
        })?;
    let f = inst
        .get_typed_func::<(), i32>(&mut *store, ENTRY)
        .map_err(|e| Failure::Start(e.to_string()))?;
    match f.call(&mut *store, ()) {
        Ok(0) => Ok(()),
        Ok(n) => Err(Failure::Returned(n)),
        Err(e) => Err(failure_of(&e, limits)),
    }
}
