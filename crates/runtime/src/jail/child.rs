//! What the supervisor's child does between fork and exec to enter the jail ([`Prepared`]):
//! taps given to the jail uid, a PID namespace with a reaper, a mount namespace whose root holds
//! only what the VM needs, privileges dropped, then a wait until the supervisor's [`Joiner`] put
//! the VM process into its cgroups.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{create_cgroups, Jail};
use crate::{io, Result, RuntimeError};

/// One step of building the jail's root, with every path ready as a C string.
enum Op {
    Mkdir(CString),
    /// An empty file to bind a file onto.
    Touch(CString),
    Bind {
        src: CString,
        dst: CString,
        read_only: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Mknod {
        path: CString,
        dev: libc::dev_t,
        mode: libc::mode_t,
        owner: Option<u32>,
    },
}

/// Everything the child needs, prepared before the fork.
pub struct Prepared {
    uid: u32,
    gid: u32,
    root: CString,
    proc_dir: CString,
    ops: Vec<Op>,
    /// The VM process waits on this until the supervisor put it into its cgroups
    /// ([`Joiner`]); the write end's number, which it closes first (it inherits a copy).
    joined_read: OwnedFd,
    joined_write_raw: libc::c_int,
    /// `struct ifreq` for each tap (name + IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
    taps: Vec<[u8; 40]>,
    /// Where the first child writes the VM process's pid (host namespace), for the supervisor:
    /// read end, write end (closed in the supervisor after the spawn).
    pid_write: Option<OwnedFd>,
    pid_write_raw: libc::c_int,
}

/// Why the VM process could not be put into its cgroups (it then exits without running anything).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The child failed before forking the VM process (end of file on the pid pipe).
    #[error("the jailed VM process did not start")]
    NotStarted,
    #[error("put the VM process into its cgroup: {0}")]
    Cgroup(std::io::Error),
    #[error("tell the VM process it joined its cgroups: {0}")]
    Release(std::io::Error),
}

/// The supervisor's side of joining the VM process to its cgroups, on a thread of its own while
/// the VM process builds its root: moving a process between cgroups waits for an RCU grace
/// period (10-20 ms on these hosts, most of what the jail costs a start), which this overlaps
/// with the rest of the jail's setup instead of adding to it.
pub struct Joiner {
    /// `cgroup.procs` of each of the VM's cgroups.
    procs: Vec<std::fs::File>,
    /// Where the first child writes the VM process's pid (host namespace).
    pid_read: OwnedFd,
    joined_write: OwnedFd,
}

