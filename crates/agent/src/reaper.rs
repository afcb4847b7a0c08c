//! Child reaping for a process that may be PID 1.
//!
//! One thread calls `waitpid(-1)` for every child (and, as PID 1, for every orphan re-parented to
//! us), and hands each status to whoever registered that pid. Spawning and registering happen under
//! the same lock the reaper takes before dispatching, so a child that exits instantly is never
//! missed; statuses nobody registered (orphaned daemons' children) are dropped.

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
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid pointer to a c_int; no other invariants.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            // ECHILD: nothing to wait for; sleep until someone spawns a child.
            let t = r.table.lock().unwrap_or_else(|e| e.into_inner());
            let seen = t.spawned;
            let _unused = r
                .wake
                .wait_timeout_while(t, std::time::Duration::from_secs(1), |t| t.spawned == seen)
                .unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let st = if libc::WIFEXITED(status) {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            continue;
        };
        let mut t = r.table.lock().unwrap_or_else(|e| e.into_inner());
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
