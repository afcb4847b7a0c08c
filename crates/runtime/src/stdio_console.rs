//! The serial console of a VM process whose console is its standard input and output
//! (Firecracker writes the guest's serial port to stdout and feeds it stdin): the supervisor
//! makes two pipes once and gives them to every VM process of the VM (reboots included), copies
//! everything the VM process prints into `console.log` (cut back like the other runtimes' logs)
//! and to every client of `console.sock`, and writes what the clients type into its input.
//! So `vm console`, `vm run`'s attached console and the server's console WebSocket work as with
//! QEMU, whose chardev socket they connect to the same way.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The VM process's ends of the console pipes (the supervisor keeps its own ends in its
/// threads).
pub struct StdioConsole {
    /// What the VM process reads as its standard input.
    pub stdin: OwnedFd,
    /// What the VM process writes as its standard output.
    pub stdout: OwnedFd,
}

/// How long output may wait on a console client that does not read before it is dropped (the
/// guest must never stall behind a stuck client).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl StdioConsole {
    /// Makes the pipes, binds `sock` (mode 0600: root's, like every VM socket) and starts the
    /// threads that copy the output into `log` and to the clients, and the clients' input to
    /// the VM process. They run for the rest of the supervisor's life. `cap` cuts the log back
    /// whenever it outgrows `log_max` bytes (the supervisor's `cap_log`).
    pub fn start(
        sock: &Path,
        log: &Path,
        log_max: u64,
        cap: fn(&Path),
    ) -> std::io::Result<StdioConsole> {
        let (in_read, in_write) = pipe()?;
        let (out_read, out_write) = pipe()?;
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock)?;
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))?;
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let input = Arc::new(Mutex::new(std::fs::File::from(in_write)));
        let mut log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        {
            let clients = clients.clone();
            let log = log.to_path_buf();
            std::thread::Builder::new()
                .name("console-out".into())
                .spawn(move || {
                    let mut out = std::fs::File::from(out_read);
                    let mut size = log_file.metadata().map(|m| m.len()).unwrap_or(0);
                    let mut buf = [0u8; 4096];
                    // The supervisor holds the write end for the next boots: this never sees
                    // end of file, and ends with the supervisor.
                    while let Ok(n) = out.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        let _ = log_file.write_all(chunk);
                        size += n as u64;
                        if size > log_max {
                            cap(&log);
                            size = log_file.metadata().map(|m| m.len()).unwrap_or(0);
                        }
                        lock(&clients).retain_mut(|c| c.write_all(chunk).is_ok());
                    }
                })?;
        }
        std::thread::Builder::new()
            .name("console-accept".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let Ok(reader) = conn.try_clone() else {
                        continue;
                    };
                    let _ = conn.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
                    lock(&clients).push(conn);
                    let input = input.clone();
                    let _ = std::thread::Builder::new()
                        .name("console-in".into())
                        .spawn(move || copy_input(reader, &input));
                }
            })?;
        Ok(StdioConsole {
            stdin: in_read,
            stdout: out_write,
        })
    }
}

/// What one client types, to the VM process's input, until the client goes.
fn copy_input(mut client: UnixStream, input: &Mutex<std::fs::File>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = client.read(&mut buf) {
        if n == 0 || lock(input).write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in VM process (`cat`-like: its input echoed to its output, as a serial console
    /// with echo would) behind the console: two clients see the output, one client's input
    /// reaches the process, the log keeps it all, and a second process (a reboot) on the same
    /// pipes goes on in the same log and clients.
    #[test]
    fn the_console_pipes_reach_the_log_and_every_client() {
        let d = tempfile::tempdir().unwrap();
        let (sock, log) = (d.path().join("console.sock"), d.path().join("console.log"));
        let c = StdioConsole::start(&sock, &log, u64::MAX, |_| {}).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut a = UnixStream::connect(&sock).unwrap();
        let mut b = UnixStream::connect(&sock).unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        // Let the acceptor register both.
        std::thread::sleep(Duration::from_millis(100));
        let run = |script: &str| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .stdin(std::fs::File::from(c.stdin.try_clone().unwrap()))
                .stdout(std::fs::File::from(c.stdout.try_clone().unwrap()))
                .spawn()
                .unwrap()
        };
        let mut first = run("echo booting; read line; echo \"got $line\"");
        a.write_all(b"hello\n").unwrap();
        assert!(first.wait().unwrap().success());
        let mut second = run("echo rebooted");
        assert!(second.wait().unwrap().success());
        let want = "booting\ngot hello\nrebooted\n";
        for s in [&mut a, &mut b] {
            let mut got = Vec::new();
            while got.len() < want.len() {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "console closed early: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(String::from_utf8_lossy(&got), want);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&log).unwrap() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "log: {:?}",
                std::fs::read(&log)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A console log that outgrows its cap is cut back to its tail, as the other runtimes'.
    #[test]
    fn a_flooding_console_is_cut_back_in_the_log() {
        use crate::supervisor::{cap_log, CONSOLE_LOG_MARKER};
        let d = tempfile::tempdir().unwrap();
        let (sock, log) = (d.path().join("console.sock"), d.path().join("console.log"));
        let c = StdioConsole::start(&sock, &log, 1000, |l| {
            let _ = cap_log(l, 1000, 100);
        })
        .unwrap();
        let mut out = std::fs::File::from(c.stdout.try_clone().unwrap());
        for i in 0..100 {
            writeln!(out, "line {i:04} of the flood").unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = std::fs::read(&log).unwrap();
            if got.ends_with(b"line 0099 of the flood\n") {
                assert!(got.starts_with(CONSOLE_LOG_MARKER), "{}", got.len());
                assert!(got.len() < 1000 + CONSOLE_LOG_MARKER.len(), "{}", got.len());
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", got.len());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
