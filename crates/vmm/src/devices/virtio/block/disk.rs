//! Disk images behind a block device: raw files and qcow2 (see [`super::qcow2`]), chosen by
//! the file's magic, as qemu does when no format is given.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::qcow2::{Qcow2, Qcow2Error};

/// A virtual disk. Reads past the end are the caller's error (the device checks ranges).
pub trait DiskImage: Send + std::fmt::Debug {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// Makes `[off, off+len)` read as zeros (deallocating when `unmap` and possible).
    fn write_zeroes(&mut self, off: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The guest no longer needs `[off, off+len)`; contents afterwards are unspecified.
    fn discard(&mut self, off: u64, len: u64) -> io::Result<()>;
    /// "raw" or "qcow2".
    fn format(&self) -> &'static str;
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
}

/// Opens `path` as qcow2 (by its magic) or raw; `format` ("raw"/"qcow2") overrides the probe.
pub fn open(
    path: &Path,
    read_only: bool,
    format: Option<&str>,
) -> Result<Box<dyn DiskImage>, DiskError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| DiskError::Open {
            path: path.display().to_string(),
            source,
        })?;
    let mut magic = [0u8; 4];
    let n = file.read_at(&mut magic, 0).unwrap_or(0);
    let is_qcow2 = n == 4 && magic == super::qcow2::MAGIC;
    if format == Some("qcow2") && !is_qcow2 {
        return Err(DiskError::Open {
            path: path.display().to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "image_format is qcow2 but the file has no qcow2 header",
            ),
        });
    }
    if is_qcow2 && format != Some("raw") {
        Ok(Box::new(Qcow2::open_file(file, path, read_only)?))
    } else {
        Ok(Box::new(Raw::new(file).map_err(|source| {
            DiskError::Open {
                path: path.display().to_string(),
                source,
            }
        })?))
    }
}

/// A raw image: the file is the disk.
#[derive(Debug)]
pub struct Raw {
    file: File,
    size: u64,
}

impl Raw {
    pub fn new(file: File) -> io::Result<Raw> {
        let size = file.metadata()?.len();
        Ok(Raw { file, size })
    }
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl DiskImage for Raw {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn write_zeroes(&mut self, off: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        if fallocate(&self.file, mode, off, len).is_ok() {
            return Ok(());
        }
        // Filesystems without hole punching: write the zeros.
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = crate::cast::usize_from((len - done).min(zeros.len() as u64));
            self.file.write_all_at(&zeros[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }
    fn discard(&mut self, off: u64, len: u64) -> io::Result<()> {
        // Best effort: a filesystem that cannot punch holes keeps the data.
        let _ = fallocate(
            &self.file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        );
        Ok(())
    }
    fn format(&self) -> &'static str {
        "raw"
    }
}
