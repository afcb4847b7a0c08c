//! qcow2 images (versions 2 and 3), our own implementation — the maintained Rust crates
//! (`qcow2-rs`, `imago`) are async-first (io_uring / tokio) and this VMM has no async runtime.
//!
//! Reads: L1 → L2 → data cluster, through backing chains (raw or qcow2, up to
//! [`MAX_BACKING_DEPTH`] deep, paths relative to the image's directory), compressed clusters
//! (deflate), zero clusters (v3 flag, with or without preallocation), unallocated clusters
//! (backing file, or zeros past its end / without one).
//!
//! Writes go to the top image only: a cluster that is not allocated there (unallocated, zero,
//! or compressed) gets a new cluster at the end of the file, filled with its current content
//! (from the backing chain, zeros, or decompressed) overlaid with the write; refcounts are
//! updated before the L2 entry points to it (new L2 tables and refcount blocks likewise), and
//! a replaced compressed cluster's refcounts are dropped, so `qemu-img check` finds neither
//! leaks nor corruption. Write zeroes/discard of whole clusters set the v3 zero flag.
//!
//! Refused with a message naming the fix: encryption, external data files, extended L2
//! entries, zstd compression, a `corrupt` image; for writing also a `dirty` image (lazy
//! refcounts), internal snapshots and refcount widths below 8 bits. Unknown autoclear bits are
//! cleared when the image is opened for writing, as the spec asks.
//!
//! Guest data never panics this code: every offset from the image is range-checked and every
//! failure is an `io::Error` the device turns into VIRTIO_BLK_S_IOERR.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::image::{DiskImage, Raw};

pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Deepest backing chain we follow.
pub const MAX_BACKING_DEPTH: usize = 16;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 2;
const INCOMPAT_DATA_FILE: u64 = 4;
const INCOMPAT_COMPRESSION: u64 = 8;
const INCOMPAT_EXTL2: u64 = 16;

const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// Why a qcow2 image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{path}: {why}")]
    Unsupported { path: String, why: String },
    #[error("{path}: corrupt qcow2 image: {why}")]
    Corrupt { path: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("backing file of {path}: {source}")]
    Backing {
        path: String,
        #[source]
        source: Box<Qcow2Error>,
    },
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn corrupt(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// An open qcow2 image.
pub struct Qcow2 {
    file: File,
    read_only: bool,
    file_len: u64,
    version: u32,
    cluster_bits: u32,
    cluster_size: u64,
    l2_entries: u64,
    size: u64,
    l1_offset: u64,
    l1: Vec<u64>,
    refcount_table_offset: u64,
    refcount_table: Vec<u64>,
    refcount_order: u32,
    backing: Option<Box<dyn DiskImage>>,
    /// L2 tables by their offset (write-through).
    l2_cache: HashMap<u64, Vec<u64>>,
    /// The last decompressed cluster `(l2 entry, data)`.
    compressed_cache: Option<(u64, Vec<u8>)>,
    /// Where the next cluster is allocated (end of file, cluster aligned).
    next_free: u64,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("size", &self.size)
            .field("cluster_size", &self.cluster_size)
            .field("backing", &self.backing.is_some())
            .finish_non_exhaustive()
    }
}

const L2_CACHE_TABLES: usize = 64;

