//! Named network namespaces, compatible with `ip netns`: a namespace `NAME` is kept alive by a
//! bind mount of its nsfs inode on `/run/netns/NAME`, so `ip netns exec NAME ...` works on it.
//!
//! Code that must run inside a namespace (opening a netlink/packet socket, a tap, writing a
//! sysctl) runs on a short-lived thread that `setns()`es into it ([`Netns::run`]); the calling
//! thread's namespace never changes, so the rest of the process is unaffected.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::error::{NetError, Result};

/// Where named namespaces live (same as iproute2's NETNS_RUN_DIR).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NSFS_MAGIC` from include/uapi/linux/magic.h: the filesystem type of `/proc/*/ns/*`.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A handle on a network namespace (named or the host's). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
    file: Arc<File>,
}

impl Netns {
    /// The namespace this process started in (the "host" namespace).
    pub fn host() -> Result<Netns> {
        static HOST: OnceLock<std::result::Result<Arc<File>, String>> = OnceLock::new();
        let f = HOST.get_or_init(|| {
            File::open("/proc/self/ns/net")
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match f {
            Ok(file) => Ok(Netns {
                name: "host".into(),
                file: file.clone(),
            }),
            Err(e) => Err(NetError::Io {
                op: "open host network namespace".into(),
                source: io::Error::other(e.clone()),
            }),
        }
    }

    /// Path of the named namespace `name`.
    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(name)
    }

    /// Opens the named namespace, `None` if it does not exist (or is a stale leftover file).
    pub fn open(name: &str) -> Result<Option<Netns>> {
        let path = Self::path_of(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NetError::io(format!("open {}", path.display()))(e)),
        };
        if !is_nsfs(&file)? {
            return Ok(None);
        }
        Ok(Some(Netns {
            name: name.to_string(),
            file: Arc::new(file),
        }))
    }

    /// Creates the named namespace, or opens it if it already exists. A leftover mount point
    /// file from a crash between "create file" and "bind mount" is repaired.
    pub fn create(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(NetError::InvalidArgument(format!(
                "invalid namespace name {name:?}"
            )));
        }
        if let Some(ns) = Self::open(name)? {
            return Ok(ns);
        }
        prepare_run_dir()?;
        let path = Self::path_of(name);
        // A stale regular file (not a mount) is left by a crash; recreate it.
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(NetError::io(format!("create {}", path.display())))?;
        let target = path.clone();
        let res = std::thread::spawn(move || -> io::Result<()> {
            // SAFETY: unshare only affects this short-lived thread's namespace membership.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            mount_bind(Path::new("/proc/thread-self/ns/net"), &target)
        })
        .join()
        .map_err(|_| NetError::InvalidArgument("namespace thread panicked".into()))?;
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            return Err(NetError::io(format!("create network namespace {name}"))(e));
        }
        Self::open(name)?.ok_or_else(|| NetError::Io {
            op: format!("open new network namespace {name}"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    /// Removes the named namespace (unmount + unlink). Absent is fine. The kernel frees the
    /// namespace, and everything in it, once no process, socket or mount refers to it.
    pub fn delete(name: &str) -> Result<()> {
        let path = Self::path_of(name);
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| NetError::InvalidArgument(format!("invalid namespace name {name:?}")))?;
        // SAFETY: umount2 with a valid NUL-terminated path; errors are inspected below.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: not a mount point (stale file); ENOENT: gone already.
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                return Err(NetError::io(format!("unmount {}", path.display()))(e));
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetError::io(format!("remove {}", path.display()))(e)),
        }
    }

    /// Names of the namespaces under /run/netns starting with `prefix`.
    pub fn list(prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(NetError::io("list /run/netns")(e)),
        };
        for ent in rd.flatten() {
            let n = ent.file_name().to_string_lossy().into_owned();
            if n.starts_with(prefix) {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The namespace's name ("host" for [`Netns::host`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread that has entered this namespace and returns its result.
    /// Sockets and file descriptors opened by `f` stay bound to this namespace after it returns.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: `fd` is a valid nsfs fd kept open by `self` for the scope's duration;
                // setns only changes this thread's network namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(NetError::io(format!(
                        "enter network namespace {}",
                        self.name
                    ))(io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| NetError::InvalidArgument("namespace thread panicked".into()))?
        })
    }

    /// Runs a short, non-blocking `f` on the *calling* thread after entering this namespace,
    /// and returns to the thread's original namespace before returning (also if `f` panics).
    /// Used for opening sockets and taps, where spawning a thread would cost more than the
    /// work itself. `f` must not block or spawn threads.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let orig = File::open("/proc/thread-self/ns/net")
            .map_err(NetError::io("open current network namespace"))?;
        // SAFETY: plain old data; fstat fills it.
        let (mut a, mut b): (libc::stat, libc::stat) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: valid fds and pointers to live stat buffers.
        let same = unsafe {
            libc::fstat(orig.as_raw_fd(), &mut a) == 0
                && libc::fstat(self.file.as_raw_fd(), &mut b) == 0
                && a.st_ino == b.st_ino
                && a.st_dev == b.st_dev
        };
        if same {
            return Ok(f());
        }
        // SAFETY: valid nsfs fd; changes only this thread's network namespace, restored below.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetError::io(format!(
                "enter network namespace {}",
                self.name
            ))(io::Error::last_os_error()));
        }
        struct Restore(File);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: valid nsfs fd of the namespace this thread came from.
                if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    // Continuing would run unrelated code in a lab's namespace; there is no
                    // safe way forward.
                    std::process::abort();
                }
            }
        }
        let _restore = Restore(orig);
        Ok(f())
    }

    /// Spawns a long-lived thread inside this namespace (for servers, capture, relays).
    /// Returns once the thread has entered the namespace.
    pub fn spawn<F, R>(&self, name: &str, f: F) -> Result<NsThread<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.file.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // SAFETY: `file` is a valid nsfs fd owned by this closure; setns only changes
                // this thread's network namespace.
                let ok = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
                let _ = tx.send(if ok {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                });
                if ok {
                    Some(f())
                } else {
                    None
                }
            })
            .map_err(NetError::io("spawn thread"))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NsThread { inner: h }),
            Ok(Err(e)) => Err(NetError::io(format!(
                "enter network namespace {}",
                self.name
            ))(e)),
            Err(_) => Err(NetError::InvalidArgument(
                "namespace thread exited early".into(),
            )),
        }
    }

    /// Writes a sysctl under /proc/sys/net (per-namespace) from inside this namespace, e.g.
    /// `("ipv4/ip_forward", "1")`.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/net/{key}");
        let v = value.to_string();
        self.enter(move || std::fs::write(&path, v.as_bytes()))?
            .map_err(NetError::io(format!("write net.{key} in {}", self.name)))
    }

    /// Reads a sysctl under /proc/sys/net from inside this namespace.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/net/{key}");
        self.enter(move || std::fs::read_to_string(&path))?
            .map(|s| s.trim().to_string())
            .map_err(NetError::io(format!("read net.{key} in {}", self.name)))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A thread running inside a network namespace (see [`Netns::spawn`]).
