//! The agent's reaper against std's `Command::spawn` on the host (own test binary: the reaper
//! waits for every child of the process it runs in).
//!
//! `Command::spawn` reaps a child whose `exec` failed and panics if that pid was already reaped;
//! a reaper that reaped with `waitpid(-1)` right away lost that race about once in ten failed
//! execs inside a guest, and the agent (PID 1) took the guest kernel down with it.

use std::process::Command;

use kobako_agent::reaper::{self, ExitStatus};

#[test]
fn failed_execs_racing_exiting_children_neither_panic_nor_lose_a_status() {
    reaper::start();
    let missing = std::thread::spawn(|| {
        for _ in 0..400 {
            let err = reaper::spawn(&mut Command::new("/no/such/program"))
                .expect_err("a program that does not exist cannot start");
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        }
    });
    let quick = std::thread::spawn(|| {
        for i in 0..400 {
            let code = i % 7;
            let (_child, exited) =
                reaper::spawn(Command::new("/bin/sh").args(["-c", &format!("exit {code}")]))
                    .expect("spawn sh");
            let st = exited
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the reaper hands every registered child's status over");
            assert_eq!(st, ExitStatus::Code(code));
        }
    });
    missing.join().expect("failed execs");
    quick.join().expect("exiting children");
}