impl Qcow2 {
    /// Opens an image (`read_only` also opens the backing chain read-only, always).
    pub fn open(path: &Path, read_only: bool) -> Result<Qcow2, Qcow2Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| Qcow2Error::Io {
                path: path.display().to_string(),
                source,
            })?;
        Self::open_file(file, path, read_only)
    }

    pub fn open_file(file: File, path: &Path, read_only: bool) -> Result<Qcow2, Qcow2Error> {
        Self::open_depth(file, path, read_only, 0)
    }

    fn open_depth(
        file: File,
        path: &Path,
        read_only: bool,
        depth: usize,
    ) -> Result<Qcow2, Qcow2Error> {
        let p = path.display().to_string();
        let io_err = |source| io_error(&p, source);
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut h = [0u8; 112];
        let n = read_upto(&file, &mut h, 0).map_err(io_err)?;
        let hdr = Header::parse(&h, n, &p)?;
        hdr.check_features(read_only, &p)?;
        hdr.check_tables(file_len, &p)?;
        let cluster_size = hdr.cluster_size();
        let l1 = read_table(&file, hdr.l1_offset, hdr.l1_size * 8).map_err(io_err)?;
        let refcount_table = read_table(&file, hdr.refcount_table_offset, hdr.refcount_table_len())
            .map_err(io_err)?;
        let backing_format =
            read_backing_format(&file, hdr.header_len, cluster_size).map_err(io_err)?;
        let backing =
            hdr.open_backing_file(&file, path, &p, file_len, backing_format.as_deref(), depth)?;

        let mut q = Qcow2 {
            file,
            read_only,
            file_len,
            version: hdr.version,
            cluster_bits: hdr.cluster_bits,
            cluster_size,
            l2_entries: cluster_size / 8,
            size: hdr.size,
            l1_offset: hdr.l1_offset,
            l1,
            refcount_table_offset: hdr.refcount_table_offset,
            refcount_table,
            refcount_order: hdr.refcount_order,
            backing,
            l2_cache: HashMap::new(),
            compressed_cache: None,
            next_free: file_len.div_ceil(cluster_size) * cluster_size,
        };
        if !read_only && hdr.autoclear != 0 {
            // We do not maintain what those bits vouch for (e.g. bitmaps): clear them.
            q.file
                .write_all_at(&0u64.to_be_bytes(), 88)
                .map_err(io_err)?;
        }
        q.file_len = q.next_free.max(file_len);
        Ok(q)
    }

    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn l2_table(&mut self, l2_off: u64) -> io::Result<&mut Vec<u64>> {
        if !self.l2_cache.contains_key(&l2_off) {
            if l2_off % self.cluster_size != 0 || l2_off + self.cluster_size > self.file_len {
                return Err(corrupt(format!("L2 table at {l2_off:#x} outside the file")));
            }
            let mut raw = vec![0u8; crate::cast::usize_from(self.cluster_size)];
            self.file.read_exact_at(&mut raw, l2_off)?;
            if self.l2_cache.len() >= L2_CACHE_TABLES {
                self.l2_cache.clear();
            }
            self.l2_cache
                .insert(l2_off, raw.chunks_exact(8).map(|c| be64(c, 0)).collect());
        }
        self.l2_cache
            .get_mut(&l2_off)
            .ok_or_else(|| corrupt("L2 cache"))
    }

    /// `(l1 index, l2 index)` of a guest offset.
    fn indices(&self, off: u64) -> (usize, usize) {
        let c = off >> self.cluster_bits;
        (
            crate::cast::usize_from(c / self.l2_entries),
            crate::cast::usize_from(c % self.l2_entries),
        )
    }

    /// The L2 entry for `off` (0 when its L2 table is not allocated).
    fn l2_entry(&mut self, off: u64) -> io::Result<u64> {
        let (i1, i2) = self.indices(off);
        let l1e = *self.l1.get(i1).ok_or_else(|| corrupt("offset beyond L1"))?;
        let l2_off = l1e & L1_OFFSET_MASK;
        if l2_off == 0 {
            return Ok(0);
        }
        Ok(self.l2_table(l2_off)?[i2])
    }

    /// Reads part of one cluster (`buf` does not cross a cluster boundary).
    fn read_cluster_part(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let in_cluster = off & (self.cluster_size - 1);
        let e = self.l2_entry(off)?;
        if e & COMPRESSED != 0 {
            let data = self.decompress(e)?;
            let s = crate::cast::usize_from(in_cluster);
            buf.copy_from_slice(&data[s..s + buf.len()]);
            return Ok(());
        }
        let host = e & L2_OFFSET_MASK;
        if e & ZERO_FLAG != 0 {
            buf.fill(0);
        } else if host != 0 {
            if host % self.cluster_size != 0 || host + self.cluster_size > self.file_len {
                return Err(corrupt(format!(
                    "data cluster at {host:#x} outside the file"
                )));
            }
            self.file.read_exact_at(buf, host + in_cluster)?;
        } else {
            self.read_backing(off, buf)?;
        }
        Ok(())
    }

    fn read_backing(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.backing {
            None => buf.fill(0),
            Some(b) => {
                let bsize = b.size();
                let avail =
                    crate::cast::usize_from(bsize.saturating_sub(off).min(buf.len() as u64));
                if avail > 0 {
                    b.read_at(off, &mut buf[..avail])?;
                }
                buf[avail..].fill(0);
            }
        }
        Ok(())
    }

    fn decompress(&mut self, e: u64) -> io::Result<&[u8]> {
        if self.compressed_cache.as_ref().map(|c| c.0) != Some(e) {
            let x = 62 - (self.cluster_bits - 8);
            let host = e & ((1u64 << x) - 1);
            let sectors = ((e & !(COMPRESSED | COPIED)) >> x) + 1;
            let csize = (sectors * 512).saturating_sub(host & 511);
            let end = (host + csize).min(self.file_len);
            if host >= end {
                return Err(corrupt(format!(
                    "compressed cluster at {host:#x} outside the file"
                )));
            }
            let mut input = vec![0u8; crate::cast::usize_from(end - host)];
            self.file.read_exact_at(&mut input, host)?;
            let mut out = vec![0u8; crate::cast::usize_from(self.cluster_size)];
            let mut d = flate2::Decompress::new(false);
            let st = d.decompress(&input, &mut out, flate2::FlushDecompress::Finish);
            match st {
                Ok(_) if d.total_out() == self.cluster_size => {}
                _ => {
                    return Err(corrupt(
                        "compressed cluster does not inflate to a full cluster",
                    ))
                }
            }
            self.compressed_cache = Some((e, out));
        }
        Ok(self
            .compressed_cache
            .as_ref()
            .map(|c| c.1.as_slice())
            .unwrap_or(&[]))
    }

    // ---- writing ----

    fn ro_check(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only image",
            ))
        } else {
            Ok(())
        }
    }

    fn refcount_bits(&self) -> u64 {
        1 << self.refcount_order
    }

    /// Reads the refcount of host cluster `c` (0 when its block is not allocated).
    fn refcount(&mut self, c: u64) -> io::Result<u64> {
        let rpb = self.cluster_size * 8 / self.refcount_bits();
        let ti = crate::cast::usize_from(c / rpb);
        let block = self.refcount_table.get(ti).copied().unwrap_or(0) & REFT_OFFSET_MASK;
        if block == 0 {
            return Ok(0);
        }
        let bytes = self.refcount_bits() / 8;
        let mut b = [0u8; 8];
        let at = block + (c % rpb) * bytes;
        self.file.read_exact_at(&mut b[8 - bytes as usize..], at)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Sets the refcount of host cluster `c`, allocating its refcount block when needed.
    fn set_refcount(&mut self, c: u64, v: u64, depth: u32) -> io::Result<()> {
        if depth > 4 {
            return Err(corrupt("refcount block allocation does not converge"));
        }
        let rpb = self.cluster_size * 8 / self.refcount_bits();
        let ti = crate::cast::usize_from(c / rpb);
        if ti >= self.refcount_table.len() {
            return Err(io::Error::other(
                "the refcount table is full; grow the image with qemu-img convert",
            ));
        }
        let mut block = self.refcount_table[ti] & REFT_OFFSET_MASK;
        if block == 0 {
            block = self.next_free;
            self.next_free += self.cluster_size;
            self.file.write_all_at(
                &vec![0u8; crate::cast::usize_from(self.cluster_size)],
                block,
            )?;
            self.file_len = self.file_len.max(self.next_free);
            self.refcount_table[ti] = block;
            self.file.write_all_at(
                &block.to_be_bytes(),
                self.refcount_table_offset + ti as u64 * 8,
            )?;
            self.set_refcount(block >> self.cluster_bits, 1, depth + 1)?;
        }
        let bytes = self.refcount_bits() / 8;
        let be = v.to_be_bytes();
        self.file
            .write_all_at(&be[8 - bytes as usize..], block + (c % rpb) * bytes)
    }

    /// A new cluster at the end of the file, refcount 1, contents `data` (or zeros).
    fn alloc_cluster(&mut self, data: Option<&[u8]>) -> io::Result<u64> {
        let off = self.next_free;
        self.next_free += self.cluster_size;
        self.set_refcount(off >> self.cluster_bits, 1, 0)?;
        match data {
            Some(d) => self.file.write_all_at(d, off)?,
            None => self
                .file
                .write_all_at(&vec![0u8; crate::cast::usize_from(self.cluster_size)], off)?,
        }
        self.file_len = self
            .file_len
            .max(self.next_free)
            .max(off + self.cluster_size);
        Ok(off)
    }

    /// The L2 table offset for `i1`, allocating a zeroed table when absent.
    fn l2_for_write(&mut self, i1: usize) -> io::Result<u64> {
        let l1e = *self.l1.get(i1).ok_or_else(|| corrupt("offset beyond L1"))?;
        let l2_off = l1e & L1_OFFSET_MASK;
        if l2_off != 0 {
            if l1e & COPIED == 0 {
                return Err(io::Error::other(
                    "shared L2 table (snapshots) cannot be written",
                ));
            }
            return Ok(l2_off);
        }
        let new = self.alloc_cluster(None)?;
        self.l2_cache
            .insert(new, vec![0; crate::cast::usize_from(self.l2_entries)]);
        let e = new | COPIED;
        self.file
            .write_all_at(&e.to_be_bytes(), self.l1_offset + i1 as u64 * 8)?;
        self.l1[i1] = e;
        Ok(new)
    }

    fn set_l2(&mut self, l2_off: u64, i2: usize, e: u64) -> io::Result<()> {
        self.file
            .write_all_at(&e.to_be_bytes(), l2_off + i2 as u64 * 8)?;
        self.l2_table(l2_off)?[i2] = e;
        Ok(())
    }

    /// Drops the references of a replaced L2 entry (compressed clusters may share host
    /// clusters; standard ones are freed when their count reaches 0).
    fn release(&mut self, e: u64) -> io::Result<()> {
        let clusters: Vec<u64> = if e & COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let host = e & ((1u64 << x) - 1);
            let sectors = ((e & !(COMPRESSED | COPIED)) >> x) + 1;
            let last = (host + sectors * 512 - (host & 511) - 1) >> self.cluster_bits;
            ((host >> self.cluster_bits)..=last).collect()
        } else if e & L2_OFFSET_MASK != 0 {
            vec![(e & L2_OFFSET_MASK) >> self.cluster_bits]
        } else {
            vec![]
        };
        for c in clusters {
            let r = self.refcount(c)?;
            self.set_refcount(c, r.saturating_sub(1), 0)?;
        }
        if self.compressed_cache.as_ref().map(|c| c.0) == Some(e) {
            self.compressed_cache = None;
        }
        Ok(())
    }

    /// Writes part of one cluster.
    fn write_cluster_part(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let cs = self.cluster_size;
        let in_cluster = crate::cast::usize_from(off & (cs - 1));
        let (i1, i2) = self.indices(off);
        let l2_off = self.l2_for_write(i1)?;
        let e = self.l2_table(l2_off)?[i2];
        let host = e & L2_OFFSET_MASK;
        if e & COMPRESSED == 0 && host != 0 && e & COPIED != 0 && e & ZERO_FLAG == 0 {
            if host % cs != 0 || host + cs > self.file_len {
                return Err(corrupt(format!(
                    "data cluster at {host:#x} outside the file"
                )));
            }
            return self.file.write_all_at(data, host + in_cluster as u64);
        }
        // Build the whole cluster: its current content overlaid with the write.
        let cluster_start = off - in_cluster as u64;
        let mut buf = vec![0u8; crate::cast::usize_from(cs)];
        if data.len() as u64 != cs {
            self.read_cluster_part(cluster_start, &mut buf)?;
        }
        buf[in_cluster..in_cluster + data.len()].copy_from_slice(data);
        if e & COMPRESSED == 0 && host != 0 && e & COPIED != 0 {
            // A preallocated zero cluster: reuse its place.
            self.file.write_all_at(&buf, host)?;
            return self.set_l2(l2_off, i2, host | COPIED);
        }
        let new = self.alloc_cluster(Some(&buf))?;
        self.set_l2(l2_off, i2, new | COPIED)?;
        self.release(e)
    }

    /// Zero flag on whole clusters (v3); partial ones get written zeros.
    fn zero_range(&mut self, off: u64, len: u64) -> io::Result<()> {
        let cs = self.cluster_size;
        let mut pos = off;
        let end = off + len;
        let v3 = self.version == 3;
        while pos < end {
            let n = (cs - (pos & (cs - 1))).min(end - pos);
            if n == cs && v3 {
                let (i1, i2) = self.indices(pos);
                let l2_off = self.l2_for_write(i1)?;
                let e = self.l2_table(l2_off)?[i2];
                if e & COMPRESSED != 0 {
                    self.set_l2(l2_off, i2, ZERO_FLAG)?;
                    self.release(e)?;
                } else {
                    self.set_l2(l2_off, i2, (e & (L2_OFFSET_MASK | COPIED)) | ZERO_FLAG)?;
                }
            } else {
                self.write_cluster_part(pos, &vec![0u8; crate::cast::usize_from(n)])?;
            }
            pos += n;
        }
        Ok(())
    }

    fn check_range(&self, off: u64, len: u64) -> io::Result<()> {
        match off.checked_add(len) {
            Some(e) if e <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "access beyond the end of the disk",
            )),
        }
    }
}

