//! The lab net daemon (`kobako lab netd LAB`): holds a lab's userspace relays.
//!
//! On a host kernel without netem (these machines) kobako-net impairs a port by putting a
//! userspace relay between the tap and its bridge. A relay is threads in the process that
//! made it, so it needs a process that outlives `kobako impair`: this one. One per impaired lab,
//! started on demand (own session, so it survives the CLI and the server), it re-reads the
//! store's link impairments on `reload`, and exits on `exit` or when the lab's namespace is
//! gone. Killed, it is restarted by the next `up`/`impair`, and kobako-net's relay re-attaches
//! to the ports it finds detached (their legs are still on the bridges).
//!
//! Files in [`super::lab_run_dir`]: `netd.sock` (line protocol: `reload` → `ok` |
//! `error: MESSAGE`; `exit` → `ok`), `netd.pid`, `netd.log`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kobako_net::{LabName as NetLabName, LabNet};

use super::{lab_run_dir, LabError, LabRecord, Result};

fn sock(lab: &str) -> PathBuf {
    lab_run_dir(lab).join("netd.sock")
}

fn pid_of(lab: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(lab_run_dir(lab).join("netd.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    kobako_runtime::vmdir::alive(pid).then_some(pid)
}

/// Whether the lab's net daemon runs and answers.
pub fn running(lab: &str) -> bool {
    pid_of(lab).is_some() && UnixStream::connect(sock(lab)).is_ok()
}

/// Starts the lab's net daemon unless it runs.
pub fn ensure(lab: &str) -> Result<()> {
    if running(lab) {
        return Ok(());
    }
    let dir = lab_run_dir(lab);
    std::fs::create_dir_all(&dir).map_err(LabError::io(dir.display().to_string()))?;
    let log = std::fs::File::create(dir.join("netd.log"))
        .map_err(LabError::io(format!("{}/netd.log", dir.display())))?;
    let exe = std::env::current_exe().map_err(LabError::io("cannot find the kobako binary"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["lab", "netd", lab])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure runs between fork and exec and only calls setsid, which is
    // async-signal-safe; the child gets its own session so that it outlives the command (and
    // the terminal) that started it. Failure (already a leader) is harmless.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(LabError::io("starting the lab net daemon"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if running(lab) {
            // It outlives us; while we live (e.g. the server), reap it when it ends.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(LabError::Netd(format!(
                "the lab net daemon exited ({st}): {}",
                kobako_runtime::vmdir::tail(&dir.join("netd.log"), 5)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    Err(LabError::Netd(format!(
        "the lab net daemon did not start within 10 s: {}",
        kobako_runtime::vmdir::tail(&dir.join("netd.log"), 5)
    )))
}

/// Sends one command to the lab's net daemon and waits for its answer.
pub fn request(lab: &str, cmd: &str) -> Result<()> {
    let mut s = UnixStream::connect(sock(lab))
        .map_err(LabError::io(format!("lab net daemon of '{lab}'")))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    writeln!(s, "{cmd}")?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(LabError::io(format!("lab net daemon of '{lab}'")))?;
    match line.trim() {
        "ok" => Ok(()),
        l => Err(LabError::Netd(
            l.strip_prefix("error: ")
                .unwrap_or(if l.is_empty() {
                    "the lab net daemon closed the connection (see netd.log)"
                } else {
                    l
                })
                .to_string(),
        )),
    }
}

/// Stops the lab's net daemon (politely, then by force); fine when none runs.
pub fn stop(lab: &str) {
    let Some(pid) = pid_of(lab) else { return };
    let _ = request(lab, "exit");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && kobako_runtime::vmdir::alive(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if kobako_runtime::vmdir::alive(pid) {
        // SAFETY: plain syscall; `pid` is the daemon's, read from its pid file and alive.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn reload(net: &LabNet, lab: &str) -> Result<()> {
    let db = super::db()?;
    let rec = LabRecord::load_from(&db, lab)?.ok_or_else(|| LabError::NotFound(lab.into()))?;
    super::impairments::apply_impairments(net, &db, &rec.lab)
}

/// Other net daemon processes of `lab` on this host.
fn others(lab: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = format!("\0lab\0netd\0{lab}\0");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The daemon itself. Returns the process exit code.
pub fn main(lab: &str) -> i32 {
    let name = match NetLabName::new(lab) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("netd: {e}");
            return 2;
        }
    };
    let net = match LabNet::open(&name) {
        Ok(Some(n)) => n,
        Ok(None) => {
            eprintln!("netd: lab '{lab}' has no network (is it up?)");
            return 1;
        }
        Err(e) => {
            eprintln!("netd: {e}");
            return 1;
        }
    };
    // One daemon per lab: relays of two would fight over the same ports (a leftover of a run
    // whose state directory vanished, e.g. a test's temporary directory).
    for pid in others(lab) {
        eprintln!("netd: stopping another net daemon of this lab (pid {pid})");
        // SAFETY: plain syscall on a pid whose command line says it is our kind of process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let path = sock(lab);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("netd: {}: {e}", path.display());
            return 1;
        }
    };
    if let Err(e) = reload(&net, lab) {
        eprintln!("netd: applying impairments: {e}");
    }
    let _ = std::fs::write(
        lab_run_dir(lab).join("netd.pid"),
        std::process::id().to_string(),
    );
    eprintln!("netd: serving lab '{lab}' on {}", path.display());
    let _ = listener.set_nonblocking(true);
    let ns_file = kobako_net::Netns::path_of(net.netns().name());
    let sock_ino = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0);
    let mut last_check = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut line = String::new();
                let _ = BufReader::new(&s).read_line(&mut line);
                let mut w = &s;
                match line.trim() {
                    "reload" => {
                        let answer = match reload(&net, lab) {
                            Ok(()) => "ok".to_string(),
                            Err(e) => format!("error: {e}"),
                        };
                        let _ = writeln!(w, "{answer}");
                    }
                    "exit" => {
                        let _ = writeln!(w, "ok");
                        eprintln!("netd: exit requested");
                        let _ = std::fs::remove_file(&path);
                        return 0;
                    }
                    other => {
                        let _ = writeln!(w, "error: unknown command '{other}'");
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                eprintln!("netd: accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if last_check.elapsed() > Duration::from_secs(2) {
            last_check = Instant::now();
            // Our socket gone or replaced: the state directory went away, or another daemon
            // took over. Either way this one must not keep relaying.
            let ours = std::fs::metadata(&path)
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == sock_ino)
                .unwrap_or(false);
            if !ours {
                eprintln!("netd: socket {} is gone; exiting", path.display());
                return 0;
            }
            if !ns_file.exists() {
                eprintln!("netd: lab namespace is gone; exiting");
                let _ = std::fs::remove_file(&path);
                return 0;
            }
        }
    }
}