impl Joiner {
    /// Waits for the VM process's pid, writes it into each cgroup, then lets the VM process go
    /// on. Returns its pid; an error if the child failed before forking it (end of file: the
    /// supervisor dropped its [`Prepared`]) or a cgroup refused it (the VM process then sees
    /// end of file and exits without running anything).
    pub fn run(self) -> std::result::Result<i32, JoinError> {
        let mut buf = [0u8; 4];
        // SAFETY: reading into a live 4-byte buffer from a descriptor we own.
        let n = unsafe { libc::read(self.pid_read.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
        if n != 4 {
            return Err(JoinError::NotStarted);
        }
        let pid = i32::from_ne_bytes(buf);
        for mut f in &self.procs {
            use std::io::Write;
            f.write_all(pid.to_string().as_bytes())
                .map_err(JoinError::Cgroup)?;
        }
        // SAFETY: write(2) of one byte from a live buffer to a descriptor we own.
        if unsafe { libc::write(self.joined_write.as_raw_fd(), b"j".as_ptr().cast(), 1) } != 1 {
            return Err(JoinError::Release(std::io::Error::last_os_error()));
        }
        Ok(pid)
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Invalid(format!("path with a NUL byte: {}", p.display())))
}

/// Inside-the-jail path of a host path (same path under the jail root).
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

impl Prepared {
    /// Prepares the child's work for `j`: creates the cgroups and the root directory, checks
    /// every bound path exists, and lays out the steps.
    pub fn new(j: &Jail) -> Result<(Prepared, Joiner)> {
        std::fs::create_dir_all(&j.root).map_err(io(format!("create {}", j.root.display())))?;
        let mut ops = Vec::new();
        let mut made = std::collections::HashSet::new();
        let mut mkdirs = |ops: &mut Vec<Op>, dir: &Path| -> Result<()> {
            let mut cur = PathBuf::from("/");
            for c in dir.strip_prefix("/").unwrap_or(dir).iter() {
                cur.push(c);
                if made.insert(cur.clone()) {
                    ops.push(Op::Mkdir(cstr(&inside(&j.root, &cur))?));
                }
            }
            Ok(())
        };
        // /usr and what merged-/usr systems point into it (/lib -> usr/lib, ...).
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            if let Ok(target) = std::fs::read_link(&host) {
                ops.push(Op::Symlink {
                    target: cstr(&target)?,
                    link: cstr(&inside(&j.root, &host))?,
                });
            } else if host.is_dir() && top.starts_with("lib") {
                // A split-/usr system: its libraries are needed too.
                mkdirs(&mut ops, &host)?;
                ops.push(Op::Bind {
                    src: cstr(&host)?,
                    dst: cstr(&inside(&j.root, &host))?,
                    read_only: true,
                });
            }
        }
        let binds = j
            .read_only
            .iter()
            .map(|p| (p, true))
            .chain(j.writable.iter().map(|p| (p, false)));
        for (p, read_only) in binds {
            let md = std::fs::metadata(p).map_err(|e| {
                RuntimeError::Invalid(format!(
                    "the VM needs {} but it is missing: {e}",
                    p.display()
                ))
            })?;
            let dst = inside(&j.root, p);
            if md.is_dir() {
                mkdirs(&mut ops, p)?;
            } else {
                if let Some(parent) = p.parent() {
                    mkdirs(&mut ops, parent)?;
                }
                ops.push(Op::Touch(cstr(&dst)?));
            }
            ops.push(Op::Bind {
                src: cstr(p)?,
                dst: cstr(&dst)?,
                read_only,
            });
        }
        // /dev: the harmless nodes everyone needs, and the VM's own devices owned by its uid.
        mkdirs(&mut ops, Path::new("/dev/net"))?;
        let chr = |major: u32, minor: u32| libc::makedev(major, minor);
        for (name, dev) in [
            ("null", chr(1, 3)),
            ("zero", chr(1, 5)),
            ("full", chr(1, 7)),
            ("random", chr(1, 8)),
            ("urandom", chr(1, 9)),
        ] {
            ops.push(Op::Mknod {
                path: cstr(&j.root.join("dev").join(name))?,
                dev,
                mode: libc::S_IFCHR | 0o666,
                owner: None,
            });
        }
        for d in &j.devices {
            let host = Path::new(d.path());
            let md = std::fs::metadata(host).map_err(|e| {
                RuntimeError::Invalid(format!(
                    "the VM needs {} but it is missing: {e}",
                    host.display()
                ))
            })?;
            ops.push(Op::Mknod {
                path: cstr(&inside(&j.root, host))?,
                dev: md.rdev(),
                mode: libc::S_IFCHR | 0o600,
                owner: Some(j.uid),
            });
        }
        mkdirs(&mut ops, Path::new("/proc"))?;
        let mut taps = Vec::new();
        for t in &j.taps {
            if t.is_empty() || t.len() >= 16 || t.bytes().any(|b| b == 0 || b == b'/') {
                return Err(RuntimeError::Invalid(format!("bad tap name {t:?}")));
            }
            let mut ifr = [0u8; 40];
            ifr[..t.len()].copy_from_slice(t.as_bytes());
            // ifr_flags is a C short; the flag values fit.
            let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
            ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
            taps.push(ifr);
        }
        let (pid_read, pid_write) = pipe().map_err(io("create a pipe"))?;
        let (joined_read, joined_write) = pipe().map_err(io("create a pipe"))?;
        let procs = create_cgroups(j)?;
        let prepared = Prepared {
            uid: j.uid,
            gid: j.gid,
            root: cstr(&j.root)?,
            proc_dir: cstr(&j.root.join("proc"))?,
            ops,
            taps,
            joined_read,
            joined_write_raw: joined_write.as_raw_fd(),
            pid_write_raw: pid_write.as_raw_fd(),
            pid_write: Some(pid_write),
        };
        let joiner = Joiner {
            procs,
            pid_read,
            joined_write,
        };
        Ok((prepared, joiner))
    }

    /// After the spawn: closes the supervisor's copy of the pid pipe's write end, so that a
    /// [`Joiner`] waiting for a child that died early reads end of file.
    pub fn spawned(&mut self) {
        self.pid_write = None;
    }

    /// Runs in the first child, after fork and before exec (async-signal-safe calls only).
    /// Returns in the VM process (which then execs); the first child never returns from here:
    /// it waits for the VM process and exits the way it did.
    ///
    /// # Safety
    /// Only between fork and exec, in the child.
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        // SAFETY: the caller runs this only in the child between fork and exec; every call is a plain system call on data prepared before the fork
        unsafe {
            let fail = |what: &[u8]| {
                let e = std::io::Error::last_os_error();
                say(what);
                e
            };
            // Taps: owned by the jail uid, so QEMU attaches to them unprivileged (in the lab's
            // namespace, which the caller entered).
            for ifr in &self.taps {
                let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(fail(b"open /dev/net/tun"));
                }
                let mut req = *ifr;
                // A tap that does not exist yet is created here (the warm-snapshot build's taps,
                // in its private namespace, which is deleted with them) and made persistent, so
                // the unprivileged VM process can attach to it; a lab's taps already are.
                let ok = libc::ioctl(fd, libc::TUNSETIFF, req.as_mut_ptr()) == 0
                    && libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) == 0
                    && libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(self.uid)) == 0
                    && libc::ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(self.gid)) == 0;
                if !ok {
                    let err = fail(b"give the VM's tap to the jail uid");
                    libc::close(fd);
                    return Err(err);
                }
                libc::close(fd);
            }
            if libc::unshare(libc::CLONE_NEWPID) != 0 {
                return Err(fail(b"unshare(CLONE_NEWPID)"));
            }
            // The lifeline: the reaper holds its write end while it lives.
            let mut life = [0 as libc::c_int; 2];
            if libc::pipe2(life.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(fail(b"create the lifeline pipe"));
            }
            let pid = libc::fork();
            if pid < 0 {
                return Err(fail(b"fork"));
            }
            if pid > 0 {
                libc::close(life[0]);
                self.reap(pid, life[1]);
            }
            // The VM process: PID 1 of its namespace.
            libc::close(life[1]);
            self.build_root().map_err(&fail)?;
            self.drop_privileges().map_err(fail)?;
            // Dying with the reaper (and so with the supervisor): set only now, since changing
            // credentials clears the parent-death signal. Then the lifeline tells whether the
            // reaper already went (getppid() cannot: the reaper is outside this namespace).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut p = libc::pollfd {
                fd: life[0],
                events: 0,
                revents: 0,
            };
            if libc::poll(&mut p, 1, 0) != 0 && p.revents & libc::POLLHUP != 0 {
                libc::_exit(1);
            }
            libc::close(life[0]);
            // Not before the supervisor put this process into its cgroups (Joiner): nothing of
            // the VM runs outside its limits. Our copy of the write end goes first, so a
            // supervisor that gave up reads as end of file.
            libc::close(self.joined_write_raw);
            let mut b = 0u8;
            loop {
                let n = libc::read(self.joined_read.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                say(b"join the VM's cgroups (the supervisor did not)");
                libc::_exit(1);
            }
            Ok(())
        }
    }

    /// The first child after the fork: report the VM's pid, hold nothing but the lifeline
    /// (whose closing the VM process can see), wait, mirror its end.
    unsafe fn reap(&self, pid: libc::pid_t, lifeline: libc::c_int) -> ! {
        // SAFETY: plain system calls in the first child after fork; nothing is allocated
        unsafe {
            let bytes = pid.to_ne_bytes();
            libc::write(self.pid_write_raw, bytes.as_ptr().cast(), 4);
            // Close every descriptor but stdio and the lifeline: the supervisor's spawn waits
            // for the exec-status pipe to close, which the VM process's exec does for its copy.
            let keep = lifeline as libc::c_uint;
            if keep > 3 {
                libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
            }
            libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
            let mut status = 0;
            loop {
                let r = libc::waitpid(pid, &mut status, 0);
                if r == pid {
                    break;
                }
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(1);
                }
            }
            if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                libc::signal(sig, libc::SIG_DFL);
                libc::kill(libc::getpid(), sig);
            }
            libc::_exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1
            })
        }
    }

    /// A private mount namespace whose root is a tmpfs holding only what the VM needs.
    unsafe fn build_root(&self) -> std::result::Result<(), &'static [u8]> {
        // SAFETY: plain system calls on C strings prepared before the fork, in the VM process before exec
        unsafe {
            let null = std::ptr::null::<libc::c_char>();
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(b"unshare(CLONE_NEWNS)");
            }
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                null.cast(),
            ) != 0
            {
                return Err(b"make / private");
            }
            if libc::mount(
                c"kobako-jail".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID,
                c"mode=0755,size=1m,nr_inodes=4096".as_ptr().cast(),
            ) != 0
            {
                return Err(b"mount the jail's tmpfs");
            }
            for op in &self.ops {
                match op {
                    Op::Mkdir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(b"mkdir in the jail");
                        }
                    }
                    Op::Touch(p) => {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o600,
                        );
                        if fd < 0 {
                            return Err(b"create a bind target in the jail");
                        }
                        libc::close(fd);
                    }
                    Op::Symlink { target, link } => {
                        if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
                            return Err(b"symlink in the jail");
                        }
                    }
                    Op::Bind {
                        src,
                        dst,
                        read_only,
                    } => {
                        if libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REC,
                            null.cast(),
                        ) != 0
                        {
                            return Err(b"bind a file into the jail");
                        }
                        let mut fl =
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                        if *read_only {
                            fl |= libc::MS_RDONLY;
                        } else {
                            fl |= libc::MS_NOEXEC;
                        }
                        if libc::mount(null, dst.as_ptr(), null, fl, null.cast()) != 0 {
                            return Err(b"remount a bind in the jail");
                        }
                    }
                    Op::Mknod {
                        path,
                        dev,
                        mode,
                        owner,
                    } => {
                        if libc::mknod(path.as_ptr(), *mode, *dev) != 0 {
                            return Err(b"mknod in the jail");
                        }
                        // mknod's mode is masked by the umask: set it exactly.
                        if libc::chmod(path.as_ptr(), *mode & 0o7777) != 0 {
                            return Err(b"chmod a device in the jail");
                        }
                        if let Some(uid) = owner {
                            if libc::chown(path.as_ptr(), *uid, self.gid) != 0 {
                                return Err(b"chown a device in the jail");
                            }
                        }
                    }
                }
            }
            if libc::mount(
                c"proc".as_ptr(),
                self.proc_dir.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                null.cast(),
            ) != 0
            {
                return Err(b"mount /proc in the jail");
            }
            // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the jail.
            if libc::chdir(self.root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return Err(b"pivot_root into the jail");
            }
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                null.cast(),
            ) != 0
            {
                return Err(b"make the jail's root read-only");
            }
            Ok(())
        }
    }

    /// No capabilities (bounding set emptied), no supplementary groups, the jail's uid and gid.
    unsafe fn drop_privileges(&self) -> std::result::Result<(), &'static [u8]> {
        // SAFETY: plain system calls in the VM process before exec
        unsafe {
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(b"drop the capability bounding set");
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(b"setgroups([])");
            }
            if libc::setresgid(self.gid, self.gid, self.gid) != 0 {
                return Err(b"setresgid to the jail gid");
            }
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return Err(b"setresuid to the jail uid");
            }
            Ok(())
        }
    }
}

