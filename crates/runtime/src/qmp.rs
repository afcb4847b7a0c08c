//! A minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.rst): line-delimited JSON
//! over the VM's `qmp.sock`. QEMU serves one QMP client at a time, so callers connect per
//! operation and drop the connection right after.

use std::os::fd::AsRawFd;
use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{Result, RuntimeError};

pub struct Qmp {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

fn qerr(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Qmp(e.to_string())
}

impl Qmp {
    /// Connect, read the greeting and enter command mode.
    pub async fn connect(sock: &Path) -> Result<Qmp> {
        let s = UnixStream::connect(sock)
            .await
            .map_err(|e| qerr(format!("connect {}: {e}", sock.display())))?;
        let (rd, wr) = s.into_split();
        let mut q = Qmp {
            rd: BufReader::new(rd),
            wr,
        };
        let greeting = q.read_msg().await?;
        if greeting.get("QMP").is_none() {
            return Err(qerr(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.rd.read_line(&mut line).await.map_err(qerr)?;
        if n == 0 {
            return Err(qerr("QEMU closed the QMP connection"));
        }
        serde_json::from_str(&line).map_err(qerr)
    }

    /// Run a command; returns its "return" value. Asynchronous events in between are skipped.
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let line = Self::line(cmd, args);
        self.wr.write_all(line.as_bytes()).await.map_err(qerr)?;
        self.answer(cmd).await
    }

    /// Hands QEMU an open file under `name` (`getfd`, the descriptor passed with SCM_RIGHTS),
    /// for commands that take `fd:NAME` (a migration to a file without spawning a helper,
    /// which QEMU's sandbox forbids).
    pub async fn send_fd(&mut self, name: &str, fd: std::os::fd::RawFd) -> Result<()> {
        let line = Self::line("getfd", Some(json!({ "fdname": name })));
        let sock: &UnixStream = self.wr.as_ref();
        loop {
            sock.writable().await.map_err(qerr)?;
            match sock.try_io(tokio::io::Interest::WRITABLE, || {
                send_with_fd(sock.as_raw_fd(), line.as_bytes(), fd)
            }) {
                Ok(n) if n == line.len() => break,
                Ok(n) => return Err(qerr(format!("getfd: short write ({n} of {})", line.len()))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(qerr(format!("getfd: {e}"))),
            }
        }
        self.answer("getfd").await.map(|_| ())
    }

    fn line(cmd: &str, args: Option<Value>) -> String {
        let mut req = json!({ "execute": cmd });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        let mut line = req.to_string();
        line.push('\n');
        line
    }

    async fn answer(&mut self, cmd: &str) -> Result<Value> {
        loop {
            let m = self.read_msg().await?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(qerr(format!(
                    "{cmd}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                )));
            }
            // {"event": ...}: not ours.
        }
    }
}

/// One `sendmsg` of `data` with `fd` attached (SCM_RIGHTS) on the socket `sock`.
fn send_with_fd(
    sock: std::os::fd::RawFd,
    data: &[u8],
    fd: std::os::fd::RawFd,
) -> std::io::Result<usize> {
    // Room for one control message holding one descriptor (CMSG_SPACE of an int is at most
    // 24 bytes on Linux; 64 with u64 alignment is ample).
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // SAFETY: msg_control points at cbuf, which is larger than CMSG_SPACE(sizeof(int)), so the
    // first header and its data lie inside it; `data` and `cbuf` outlive the sendmsg call, which
    // only reads them.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
