//! The AF_UNIX edge of the vsock device's host side: binding `uds_path` (replacing a stale
//! socket file), the non-blocking connect to `<uds_path>_<port>` for guest-initiated
//! connections, and the `CONNECT <port>` line host processes send.

use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Longest `CONNECT <port>\n` line.
pub(super) const MAX_CONNECT_LINE: usize = 32;

/// Binds `path`; a stale socket file nobody listens on (a previous VMM's) is replaced.
pub(super) fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let is_sock = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            let live = UnixStream::connect(path).is_ok();
            if !is_sock || live {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} exists{}: remove it or choose another uds_path",
                        path.display(),
                        if live {
                            " and something listens on it"
                        } else {
                            " and is not a socket"
                        }
                    ),
                ));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        Err(e) => Err(e),
    }
}

/// `AF_UNIX` as `sockaddr_un.sun_family` (checked at compile time).
const AF_UNIX_FAMILY: libc::sa_family_t = crate::cast::u16_of(libc::AF_UNIX as u32);
/// `sizeof(struct sockaddr_un)` (110) as a `socklen_t` (checked at compile time).
const SOCKADDR_UN_LEN: libc::socklen_t =
    crate::cast::u32_of(std::mem::size_of::<libc::sockaddr_un>() as u64);

/// A non-blocking connect to a Unix socket (a full backlog must not stall the event loop).
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = AF_UNIX_FAMILY;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the fd is owned by the UnixStream below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: connect(2) with a live, initialised sockaddr_un and its size.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            SOCKADDR_UN_LEN,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>`.
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
    }

    #[test]
    fn stale_socket_file_is_replaced_but_a_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        drop(UnixListener::bind(&uds).unwrap()); // leaves the file, nobody listens
        let v = super::super::Vsock::new(3, &uds).unwrap();
        let e = super::super::Vsock::new(3, &uds).unwrap_err().to_string();
        assert!(e.contains("something listens"), "{e}");
        drop(v);
        assert!(!uds.exists(), "the device removes its socket");
    }
}
