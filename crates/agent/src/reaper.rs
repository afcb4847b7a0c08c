//! Child reaping for a process that may be PID 1.
//!
//! One thread waits for every child (and, as PID 1, for every orphan re-parented to us), and hands
//! each status to whoever registered that pid; statuses nobody registered (orphaned daemons'
//! children) are dropped.
//!
//! The reaper never reaps a child while a spawn is in progress. `Command::spawn` itself reaps a
//! child whose `exec` failed (it reads the errno from a pipe, then `waitpid`s that pid and
//! panics if the pid is gone). So the reaper first *peeks* (`waitid(P_ALL, WEXITED | WNOWAIT)`
//! leaves the zombie in place), then takes the table lock, which `spawn` holds from before the
//! fork until the pid is registered, and only then reaps exactly the pid it saw, without
//! blocking. A reaper that reaped with `waitpid(-1)` straight away won that race about once in
//! ten `exec` of a missing program: std panicked, and as PID 1 the agent's death panicked the
//! guest kernel.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex, OnceLock};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

struct Table {
    waiters: HashMap<i32, Sender<ExitStatus>>,
    /// Number of live children we spawned (wakes the reaper when it has nothing to wait for).
    spawned: u64,
}

struct Reaper {
    table: Mutex<Table>,
    wake: Condvar,
}

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(reap_loop)
            .expect("spawn reaper thread");
        Reaper {
            table: Mutex::new(Table {
                waiters: HashMap::new(),
                spawned: 0,
            }),
            wake: Condvar::new(),
        }
    })
}

fn reap_loop() {
    let r = reaper();
    loop {
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid pointer to a siginfo_t; WNOWAIT leaves the child a zombie.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: nothing to wait for; sleep until someone spawns a child.
            let t = r.table.lock().unwrap_or_else(|e| e.into_inner());
            let seen = t.spawned;
            let _unused = r
                .wake
                .wait_timeout_while(t, std::time::Duration::from_secs(1), |t| t.spawned == seen)
                .unwrap_or_else(|e| e.into_inner());
            continue;
        }
        // SAFETY: waitid filled `info` for a child state change (WEXITED), so si_pid is valid.
        let pid = unsafe { info.si_pid() };
        // A spawn in progress holds the lock and may reap this very pid itself (exec failed).
        let mut t = r.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid of one pid with a valid pointer to a c_int; WNOHANG never blocks
        // while we hold the lock.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
            continue; // reaped by the spawn that owns it (or not a zombie after all)
        }
        let st = if libc::WIFEXITED(status) {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            continue;
        };
        if let Some(tx) = t.waiters.remove(&pid) {
            let _ = tx.send(st);
        }
    }
}

/// Spawn `cmd` and register for its exit status. Never call `Child::wait` on the result: the
/// reaper owns waiting; use the returned receiver.
pub fn spawn(cmd: &mut Command) -> std::io::Result<(Child, Receiver<ExitStatus>)> {
    // The agent shields itself from the OOM killer (as PID 1 its death panics the kernel);
    // children must not inherit that shield.
    // SAFETY: open/write/close of a /proc file between fork and exec: async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let r = reaper();
    let mut t = r.table.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let (tx, rx) = channel();
    t.waiters.insert(child.id() as i32, tx);
    t.spawned += 1;
    drop(t);
    r.wake.notify_all();
    Ok((child, rx))
}

/// Start reaping now (PID 1 must reap orphans even before it spawns anything).
pub fn start() {
    let _ = reaper();
}
