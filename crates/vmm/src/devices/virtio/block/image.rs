//! What a block device reads and writes: the [`DiskImage`] trait, and [`Raw`], the image that
//! is the file itself. The qcow2 format ([`super::qcow2`]) builds on both (a raw file can back
//! a qcow2 image); [`super::disk::open`] picks one for a path.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

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
    // The range comes from the guest (checked against the disk size by the device, so it fits
    // off_t); refused rather than wrapped if it ever did not.
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range beyond the largest file offset",
        ));
    };
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
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
