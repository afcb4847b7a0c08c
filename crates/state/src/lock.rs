//! Lab locks: [`LabLock`], an exclusive `flock` on `<state>/locks/<lab>.lock`, so a process
//! that dies releases its lock with it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{state_root, Result, StateError};

/// An exclusive lock on one lab (`<state>/locks/<lab>.lock`, `flock`): held by the process that
/// changes the lab, released when it drops the lock or dies.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Takes the lock, waiting up to `wait`; [`StateError::Busy`] names the holder's pid.
    pub fn acquire(lab: &str, wait: Duration) -> Result<LabLock> {
        Self::acquire_in(&state_root(), lab, wait)
    }

    pub fn acquire_in(root: &Path, lab: &str, wait: Duration) -> Result<LabLock> {
        let dir = root.join("locks");
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(format!("{lab}.lock"));
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            if Instant::now() >= deadline {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(StateError::Busy {
                    lab: lab.into(),
                    pid: pid.trim().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        use std::io::{Seek, Write};
        let mut f = &file;
        let _ = f.set_len(0);
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = write!(f, "{}", std::process::id());
        Ok(LabLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_lock_is_exclusive_and_dies_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let l = LabLock::acquire_in(dir.path(), "lab", Duration::ZERO).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        let e = LabLock::acquire_in(dir.path(), "lab", Duration::from_millis(120)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("busy") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(l);
        LabLock::acquire_in(dir.path(), "lab", Duration::ZERO).unwrap();
    }
}
