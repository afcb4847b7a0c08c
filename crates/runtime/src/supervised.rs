//! The caller's side of a VM's supervisor, for both runtimes: starting `kobako vm supervise DIR`
//! and waiting until the VM process runs, and, once the VM process is gone, letting the
//! supervisor clean up.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::vmdir::{alive, VmDir};
use crate::{io, Result, RuntimeError};

/// Wait until a pid is gone.
pub(crate) async fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Start `kobako vm supervise DIR` (own session) and wait until the VM process runs and created
/// its control socket `control` (`what` names the VM process in errors).
pub(crate) async fn start_supervised(
    kobako_exe: &Path,
    vm: &VmDir,
    control: &str,
    what: &str,
) -> Result<()> {
    let log =
        std::fs::File::create(vm.file("supervisor.log")).map_err(io("create supervisor.log"))?;
    let mut cmd = Command::new(kobako_exe);
    cmd.args(["vm", "supervise"])
        .arg(&vm.path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("supervisor log"))?)
        .stderr(log);
    // SAFETY: setsid in the child between fork and exec; async-signal-safe. The supervisor
    // gets its own session so it outlives this process and its terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(io(format!("start {}", kobako_exe.display())))?;
    // Reap the supervisor whenever it ends, so it never lingers as a zombie of a long-lived
    // caller (the server).
    let sup_pid = child.id() as i32;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    // Running means: the VM process exists and created its control socket.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if vm.file(control).exists() && vm.vm_pid().is_some() {
            return Ok(());
        }
        let gone = !alive(sup_pid);
        if gone || Instant::now() > deadline {
            let mut detail = vec![
                crate::vmdir::tail(&vm.file("vm.log"), 5),
                crate::vmdir::tail(&vm.file("supervisor.log"), 5),
            ];
            // A VMM whose console is its standard output (Firecracker) logs its errors there.
            if std::fs::metadata(vm.file("console.log")).is_ok_and(|m| m.len() > 0) {
                detail.insert(0, crate::vmdir::tail(&vm.file("console.log"), 5));
            }
            let detail = detail.join("\n");
            let exit = vm.exit();
            let _ = vm.remove();
            return Err(RuntimeError::ExitedEarly {
                name: vm.name.clone(),
                how: if gone {
                    match exit {
                        Some(e) => format!("the VM process failed to start: {}", e.describe()),
                        None => "the VM process failed to start".into(),
                    }
                } else {
                    format!("{what} did not create its control socket within 10 s")
                },
                console: detail,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// After the VM process is gone: let the supervisor clean up, then make sure nothing is left.
pub(crate) async fn finish(vm: &VmDir) -> Result<()> {
    if let Some(sup) = vm.supervisor_pid() {
        wait_gone(sup, Duration::from_secs(3)).await;
    }
    vm.remove()
}
