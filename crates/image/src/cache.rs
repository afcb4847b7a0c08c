//! Cache layout and build locks.
//!
//! ```text
//! $KOBAKO_CACHE (default /var/cache/kobako)
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

/// Root of the cache.
pub fn root() -> PathBuf {
    std::env::var_os("KOBAKO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kobako"))
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
