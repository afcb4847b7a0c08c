//! Bindings to kobako's WASM step host API (import module `kobako`; see
//! crates/wasmstep/README.md for the ABI). Copy this file into your own step.

#![allow(dead_code)] // not every step uses every function

mod sys {
    #[link(wasm_import_module = "kobako")]
    extern "C" {
        pub fn log(p: *const u8, n: usize);
        pub fn exec(vp: *const u8, vn: usize, cp: *const u8, cn: usize, timeout_ms: i32) -> i32;
        pub fn impair(lp: *const u8, ln: usize, delay_ms: i32, jitter_ms: i32, loss_bp: i32, rate_kbit: i32) -> i32;
        pub fn clear(lp: *const u8, ln: usize) -> i32;
        pub fn link(lp: *const u8, ln: usize, up: i32) -> i32;
        pub fn sleep_ms(ms: i32) -> i32;
        pub fn var_get(np: *const u8, nn: usize) -> i32;
        pub fn var_set(np: *const u8, nn: usize, vp: *const u8, vn: usize);
        pub fn assert(ok: i32, mp: *const u8, mn: usize);
        pub fn result_len() -> i32;
        pub fn result_read(p: *mut u8, cap: usize) -> i32;
        pub fn elapsed_ms() -> i64;
    }
}

/// The host's result buffer (stdout of `exec`, a variable's value, an error message).
fn result() -> String {
    // SAFETY: the host copies at most `cap` bytes into our buffer.
    unsafe {
        let n = sys::result_len().max(0) as usize;
        let mut buf = vec![0u8; n];
        let got = sys::result_read(buf.as_mut_ptr(), n).max(0) as usize;
        buf.truncate(got);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn status(code: i32) -> Result<(), String> {
    if code < 0 {
        Err(result())
    } else {
        Ok(())
    }
}

pub fn log(s: &str) {
    // SAFETY: (ptr, len) of a live string.
    unsafe { sys::log(s.as_ptr(), s.len()) }
}

/// Output of `exec`.
pub struct Exec {
    pub code: i32,
    pub stdout: String,
}

/// `sh -c cmd` in VM `vm` (NODE.VM of this lab); `timeout_ms` 0 = 30 s.
pub fn exec(vm: &str, cmd: &str, timeout_ms: i32) -> Result<Exec, String> {
    // SAFETY: (ptr, len) of live strings.
    let code = unsafe { sys::exec(vm.as_ptr(), vm.len(), cmd.as_ptr(), cmd.len(), timeout_ms) };
    status(code)?;
    Ok(Exec { code, stdout: result() })
}

/// Impair link `link` (both directions): delay and jitter in ms, loss in hundredths of a
/// percent, rate in kbit/s; 0 = not set.
pub fn impair(link: &str, delay_ms: i32, jitter_ms: i32, loss_bp: i32, rate_kbit: i32) -> Result<(), String> {
    // SAFETY: (ptr, len) of a live string.
    status(unsafe { sys::impair(link.as_ptr(), link.len(), delay_ms, jitter_ms, loss_bp, rate_kbit) })
}

pub fn clear(link: &str) -> Result<(), String> {
    // SAFETY: (ptr, len) of a live string.
    status(unsafe { sys::clear(link.as_ptr(), link.len()) })
}

/// Cut (`false`) or heal (`true`) a link.
pub fn set_link(link: &str, up: bool) -> Result<(), String> {
    // SAFETY: (ptr, len) of a live string.
    status(unsafe { sys::link(link.as_ptr(), link.len(), up as i32) })
}

pub fn sleep_ms(ms: i32) {
    // SAFETY: no pointers.
    unsafe {
        sys::sleep_ms(ms);
    }
}

pub fn var(name: &str) -> Option<String> {
    // SAFETY: (ptr, len) of a live string.
    let n = unsafe { sys::var_get(name.as_ptr(), name.len()) };
    if n < 0 {
        None
    } else {
        Some(result())
    }
}

pub fn set_var(name: &str, value: &str) {
    // SAFETY: (ptr, len) of live strings.
    unsafe { sys::var_set(name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
}

/// Fails the step with `msg` (and stops the module) unless `ok`.
pub fn check(ok: bool, msg: &str) {
    // SAFETY: (ptr, len) of a live string.
    unsafe { sys::assert(ok as i32, msg.as_ptr(), msg.len()) }
}

/// Milliseconds since the step started.
pub fn elapsed_ms() -> i64 {
    // SAFETY: no pointers.
    unsafe { sys::elapsed_ms() }
}

/// Report panics (`unwrap`, `expect`, index errors) as the step's failure, with the message.
pub fn panics_fail_the_step() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        // SAFETY: (ptr, len) of a live string; the host stops the module.
        unsafe { sys::assert(0, msg.as_ptr(), msg.len()) }
    }));
}
