//! Connecting to a VM's Unix sockets without trusting the directory they are in.
//!
//! A jailed `kobako vmm` binds its own sockets (API, console, vsock) in the one directory its
//! jail uid may write (`<vm dir>/vmm/`). A compromised VMM could put a symlink there in place
//! of a socket (`api.sock -> /run/docker.sock`) and have the server, which is root, connect to
//! another service and speak to it. [`connect`] opens the path with `O_PATH | O_NOFOLLOW`,
//! checks that what it got is a socket, and connects through `/proc/self/fd/N`, which names
//! exactly that inode: no window between the check and the connect.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to the Unix socket at `path`, refusing a symlink or anything that is not a socket.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fstat(2) into a zeroed stat buffer on a descriptor we own.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a socket (a symlink or a file put in its place): not connecting",
                path.display()
            ),
        ));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// [`connect`] for async callers.
pub fn connect_tokio(path: &Path) -> io::Result<tokio::net::UnixStream> {
    let s = connect(path)?;
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_to_a_socket_and_refuses_a_symlink_to_one() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.sock");
        let l = std::os::unix::net::UnixListener::bind(&real).unwrap();
        let mut c = connect(&real).unwrap();
        let (mut s, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");

        let link = d.path().join("api.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // O_PATH | O_NOFOLLOW opens the link itself, which is no socket.
        let e = connect(&link).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        // A plain file in a socket's place is refused, not opened.
        let f = d.path().join("file.sock");
        std::fs::write(&f, b"x").unwrap();
        let e = connect(&f).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
    }
}
