//! Taking a file a jailed VM process wrote (a `kobako vmm` snapshot's state and memory) out of
//! its work directory, without trusting that directory: the file is opened `O_NOFOLLOW` (a
//! symlink to a host file is refused, not followed), must be a regular file with one link (a
//! hard link to something else is refused), and is copied, holes kept, into a new file of the
//! destination, owned by root and readable by all (the jailed VM processes of restores read it
//! through their bind mounts; the snapshot directory, 0700, keeps host users out); the work file
//! is then removed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::{io, Result, RuntimeError};

/// Moves `from` (in a VM's work directory) to `to` (created; must not exist). Returns the
/// number of data bytes copied.
pub fn take_out(from: &Path, to: &Path) -> Result<u64> {
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .map_err(io(format!(
            "open {} (written by the VM process)",
            from.display()
        )))?;
    let md = src
        .metadata()
        .map_err(io(format!("stat {}", from.display())))?;
    if !md.file_type().is_file() || md.nlink() != 1 {
        return Err(RuntimeError::Invalid(format!(
            "{} is not a plain file of the VM process's own (type {:?}, {} links): refusing to \
             take it as a snapshot file",
            from.display(),
            md.file_type(),
            md.nlink()
        )));
    }
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(to)
        .map_err(io(format!("create {}", to.display())))?;
    let copied = copy_sparse(&src, &dst, md.len()).map_err(io(format!(
        "copy {} to {}",
        from.display(),
        to.display()
    )))?;
    dst.set_len(md.len())
        .map_err(io(format!("size {}", to.display())))?;
    let _ = std::fs::remove_file(from);
    Ok(copied)
}

/// Copies the data extents of `src` (SEEK_DATA/SEEK_HOLE) to the same offsets of `dst`.
fn copy_sparse(src: &File, dst: &File, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let (s, mut pos, mut total) = (src.as_raw_fd(), 0i64, 0u64);
    let len = len as i64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        // SAFETY: lseek(2) on a descriptor we hold.
        let data = unsafe { libc::lseek(s, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(s, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len } else { hole.min(len) };
        let mut off = data;
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], off as u64)?;
            if n == 0 {
                return Ok(total);
            }
            dst.write_all_at(&buf[..n], off as u64)?;
            off += n as i64;
            total += n as u64;
        }
        pos = end;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_is_taken_out_with_its_holes_and_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join("memory");
        let f = File::create(&from).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 64 << 20).unwrap();
        drop(f);
        let to = d.path().join("out");
        let n = take_out(&from, &to).unwrap();
        assert!(n < 1 << 20, "copied {n} bytes of a mostly empty file");
        let md = std::fs::metadata(&to).unwrap();
        assert_eq!(md.len(), (64 << 20) + 4);
        assert!(
            md.blocks() * 512 < 4 << 20,
            "holes kept: {} blocks",
            md.blocks()
        );
        let got = std::fs::read(&to).unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[64 << 20..], b"tail");
        assert!(!from.exists());

        // A symlink to a host file in the work directory is refused, not followed.
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"host").unwrap();
        let link = d.path().join("vmstate");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let e = take_out(&link, &d.path().join("out2")).unwrap_err();
        assert!(e.to_string().contains("open"), "{e}");
        assert!(!d.path().join("out2").exists());
        // So is a second name of another file.
        let hard = d.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        let e = take_out(&hard, &d.path().join("out3")).unwrap_err();
        assert!(e.to_string().contains("2 links"), "{e}");
    }
}