/// Lowest descriptor number of the jail's pipes. The supervisor's child `dup2`s the VM's
/// descriptors onto fixed low numbers (3..7: the restore's stream, QMP, console, agent, console
/// log; passed sockets below 32) before the jail's steps run: a pipe that happened to get one
/// of those numbers was overwritten, and the VM process read its "joined" byte from the wrong
/// file (seen as "cannot join the VM's cgroups (the supervisor did not)" on a restore).
const PIPE_FD_FLOOR: libc::c_int = 64;

/// A close-on-exec pipe, both ends at or above [`PIPE_FD_FLOOR`]: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((high(&r)?, high(&w)?))
}

/// A close-on-exec copy of `fd` at or above [`PIPE_FD_FLOOR`] (`fd` itself is closed when the
/// caller drops it).
fn high(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we hold returns a new one.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PIPE_FD_FLOOR) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: n is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A line on the VM process's stderr (vm.log) naming the jail step that failed; allocation-free.
fn say(what: &[u8]) {
    let pre = b"kobako jail: cannot ";
    // SAFETY: write(2) of live buffers to stderr.
    unsafe {
        libc::write(2, pre.as_ptr().cast(), pre.len());
        libc::write(2, what.as_ptr().cast(), what.len());
        libc::write(2, b"\n".as_ptr().cast(), 1);
    }
}
