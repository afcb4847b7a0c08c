//! `exec`: run a process for the host, with pipes or a pseudo-terminal, as any user, with a
//! timeout; stream its output and report how it ended. One thread per request waits for the exit
//! (through the reaper), one per output stream forwards bytes, one feeds its input.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use kobako_agent::proto::{ExecRequest, Frame, Kind, Msg, TtySize};

use crate::{fail, lock, reply, send, Input, Sessions};
use kobako_agent::reaper;

/// A user from /etc/passwd (and their groups from /etc/group).
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: String,
    pub groups: Vec<u32>,
}

/// Look a user up by name or numeric id.
pub fn lookup_user(spec: &str) -> Result<User, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let by_uid: Option<u32> = spec.parse().ok();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            continue;
        }
        let uid: u32 = f[2].parse().unwrap_or(u32::MAX);
        if f[0] == spec || by_uid == Some(uid) {
            let gid: u32 = f[3].parse().unwrap_or(uid);
            let mut groups = vec![gid];
            for g in std::fs::read_to_string("/etc/group")
                .unwrap_or_default()
                .lines()
            {
                let gf: Vec<&str> = g.split(':').collect();
                if gf.len() >= 4 && gf[3].split(',').any(|m| m == f[0]) {
                    if let Ok(id) = gf[2].parse() {
                        groups.push(id);
                    }
                }
            }
            return Ok(User {
                uid,
                gid,
                name: f[0].to_string(),
                home: f[5].to_string(),
                groups,
            });
        }
    }
    match by_uid {
        // A bare uid without a passwd entry is still a valid identity.
        Some(uid) => Ok(User {
            uid,
            gid: uid,
            name: uid.to_string(),
            home: "/".into(),
            groups: vec![uid],
        }),
        None => Err(format!("no user '{spec}' in the guest's /etc/passwd")),
    }
}

/// Open a pseudo-terminal pair of the given size: (master, slave).
fn open_pty(size: TtySize) -> std::io::Result<(OwnedFd, File)> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on a fd we own; buffers are valid.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        set_winsize(m, size.rows, size.cols);
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_noctty()
            .open(path)?;
        Ok((master, slave))
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

fn set_winsize(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a terminal fd.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

pub fn run(stream: u32, req: ExecRequest, in_rx: Receiver<Input>, sessions: Sessions) {
    let fail = |msg: String| {
        lock(&sessions).remove(&stream);
        fail(stream, msg)
    };
    let Some((prog, args)) = req.argv.split_first() else {
        return fail("exec: empty argv".into());
    };
    let mut cmd = Command::new(prog);
    cmd.args(args);
    if let Some(spec) = &req.user {
        let u = match lookup_user(spec) {
            Ok(u) => u,
            Err(e) => return fail(e),
        };
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
        let groups: Vec<libc::gid_t> = u.groups.clone();
        let (uid, gid) = (u.uid, u.gid);
        // SAFETY: between fork and exec, only async-signal-safe calls on data allocated before
        // the fork. Groups, then gid, then uid: each step needs the privileges the next drops.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if req.cwd.is_none() {
            cmd.current_dir(&u.home);
        }
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }

    let mut master: Option<OwnedFd> = None;
    if let Some(size) = req.tty {
        let (m, slave) = match open_pty(size) {
            Ok(p) => p,
            Err(e) => return fail(format!("exec {prog}: cannot open a pty: {e}")),
        };
        let (s1, s2) = match (slave.try_clone(), slave.try_clone()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return fail("exec: cannot duplicate the pty".into()),
        };
        cmd.stdin(Stdio::from(slave))
            .stdout(Stdio::from(s1))
            .stderr(Stdio::from(s2))
            .env(
                "TERM",
                std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
            );
        // SAFETY: setsid + TIOCSCTTY between fork and exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        master = Some(m);
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout kills the whole pipeline the command started.
        .process_group(0);
    }
    let (mut child, rx) = match reaper::spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => return fail(format!("exec {prog}: {e}")),
    };
    // The parent must not keep the slave open, or the master never sees EOF.
    drop(cmd);
    let pid = child.id() as i32;

    // Input: stdin bytes, resizes.
    let mut stdin_pipe = child.stdin.take();
    let master_w = master
        .as_ref()
        .and_then(|m| m.try_clone().ok())
        .map(File::from);
    std::thread::spawn(move || {
        let mut master_w = master_w;
        while let Ok(input) = in_rx.recv() {
            match input {
                Input::Data(buf) if buf.is_empty() => {
                    stdin_pipe = None; // EOF for a pipe; a tty has no EOF to send
                }
                Input::Data(buf) => {
                    let ok = match (&mut master_w, &mut stdin_pipe) {
                        (Some(m), _) => m.write_all(&buf).is_ok(),
                        (None, Some(p)) => p.write_all(&buf).is_ok(),
                        (None, None) => true,
                    };
                    if !ok {
                        stdin_pipe = None;
                    }
                }
                Input::Resize(rows, cols) => {
                    if let Some(m) = &master_w {
                        set_winsize(m.as_raw_fd(), rows, cols);
                    }
                }
                Input::End(_) => {}
            }
        }
    });
    if let Some(s) = lock(&sessions).get_mut(&stream) {
        s.pid = Some(pid);
    }
    reply(stream, &Msg::Started { pid });

    // Output.
    let (done_tx, done_rx) = channel::<()>();
    let mut outputs: Vec<(Box<dyn Read + Send>, Kind)> = Vec::new();
    if let Some(m) = master {
        outputs.push((Box::new(File::from(m)), Kind::Stdout));
    }
    if let Some(s) = child.stdout.take() {
        outputs.push((Box::new(s), Kind::Stdout));
    }
    if let Some(s) = child.stderr.take() {
        outputs.push((Box::new(s), Kind::Stderr));
    }
    let readers = outputs.len();
    for (mut pipe, kind) in outputs {
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    // EIO: the pty's last slave closed.
                    Ok(0) | Err(_) => break,
                    Ok(n) => send(&Frame {
                        stream,
                        kind,
                        payload: buf[..n].to_vec(),
                    }),
                }
            }
            send(&Frame {
                stream,
                kind,
                payload: Vec::new(),
            });
            let _ = done.send(());
        });
    }

    let mut timed_out = false;
    let status = match req.timeout_ms {
        Some(ms) => match rx.recv_timeout(Duration::from_millis(ms)) {
            Ok(st) => Some(st),
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                // SAFETY: kill(2) of the process group (or session) we created for this command.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                rx.recv().ok()
            }
            Err(RecvTimeoutError::Disconnected) => None,
        },
        None => rx.recv().ok(),
    };
    // Let the output readers drain what the process wrote. A background grandchild may keep the
    // pipes open forever; don't let it hold the exit status hostage.
    let deadline = Instant::now() + Duration::from_millis(500);
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    lock(&sessions).remove(&stream);
    let (code, signal) = match status {
        Some(reaper::ExitStatus::Code(c)) => (Some(c), None),
        Some(reaper::ExitStatus::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    reply(
        stream,
        &Msg::Exited {
            code,
            signal,
            timed_out,
        },
    );
}
