//! Writing into a root filesystem tree that came from someone else (an imported tarball or OCI
//! layers) without ever leaving it.
//!
//! Every path is resolved from a directory fd of the tree's root with `openat2(2)` and
//! `RESOLVE_IN_ROOT`: the tree's symlinks are followed as the guest would see them, with the root
//! as `/`, so `etc -> /` or `sbin/init -> ../../../../etc/shadow` land inside the tree, never on
//! the host. The last component of what is written is replaced (unlinked, then created with
//! `O_EXCL|O_NOFOLLOW`), never written through.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

fn cstr(b: &[u8]) -> std::io::Result<CString> {
    CString::new(b).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat2(2)`: `path` resolved from `dir` under the `resolve` flags (`libc::RESOLVE_*`);
/// `O_CLOEXEC` is always added.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data; zeroed is valid, the fields used are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = resolve;
    // SAFETY: valid dirfd, NUL-terminated path and a live open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// [`openat2`] with `RESOLVE_IN_ROOT`: `path` resolved inside `root` (`..` and absolute
/// symlinks stop at `root`; magic links and other mounts are refused).
pub fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: i32,
    mode: u32,
) -> std::io::Result<OwnedFd> {
    openat2(
        root,
        path,
        flags,
        mode,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV,
    )
}

/// The root of a tree, opened once; every operation resolves beneath it.
pub struct Root {
    fd: OwnedFd,
}

/// Plain components of a tree path ("/etc/x", "etc/x" and "./etc/x" are the same).
fn parts(rel: &str) -> std::io::Result<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            // Never needed by kobako's own paths; refused rather than resolved.
            Component::ParentDir | Component::Prefix(_) => {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            }
        }
    }
    Ok(out)
}

impl Root {
    pub fn open(root: &Path) -> std::io::Result<Root> {
        let f = std::fs::File::open(root)?;
        if !f.metadata()?.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Root { fd: f.into() })
    }

    fn open_at(&self, rel: &Path, flags: i32) -> std::io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        open_in_root(self.fd.as_fd(), rel, flags, 0)
    }

    /// Does `rel` exist in the tree (following the tree's symlinks inside it)?
    pub fn exists(&self, rel: &str) -> bool {
        self.open_at(Path::new(rel.trim_start_matches('/')), libc::O_PATH)
            .is_ok()
    }

    /// Is `rel` a directory in the tree (following the tree's symlinks inside it)?
    pub fn is_dir(&self, rel: &str) -> bool {
        self.open_at(
            Path::new(rel.trim_start_matches('/')),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .is_ok()
    }

    /// `mkdir -p` inside the tree; returns the directory.
    pub fn mkdir_all(&self, rel: &str, mode: u32) -> std::io::Result<OwnedFd> {
        let mut cur = std::path::PathBuf::new();
        let mut dir = self.open_at(&cur, libc::O_PATH | libc::O_DIRECTORY)?;
        for p in parts(rel)? {
            cur.push(p);
            dir = match self.open_at(&cur, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = cstr(p.as_bytes())?;
                    // SAFETY: valid dirfd and NUL-terminated name.
                    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } != 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                    self.open_at(&cur, libc::O_PATH | libc::O_DIRECTORY)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(dir)
    }

    /// The parent directory of `rel` (created) and the last component's name, with whatever
    /// non-directory was at that name removed.
    fn replace(&self, rel: &str) -> std::io::Result<(OwnedFd, CString)> {
        let ps = parts(rel)?;
        let (name, parent) = ps
            .split_last()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent: std::path::PathBuf = parent.iter().collect();
        let dir = self.mkdir_all(&parent.to_string_lossy(), 0o755)?;
        let name = cstr(name.as_bytes())?;
        // SAFETY: valid dirfd and NUL-terminated name; removes a file or symlink, not a dir.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        Ok((dir, name))
    }

    /// Write a file at `rel` (a symlink or file already there is replaced, never written
    /// through).
    pub fn write(&self, rel: &str, content: &[u8], mode: u32) -> std::io::Result<()> {
        let (dir, name) = self.replace(rel)?;
        // SAFETY: valid dirfd and NUL-terminated name; O_EXCL|O_NOFOLLOW create a new file.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.write_all(content)?;
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// A symlink at `rel` pointing to `target` (whatever was there, not a directory, replaced).
    pub fn symlink(&self, target: &str, rel: &str) -> std::io::Result<()> {
        let (dir, name) = self.replace(rel)?;
        let t = cstr(target.as_bytes())?;
        // SAFETY: valid dirfd and NUL-terminated strings.
        if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Set the mode of the directory `rel` when it is one (not through a symlink).
    pub fn chmod_dir(&self, rel: &str, mode: u32) -> std::io::Result<()> {
        let fd = self.open_at(
            Path::new(rel.trim_start_matches('/')),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::File::from(fd).set_permissions(std::fs::Permissions::from_mode(mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree whose `etc` points at a host directory: it is resolved inside the tree (where it
    /// does not exist), so writing there fails and the host directory is untouched.
    #[test]
    fn tree_symlink_to_a_host_dir_is_never_written_through() {
        let host = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::os::unix::fs::symlink(host.path(), root.join("etc")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = || std::fs::metadata(host.path()).unwrap().permissions().mode();
        let before = mode();
        let r = Root::open(root).unwrap();
        assert!(r.write("etc/fstab", b"x", 0o644).is_err());
        assert!(r
            .symlink("/dev/null", "etc/systemd/system/x.timer")
            .is_err());
        assert!(!r.is_dir("etc"));
        assert!(r.chmod_dir("etc", 0o1777).is_err());
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
        assert_eq!(mode(), before);
    }

    /// `etc -> /` and an agent path that is a symlink climbing to a host file: writes land in
    /// the tree (its `/` is the tree's root), the host file is untouched.
    #[test]
    fn tree_symlinks_climbing_out_land_inside_the_tree() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("shadow"), "secret").unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::os::unix::fs::symlink("/", root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/local")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../..".to_string() + host.path().to_str().unwrap(),
            root.join("usr/local/sbin"),
        )
        .unwrap();
        let r = Root::open(root).unwrap();
        r.write("etc/fstab", b"x", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("fstab")).unwrap(), b"x");
        // usr/local/sbin -> <host dir> resolved in the tree: created there, inside.
        let e = r.write("/usr/local/sbin/shadow", b"agent", 0o755);
        assert!(e.is_err(), "the link's target does not exist in the tree");
        r.mkdir_all(host.path().to_str().unwrap(), 0o755).unwrap();
        r.write("/usr/local/sbin/shadow", b"agent", 0o755).unwrap();
        let inside = root.join(host.path().strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(inside.join("shadow")).unwrap(), b"agent");
        assert_eq!(
            std::fs::read_to_string(host.path().join("shadow")).unwrap(),
            "secret"
        );
        // A symlink at the written name is replaced, not written through.
        std::os::unix::fs::symlink(host.path().join("shadow"), root.join("init")).unwrap();
        r.write("init", b"agent", 0o755).unwrap();
        assert!(std::fs::symlink_metadata(root.join("init"))
            .unwrap()
            .is_file());
        assert_eq!(
            std::fs::read_to_string(host.path().join("shadow")).unwrap(),
            "secret"
        );
        assert!(r.write("../x", b"", 0o644).is_err());
    }
}
