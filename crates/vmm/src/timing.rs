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
    // Both are >= 0 for the clocks used here (monotonic, CPU time, realtime after 1970).
    let (Ok(sec), Ok(nsec)) = (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) else {
        return 0;
    };
    sec * 1_000_000_000 + nsec
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

/// Time from process start to the guest's boot-complete write (recorded by the boot-timer
/// device, reported by the API and the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BootTime {
    pub wall_us: u64,
    pub cpu_us: u64,
}

impl BootTime {
    /// Now, measured from process start.
    pub fn now() -> BootTime {
        let now = Stamp::now();
        BootTime {
            wall_us: now.wall_since(&PROCESS_START),
            cpu_us: now.cpu_us,
        }
    }
}

/// Resident set size of this process in KiB (from /proc/self/statm), 0 if unreadable.
pub fn rss_kib() -> u64 {
    match std::fs::File::open("/proc/self/statm") {
        Ok(mut f) => rss_kib_from(&mut f),
        Err(_) => 0,
    }
}

/// [`rss_kib`] from an already open /proc/self/statm (re-read from the start), for threads
/// whose seccomp filter does not allow opening files.
pub fn rss_kib_from(f: &mut std::fs::File) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    // A plain read into a stack buffer: `read_to_string` would stat the file first, which the
    // vCPU filter does not allow.
    let mut buf = [0u8; 256];
    if f.seek(SeekFrom::Start(0)).is_err() {
        return 0;
    }
    let n = f.read(&mut buf).unwrap_or(0);
    let s = String::from_utf8_lossy(&buf[..n]);
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page =
        u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096)).unwrap_or(4096);
    pages * page / 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_and_clocks_advance() {
        let rss = rss_kib();
        assert!(rss > 100 && rss < 1 << 30, "rss {rss} KiB");
        let mut f = std::fs::File::open("/proc/self/statm").unwrap();
        assert!(rss_kib_from(&mut f) > 100);
        assert!(rss_kib_from(&mut f) > 100, "re-read from the start");
        let a = Stamp::now();
        let mut x = 0u64;
        for i in 0..200_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let b = Stamp::now();
        assert!(b.mono_ns > a.mono_ns && b.cpu_us >= a.cpu_us);
    }
}
