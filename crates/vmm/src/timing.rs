//! Clocks for boot-time measurements: monotonic wall time and the process's CPU time
//! (`CLOCK_PROCESS_CPUTIME_ID`, which counts from exec, so it includes the dynamic loader and
//! everything before `main`). Used from any thread.

use std::sync::LazyLock;

/// A pair of clock readings.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// CLOCK_MONOTONIC in nanoseconds (comparable across processes on this host).
    pub mono_ns: u64,
    /// Process CPU time in microseconds, all threads, since exec.
    pub cpu_us: u64,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Stamp {
    pub fn now() -> Self {
        Stamp {
            mono_ns: clock_ns(libc::CLOCK_MONOTONIC),
            cpu_us: clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) / 1000,
        }
    }

    /// Wall-clock microseconds from `earlier` to `self`.
    pub fn wall_since(&self, earlier: &Stamp) -> u64 {
        self.mono_ns.saturating_sub(earlier.mono_ns) / 1000
    }
}

/// Taken when `main_with_args` starts (forced there); "process start" in all reports.
pub static PROCESS_START: LazyLock<Stamp> = LazyLock::new(Stamp::now);

/// Resident set size of this process in KiB (from /proc/self/statm), 0 if unreadable.
pub fn rss_kib() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page / 1024
}