fn read_upto(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn unsupported(p: &str, why: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Unsupported {
        path: p.to_string(),
        why: why.into(),
    }
}

fn bad(p: &str, why: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Corrupt {
        path: p.to_string(),
        why: why.into(),
    }
}

fn io_error(p: &str, source: io::Error) -> Qcow2Error {
    Qcow2Error::Io {
        path: p.to_string(),
        source,
    }
}

/// `off..off + len` lies within a file of `file_len` bytes (and does not overflow).
fn in_file(off: u64, len: u64, file_len: u64) -> bool {
    off.checked_add(len).is_some_and(|e| e <= file_len)
}

/// The header fields this implementation uses, as read (version 2 headers get the version 3
/// defaults).
struct Header {
    version: u32,
    backing_file_offset: u64,
    backing_file_size: u32,
    /// Checked to be 9..=21.
    cluster_bits: u32,
    size: u64,
    l1_size: u64,
    l1_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u64,
    nb_snapshots: u32,
    incompat: u64,
    autoclear: u64,
    refcount_order: u32,
    header_len: u32,
    compression_type: u8,
}

impl Header {
    /// Reads the first `n` bytes of `h` (the start of the file): the magic, a supported
    /// version, a sane cluster size, no encryption, a complete version 3 header.
    fn parse(h: &[u8; 112], n: usize, p: &str) -> Result<Header, Qcow2Error> {
        if n < 72 || h[..4] != MAGIC {
            return Err(bad(p, "not a qcow2 header"));
        }
        let version = be32(h, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(
                p,
                format!("qcow2 version {version} is not supported (2 or 3)"),
            ));
        }
        let cluster_bits = be32(h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(
                p,
                format!("cluster_bits {cluster_bits} outside 9..=21"),
            ));
        }
        if be32(h, 32) != 0 {
            return Err(unsupported(
                p,
                "encrypted qcow2 images are not supported; decrypt with qemu-img convert",
            ));
        }
        let mut hdr = Header {
            version,
            backing_file_offset: be64(h, 8),
            backing_file_size: be32(h, 16),
            cluster_bits,
            size: be64(h, 24),
            l1_size: u64::from(be32(h, 36)),
            l1_offset: be64(h, 40),
            refcount_table_offset: be64(h, 48),
            refcount_table_clusters: u64::from(be32(h, 56)),
            nb_snapshots: be32(h, 60),
            incompat: 0,
            autoclear: 0,
            refcount_order: 4,
            header_len: 72,
            compression_type: 0,
        };
        if version == 3 {
            if n < 104 {
                return Err(bad(p, "short version 3 header"));
            }
            hdr.incompat = be64(h, 72);
            hdr.autoclear = be64(h, 88);
            hdr.refcount_order = be32(h, 96);
            hdr.header_len = be32(h, 100);
            if hdr.header_len > 104 && n > 104 {
                hdr.compression_type = h[104];
            }
        }
        Ok(hdr)
    }

    fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    fn refcount_table_len(&self) -> u64 {
        self.refcount_table_clusters * self.cluster_size()
    }

    /// Refuses the incompatible features we do not implement, and (for writing) what we
    /// cannot keep consistent; the refcount width must be at most 64 bits.
    fn check_features(&self, read_only: bool, p: &str) -> Result<(), Qcow2Error> {
        let incompat = self.incompat;
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(unsupported(
                p,
                "the image is marked corrupt; repair it with qemu-img check -r all",
            ));
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(p, "external data files are not supported"));
        }
        if incompat & INCOMPAT_EXTL2 != 0 {
            return Err(unsupported(
                p,
                "extended L2 entries (subclusters) are not supported; qemu-img convert -O qcow2 without extended_l2",
            ));
        }
        if incompat & INCOMPAT_COMPRESSION != 0 && self.compression_type != 0 {
            return Err(unsupported(
                p,
                format!(
                    "compression type {} (zstd) is not supported; use zlib (qemu-img convert -o compression_type=zlib)",
                    self.compression_type
                ),
            ));
        }
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        if incompat & !known != 0 {
            return Err(unsupported(
                p,
                format!("unknown incompatible features {:#x}", incompat & !known),
            ));
        }
        if !read_only {
            self.check_writable(p)?;
        }
        if self.refcount_order > 6 {
            return Err(bad(p, format!("refcount_order {}", self.refcount_order)));
        }
        Ok(())
    }

    /// What writing needs: a clean image, no internal snapshots, refcounts of 8 to 64 bits.
    fn check_writable(&self, p: &str) -> Result<(), Qcow2Error> {
        if self.incompat & INCOMPAT_DIRTY != 0 {
            return Err(unsupported(
                p,
                "the image is dirty (lazy refcounts); run qemu-img check -r all first",
            ));
        }
        if self.nb_snapshots != 0 {
            return Err(unsupported(
                p,
                "writing images with internal snapshots is not supported; open it read-only or qemu-img convert it",
            ));
        }
        if !(3..=6).contains(&self.refcount_order) {
            return Err(unsupported(
                p,
                format!(
                    "refcount width {} bits is not supported for writing (8..64)",
                    1u32 << self.refcount_order.min(31)
                ),
            ));
        }
        Ok(())
    }

    /// Sizes: L1 must cover the virtual size; the L1 and refcount tables must be cluster
    /// aligned, bounded, and lie in the file.
    fn check_tables(&self, file_len: u64, p: &str) -> Result<(), Qcow2Error> {
        let (size, l1_size, l1_offset) = (self.size, self.l1_size, self.l1_offset);
        let cluster_size = self.cluster_size();
        let l2_entries = cluster_size / 8;
        let needed_l1 = size.div_ceil(cluster_size * l2_entries);
        if l1_size < needed_l1 || l1_size > 32 << 20 {
            return Err(bad(p, format!("L1 size {l1_size} for {size} bytes")));
        }
        if l1_offset % cluster_size != 0 || !in_file(l1_offset, l1_size * 8, file_len) {
            return Err(bad(
                p,
                format!("L1 table at {l1_offset:#x} outside the file"),
            ));
        }
        let rt_offset = self.refcount_table_offset;
        let rt_len = self.refcount_table_len();
        if rt_offset % cluster_size != 0
            || rt_len > 64 << 20
            || !in_file(rt_offset, rt_len, file_len)
        {
            return Err(bad(
                p,
                format!("refcount table at {rt_offset:#x} outside the file"),
            ));
        }
        Ok(())
    }

    /// The backing file named in the header (`None` without one), opened read-only as
    /// `format` one level deeper; its name must lie in the file and be under 1 KiB, and the
    /// chain at most [`MAX_BACKING_DEPTH`] deep. A relative name is relative to `path`'s
    /// directory.
    fn open_backing_file(
        &self,
        file: &File,
        path: &Path,
        p: &str,
        file_len: u64,
        format: Option<&str>,
        depth: usize,
    ) -> Result<Option<Box<dyn DiskImage>>, Qcow2Error> {
        let (name_offset, name_size) = (self.backing_file_offset, self.backing_file_size);
        if name_offset == 0 || name_size == 0 {
            return Ok(None);
        }
        if name_size > 1023 || !in_file(name_offset, u64::from(name_size), file_len) {
            return Err(bad(p, "backing file name outside the file"));
        }
        if depth + 1 >= MAX_BACKING_DEPTH {
            return Err(unsupported(
                p,
                format!("backing chain deeper than {MAX_BACKING_DEPTH} images"),
            ));
        }
        let mut name = vec![0u8; name_size as usize];
        file.read_exact_at(&mut name, name_offset)
            .map_err(|e| io_error(p, e))?;
        let name = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
        let bpath = if name.is_absolute() {
            name
        } else {
            path.parent().unwrap_or(Path::new(".")).join(name)
        };
        let backing = open_backing(&bpath, format, depth + 1).map_err(|e| Qcow2Error::Backing {
            path: p.to_string(),
            source: Box::new(e),
        })?;
        Ok(Some(backing))
    }
}

