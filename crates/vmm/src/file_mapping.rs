//! A whole file mapped shared into the VMM's address space, to be guest memory of its own KVM
//! slot (virtio-pmem): the guest's stores go straight to the file's page cache, which the
//! device makes durable with `fdatasync` when the guest asks.
//!
//! Created on the event-loop thread when the devices are built; shared (`Arc`) by the device
//! (which flushes the file) and the [`crate::vstate::vm::Vm`] (which registered the slot and keeps the
//! mapping alive as long as the VM fd). The host itself never reads or writes the pages
//! (tests aside): only KVM does, on the guest's behalf. If someone else truncates the file
//! while it is mapped, the guest's accesses beyond the new end fail in KVM (expected: `KVM_RUN`
//! returns `EFAULT` and the VMM stops with an error; not tested), not as a SIGBUS in VMM code.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

/// A shared mapping of a whole file, unmapped on drop.
#[derive(Debug)]
pub struct FileMapping {
    file: File,
    addr: NonNull<libc::c_void>,
    len: usize,
    read_only: bool,
}

// SAFETY: the mapping is plain memory owned by this value (nothing thread-local); the host
// never dereferences it outside the test helpers, and KVM accesses it on its own.
unsafe impl Send for FileMapping {}
// SAFETY: as above: shared references only hand out the address, the length and the file.
unsafe impl Sync for FileMapping {}

impl FileMapping {
    /// Maps `file` (opened for reading, and for writing unless `read_only`) whole:
    /// `MAP_SHARED`, `PROT_READ` (+ `PROT_WRITE` unless `read_only`). `len` is the size the
    /// caller checked (non-zero).
    pub fn new(file: File, len: u64, read_only: bool) -> std::io::Result<FileMapping> {
        let len_usize = crate::cast::usize_from(len);
        if len_usize == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: a new mapping chosen by the kernel (no MAP_FIXED: nothing existing is
        // replaced) of an fd we own; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let addr =
            NonNull::new(p).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(FileMapping {
            file,
            addr,
            len: len_usize,
            read_only,
        })
    }

    /// Opens `path` (read-write unless `read_only`) and maps it whole.
    pub fn open(path: &Path, len: u64, read_only: bool) -> std::io::Result<FileMapping> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        Self::new(file, len, read_only)
    }

    /// The host address of the first byte (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Never true: a mapping is created only for a non-empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The mapped file (to `fdatasync` it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Copies `data` into the mapping at `offset` (tests: what a guest's stores do); false if
    /// it does not fit or the mapping is read-only.
    #[cfg(test)]
    pub fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        let fits = offset
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len);
        if !fits || self.read_only {
            return false;
        }
        // SAFETY: [offset, offset + len) is inside the live, writable mapping (checked above);
        // in the unit tests no guest runs, so nothing else accesses these bytes meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.addr.as_ptr().cast::<u8>().add(offset),
                data.len(),
            );
        }
        true
    }

    /// Copies bytes out of the mapping at `offset` (tests); false if out of range.
    #[cfg(test)]
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> bool {
        let fits = offset
            .checked_add(out.len())
            .is_some_and(|end| end <= self.len);
        if !fits {
            return false;
        }
        // SAFETY: [offset, offset + len) is inside the live mapping (checked above); in the
        // unit tests no guest runs, so nothing writes these bytes meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.as_ptr().cast::<u8>().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        true
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; nothing refers to it any more (the
        // `Vm` that registered it as a KVM slot holds it until its VM fd is closed).
        unsafe {
            libc::munmap(self.addr.as_ptr(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_file_shared_and_read_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let m = FileMapping::open(&p, 8192, false).unwrap();
        assert_eq!((m.len(), m.read_only()), (8192, false));
        let mut b = [0u8; 2];
        assert!(m.read_at(8190, &mut b) && b == [7, 7]);
        assert!(m.write_at(4096, b"shared"));
        assert!(!m.write_at(8190, b"past the end"));
        assert!(!m.read_at(usize::MAX, &mut b));
        // MAP_SHARED: the file sees the store at once (page cache).
        assert_eq!(&std::fs::read(&p).unwrap()[4096..4102], b"shared");
        drop(m);
        let ro = FileMapping::open(&p, 8192, true).unwrap();
        assert!(ro.read_only() && !ro.write_at(0, b"x"));
        assert!(FileMapping::open(&p, 0, true).is_err());
    }
}
