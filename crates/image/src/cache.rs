//! Cache layout and build locks.
//!
//! ```text
//! root() ($KOBAKO_CACHE as the binary reads it; default /var/cache/kobako)
//!   kernel/src-<version>/      extracted linux-source, shared by all configs
//!   kernel/build-<key>/        out-of-tree build dir of one config
//!   kernel/<key>/              vmlinux, bzImage, config, build.log  (the artifact)
//!   images/tiny/<key>/         initramfs.cpio, rootfs.ext4, manifest.json
//! ```
//! Artifacts are written to a temporary name and renamed into place, so a directory that exists
//! is complete; a build killed half-way leaves only temporary files the next build replaces.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The cache root when nothing set one: the one default of kobako's cache directory (the lab's
/// warm snapshots live under it too).
pub const DEFAULT_ROOT: &str = "/var/cache/kobako";

/// Root of the cache: what [`set_root`] fixed (the binary passes `$KOBAKO_CACHE`), else
/// [`DEFAULT_ROOT`].
pub fn root() -> PathBuf {
    ROOT.get_or_init(|| PathBuf::from(DEFAULT_ROOT)).clone()
}

/// The cache root of this process, fixed by the first [`set_root`] or [`root`].
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Sets the cache root for this process: the binary calls it once at start, before anything
/// asks for [`root`]. The first setting (or first use) holds; a later call is ignored and
/// returns false.
pub fn set_root(root: PathBuf) -> bool {
    ROOT.set(root).is_ok()
}

/// An exclusive advisory lock held until dropped.
pub struct Lock {
    _file: File,
}

/// Take an exclusive lock on `path` (created if needed), waiting for another holder.
pub fn lock(path: &Path) -> std::io::Result<Lock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a file descriptor we own for the lifetime of `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Lock { _file: file })
}