/// A table of big-endian u64 entries, `len` bytes at `off` (bounds checked by the caller).
fn read_table(file: &File, off: u64, len: u64) -> io::Result<Vec<u64>> {
    let mut raw = vec![0u8; crate::cast::usize_from(len)];
    file.read_exact_at(&mut raw, off)?;
    Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
}

/// The backing file's format from the header extensions after the header (at most 64 of
/// them, each at most a cluster long; a short read ends the list).
fn read_backing_format(
    file: &File,
    header_len: u32,
    cluster_size: u64,
) -> io::Result<Option<String>> {
    let mut backing_format = None;
    let mut off = u64::from(header_len);
    for _ in 0..64 {
        let mut e = [0u8; 8];
        if file.read_exact_at(&mut e, off).is_err() {
            break;
        }
        let (ty, len) = (be32(&e, 0), u64::from(be32(&e, 4)));
        if ty == 0 || len > cluster_size {
            break;
        }
        if ty == EXT_BACKING_FORMAT {
            let mut v = vec![0u8; crate::cast::usize_from(len)];
            file.read_exact_at(&mut v, off + 8)?;
            backing_format = Some(String::from_utf8_lossy(&v).into_owned());
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    Ok(backing_format)
}

/// Opens a backing file read-only: qcow2 when its format (from the header extension, or its
/// magic when absent) says so, raw otherwise.
fn open_backing(
    path: &Path,
    format: Option<&str>,
    depth: usize,
) -> Result<Box<dyn DiskImage>, Qcow2Error> {
    let file = File::open(path).map_err(|source| Qcow2Error::Open {
        path: path.display().to_string(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_qcow2 = match format {
        Some("qcow2") => true,
        Some("raw") => false,
        Some(other) => {
            return Err(Qcow2Error::Unsupported {
                path: path.display().to_string(),
                why: format!("backing format {other:?} is not supported (raw or qcow2)"),
            })
        }
        None => read_upto(&file, &mut magic, 0).unwrap_or(0) == 4 && magic == MAGIC,
    };
    if is_qcow2 {
        Ok(Box::new(Qcow2::open_depth(file, path, true, depth)?))
    } else {
        Ok(Box::new(Raw::new(file).map_err(|source| {
            Qcow2Error::Open {
                path: path.display().to_string(),
                source,
            }
        })?))
    }
}

impl DiskImage for Qcow2 {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(off, buf.len() as u64)?;
        let cs = self.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let n = crate::cast::usize_from(cs - (pos & (cs - 1))).min(buf.len() - done);
            self.read_cluster_part(pos, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.ro_check()?;
        self.check_range(off, buf.len() as u64)?;
        let cs = self.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let n = crate::cast::usize_from(cs - (pos & (cs - 1))).min(buf.len() - done);
            self.write_cluster_part(pos, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn write_zeroes(&mut self, off: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.ro_check()?;
        self.check_range(off, len)?;
        self.zero_range(off, len)
    }

    fn discard(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.ro_check()?;
        self.check_range(off, len)?;
        // Only whole clusters; the rest is kept (allowed: discarded content is unspecified).
        let cs = self.cluster_size;
        let start = off.div_ceil(cs) * cs;
        let end = (off + len) / cs * cs;
        if end > start {
            self.zero_range(start, end - start)?;
        }
        Ok(())
    }

    fn format(&self) -> &'static str {
        "qcow2"
    }
}