#[derive(Debug)]
pub struct NsThread<R> {
    inner: std::thread::JoinHandle<Option<R>>,
}

impl<R> NsThread<R> {
    /// Waits for the thread and returns its result.
    pub fn join(self) -> Result<R> {
        match self.inner.join() {
            Ok(Some(r)) => Ok(r),
            _ => Err(NetError::InvalidArgument("namespace thread failed".into())),
        }
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
}

fn is_nsfs(f: &File) -> Result<bool> {
    // SAFETY: statfs is plain old data; zeroed is valid and fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer to a live statfs.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(NetError::io("fstatfs namespace file")(
            io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == NSFS_MAGIC)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn mount_bind(src: &Path, dst: &Path) -> io::Result<()> {
    let (s, d) = (cstr(src)?, cstr(dst)?);
    // SAFETY: valid NUL-terminated paths; a bind mount with no fs type or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes /run/netns a shared mount point, as iproute2 does, so that namespace mounts made
/// here propagate into mount namespaces created later (and `ip netns` sees the same state).
fn prepare_run_dir() -> Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(NetError::io("create /run/netns"))?;
    let d = cstr(Path::new(NETNS_RUN_DIR)).map_err(NetError::io("path"))?;
    let none = c"none";
    let empty = c"";
    // SAFETY: valid NUL-terminated strings; changes propagation of /run/netns only.
    let mut rc = unsafe {
        libc::mount(
            empty.as_ptr(),
            d.as_ptr(),
            none.as_ptr(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Not a mount point yet: bind it onto itself, then make it shared.
        mount_bind(Path::new(NETNS_RUN_DIR), Path::new(NETNS_RUN_DIR))
            .map_err(NetError::io("bind-mount /run/netns"))?;
        // SAFETY: as above.
        rc = unsafe {
            libc::mount(
                empty.as_ptr(),
                d.as_ptr(),
                none.as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
    }
    if rc != 0 {
        return Err(NetError::io("make /run/netns shared")(
            io::Error::last_os_error(),
        ));
    }
    let _ = DONE.set(());
    Ok(())
}
