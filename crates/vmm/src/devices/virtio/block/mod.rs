//! virtio-blk (type 2) over a raw or qcow2 image ([`image`], [`qcow2`], opened by [`disk`]).
//!
//! One request queue (256 entries). Requests: IN, OUT, FLUSH, GET_ID (the drive id, ≤ 20
//! bytes), DISCARD and WRITE_ZEROES (up to [`MAX_SEGS`] segments each). Offered features:
//! FLUSH, SEG_MAX, BLK_SIZE (512), DISCARD, WRITE_ZEROES, RO for read-only drives. Every
//! request is answered: bad headers, out-of-range sectors or I/O errors give
//! VIRTIO_BLK_S_IOERR, unknown types VIRTIO_BLK_S_UNSUPP, malformed chains a zero-length used
//! entry. Writes on a read-only drive give IOERR (what Linux expects).
//!
//! Rate limiting: a request costs its data bytes and one op; when a bucket is empty the request
//! goes back to the ring and the queue waits for the limiter's timer. `PATCH /drives/{id}`
//! swaps the image (capacity change → config interrupt) and/or the limiter while running.

pub mod disk;
pub mod image;
pub mod qcow2;
mod wire;

use std::any::Any;
use std::os::fd::RawFd;
use std::path::Path;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::Epoll;

use super::device_state::{ActiveState, DeviceState};
use super::queue::{Chain, ChainReader, ChainWriter};
use super::rate_limiter::RateLimiter;
use super::{ActiveContext, VirtioDevice, COMMON_FEATURES, TYPE_BLOCK};
use image::DiskImage;
use wire::{Config, DiscardSegment, RequestHeader};

pub const QUEUE_SIZE: u16 = 256;
/// Segments per DISCARD / WRITE_ZEROES request.
pub const MAX_SEGS: u32 = 16;
/// Data segments per request we announce (SEG_MAX); the chain limit is the real bound.
const SEG_MAX: u32 = 128;

pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

const SECTOR_U32: u32 = 512;
const SECTOR: u64 = SECTOR_U32 as u64;
const ID_BYTES: usize = 20;
/// Largest data transfer of one request (the device's bounce buffer).
const MAX_REQUEST_BYTES: u64 = 64 << 20;
const TOKEN_LIMITER: u64 = super::DEVICE_TOKEN_BASE;

/// The block device.
pub struct Block {
    id: String,
    disk: Box<dyn DiskImage>,
    read_only: bool,
    /// The configured `image_format` (None: probed), kept for `PATCH` replacements.
    image_format: Option<String>,
    limiter: RateLimiter,
    state: DeviceState,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("id", &self.id)
            .field("format", &self.disk.format())
            .field("size", &self.disk.size())
            .finish_non_exhaustive()
    }
}

/// Why a drive cannot be attached or updated.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("drive {id:?} has no path_on_host (vhost-user block devices are not supported)")]
    NoPath { id: String },
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error("rate limiter: {0}")]
    Limiter(#[source] std::io::Error),
}

impl Block {
    pub fn new(
        id: &str,
        disk: Box<dyn DiskImage>,
        read_only: bool,
        limiter: Option<&crate::config::RateLimiter>,
    ) -> Result<Block, BlockError> {
        Ok(Block {
            id: id.to_string(),
            disk,
            read_only,
            image_format: None,
            limiter: RateLimiter::new(limiter).map_err(BlockError::Limiter)?,
            state: DeviceState::Inactive,
            buf: Vec::new(),
        })
    }

    /// From a `PUT /drives` configuration.
    pub fn from_config(d: &crate::config::Drive) -> Result<Block, BlockError> {
        let path = d.path_on_host.as_ref().ok_or_else(|| BlockError::NoPath {
            id: d.drive_id.clone(),
        })?;
        let disk = disk::open(path, d.is_read_only, d.image_format.as_deref())?;
        let mut b = Self::new(&d.drive_id, disk, d.is_read_only, d.rate_limiter.as_ref())?;
        b.image_format = d.image_format.clone();
        Ok(b)
    }

    /// `PATCH /drives/{id}` with a new `path_on_host`: opens it first, so a bad path leaves
    /// the current image in place. Returns true when the capacity changed.
    pub fn replace_image(&mut self, path: &Path) -> Result<bool, BlockError> {
        let disk = disk::open(path, self.read_only, self.image_format.as_deref())?;
        let _ = self.disk.flush();
        let changed = disk.size() != self.disk.size();
        self.disk = disk;
        Ok(changed)
    }

    /// `PATCH /drives/{id}` with a `rate_limiter`.
    pub fn update_limiter(&mut self, cfg: &crate::config::RateLimiter) {
        self.limiter.update(Some(cfg));
        // Requests that waited for the old limiter go now.
        self.process();
    }

    pub fn disk(&mut self) -> &mut dyn DiskImage {
        self.disk.as_mut()
    }

    fn capacity_sectors(&self) -> u64 {
        self.disk.size() / SECTOR
    }

    fn config(&self) -> Config {
        let max_sectors = (u32::MAX / SECTOR_U32).to_le();
        Config {
            capacity: self.capacity_sectors().to_le(),
            seg_max: SEG_MAX.to_le(),
            blk_size: SECTOR_U32.to_le(),
            num_queues: 1u16.to_le(),
            max_discard_sectors: max_sectors,
            max_discard_seg: MAX_SEGS.to_le(),
            discard_sector_alignment: 1u32.to_le(),
            max_write_zeroes_sectors: max_sectors,
            max_write_zeroes_seg: MAX_SEGS.to_le(),
            write_zeroes_may_unmap: 1,
            ..Config::default()
        }
    }

    /// Handles one chain; returns `Some(used length)`, or None when the rate limiter refused
    /// it (the caller puts it back).
    fn handle(&mut self, mem: &GuestMemoryMmap, mut c: Chain) -> Option<u32> {
        let Some(status_addr) = c.take_last_writable_byte() else {
            crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_requests);
            return Some(0);
        };
        let mut r = ChainReader::new(mem, &c.readable);
        let mut hdr = RequestHeader::default();
        let (status, data_len) = if !r.read_exact(hdr.as_mut_slice()) {
            (VIRTIO_BLK_S_IOERR, 0)
        } else {
            let ty = u32::from_le(hdr.type_);
            let sector = u64::from_le(hdr.sector);
            let cost = match ty {
                VIRTIO_BLK_T_IN => c.writable_len(),
                VIRTIO_BLK_T_OUT => r.remaining(),
                _ => 0,
            };
            if !self.limiter.consume(cost, 1) {
                return None;
            }
            self.request(mem, ty, sector, &mut r, &c)
        };
        if status != VIRTIO_BLK_S_OK {
            crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_requests);
        }
        let _ = mem.write_obj(status, GuestAddress(status_addr));
        Some(data_len + 1)
    }

    /// Executes a request; returns `(status, bytes written to the guest)`.
    fn request(
        &mut self,
        mem: &GuestMemoryMmap,
        ty: u32,
        sector: u64,
        r: &mut ChainReader<'_>,
        c: &Chain,
    ) -> (u8, u32) {
        let in_range = |len: u64, size: u64| {
            sector
                .checked_mul(SECTOR)
                .and_then(|o| o.checked_add(len))
                .is_some_and(|end| end <= size)
        };
        let size = self.disk.size();
        match ty {
            VIRTIO_BLK_T_IN => {
                let len = c.writable_len();
                if len > MAX_REQUEST_BYTES || !in_range(len, size) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                // len <= MAX_REQUEST_BYTES (64 MiB), checked above.
                self.buf.resize(crate::cast::usize_from(len), 0);
                if self.disk.read_at(sector * SECTOR, &mut self.buf).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let n = ChainWriter::new(mem, &c.writable).write(&self.buf);
                (VIRTIO_BLK_S_OK, crate::cast::len_u32(n))
            }
            VIRTIO_BLK_T_OUT => {
                let len = r.remaining();
                if self.read_only || len > MAX_REQUEST_BYTES || !in_range(len, size) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                // len <= MAX_REQUEST_BYTES (64 MiB), checked above.
                self.buf.resize(crate::cast::usize_from(len), 0);
                if !r.read_exact(&mut self.buf) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match self.disk.write_at(sector * SECTOR, &self.buf) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.disk.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let b = self.id.as_bytes();
                let n = b.len().min(ID_BYTES);
                id[..n].copy_from_slice(&b[..n]);
                let w = ChainWriter::new(mem, &c.writable).write(&id);
                (VIRTIO_BLK_S_OK, crate::cast::len_u32(w))
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let seg_len = std::mem::size_of::<DiscardSegment>() as u64;
                let nseg = r.remaining() / seg_len;
                if nseg == 0 || nseg > u64::from(MAX_SEGS) || r.remaining() % seg_len != 0 {
                    return (VIRTIO_BLK_S_UNSUPP, 0);
                }
                for _ in 0..nseg {
                    let mut seg = DiscardSegment::default();
                    if !r.read_exact(seg.as_mut_slice()) {
                        return (VIRTIO_BLK_S_IOERR, 0);
                    }
                    let s = u64::from_le(seg.sector);
                    let n = u64::from(u32::from_le(seg.num_sectors));
                    let flags = u32::from_le(seg.flags);
                    let unmap = flags & 1 != 0;
                    let ok = s
                        .checked_mul(SECTOR)
                        .and_then(|o| o.checked_add(n * SECTOR))
                        .is_some_and(|e| e <= size);
                    // DISCARD must not set unmap; unknown flag bits are unsupported.
                    if !ok || flags & !1 != 0 || (ty == VIRTIO_BLK_T_DISCARD && unmap) {
                        return (VIRTIO_BLK_S_UNSUPP, 0);
                    }
                    let res = if ty == VIRTIO_BLK_T_DISCARD {
                        self.disk.discard(s * SECTOR, n * SECTOR)
                    } else {
                        self.disk.write_zeroes(s * SECTOR, n * SECTOR, unmap)
                    };
                    if res.is_err() {
                        return (VIRTIO_BLK_S_IOERR, 0);
                    }
                }
                (VIRTIO_BLK_S_OK, 0)
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    fn process(&mut self) {
        // Taken out while `handle` needs `&mut self`; put back below.
        let Some(mut a) = self.state.take() else {
            return;
        };
        let ActiveState { mem, queues, irq } = &mut a;
        let queue = &mut queues[0];
        let mut used = false;
        loop {
            queue.disable_notification(mem);
            while let Some((head, chain)) = queue.pop(mem) {
                let len = match chain {
                    Ok(c) => match self.handle(mem, c) {
                        Some(l) => l,
                        None => {
                            queue.undo_pop();
                            break;
                        }
                    },
                    Err(_) => 0,
                };
                queue.add_used(mem, head, len);
                used = true;
            }
            if self.limiter.is_blocked() || !queue.enable_notification(mem) {
                break;
            }
        }
        if used && queue.needs_notification(mem) {
            irq.signal_used();
        }
        self.state.put_back(a);
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f = COMMON_FEATURES
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_DISCARD
            | VIRTIO_BLK_F_WRITE_ZEROES;
        if self.read_only {
            f = (f | VIRTIO_BLK_F_RO) & !(VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config();
        let c = cfg.as_slice();
        crate::devices::virtio::read_config_bytes(c, offset, data);
    }
    fn activate(
        &mut self,
        ctx: ActiveContext,
        _epoll: &Epoll,
    ) -> Result<(), crate::devices::virtio::ActivateError> {
        if ctx.queues.is_empty() {
            return Err(crate::devices::virtio::ActivateError::BadQueueCount {
                device: "virtio-blk",
                needs: 1,
                got: 0,
            });
        }
        self.state.activate(ctx);
        Ok(())
    }
    fn reset(&mut self, _epoll: &Epoll) {
        // Runs on a vCPU thread (a Status write), whose seccomp filter has no fdatasync: the
        // guest flushes before resetting; written data is in the page cache either way.
        self.state.reset();
    }
    fn queue_event(&mut self, _idx: usize, _epoll: &Epoll) {
        self.process();
    }
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![(self.limiter.timer_fd(), TOKEN_LIMITER)]
    }
    fn event(&mut self, token: u64, _epoll: &Epoll) {
        if token == TOKEN_LIMITER {
            self.limiter.on_timer();
            self.process();
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.disk.flush()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::testing::{guest_memory, DriverQueue, TestDriver};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct Rig {
        t: MmioTransport,
        d: TestDriver,
        q: DriverQueue,
        mem: GuestMemoryMmap,
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    fn rig(size: usize, read_only: bool, limiter: Option<crate::config::RateLimiter>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let init: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
        std::fs::write(&path, &init).unwrap();
        let drive = crate::config::Drive {
            drive_id: "rootfs".into(),
            path_on_host: Some(path.clone()),
            is_root_device: true,
            partuuid: None,
            is_read_only: read_only,
            cache_type: None,
            io_engine: None,
            rate_limiter: limiter,
            socket: None,
            image_format: None,
        };
        let mem = guest_memory(32 << 20);
        let dev = Block::from_config(&drive).unwrap();
        let mut t = MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        let mut d = TestDriver::new(mem.clone());
        d.init(&mut t, u64::MAX, &[0]).unwrap();
        let q = d.queues[0].clone();
        Rig {
            t,
            d,
            q,
            mem,
            _dir: dir,
            path,
        }
    }

    impl Rig {
        /// A request header + data + status; returns (head, status address).
        fn header(&mut self, ty: u32, sector: u64) -> u64 {
            let h = self.d.alloc(16, 8);
            self.mem.write_obj(ty, GuestAddress(h)).unwrap();
            self.mem.write_obj(sector, GuestAddress(h + 8)).unwrap();
            h
        }
        fn status(&self, addr: u64) -> u8 {
            self.mem.read_obj(GuestAddress(addr)).unwrap()
        }
        fn run(&mut self) -> Vec<(u32, u32)> {
            self.d.notify(&mut self.t, 0);
            self.q.take_used(&self.mem)
        }
    }

    #[test]
    fn write_then_read_across_segments_and_indirect() {
        let mut r = rig(1 << 20, false, None);
        // OUT of 3 sectors from three buffers of odd sizes.
        let data: Vec<u8> = (0..1536u32).map(|i| (i * 7).to_le_bytes()[0]).collect();
        let h = r.header(VIRTIO_BLK_T_OUT, 10);
        let b = r.d.alloc(2048, 8);
        r.mem.write_slice(&data, GuestAddress(b)).unwrap();
        let st = r.d.alloc(1, 1);
        let head = r.q.add(
            &r.mem,
            &[
                (h, 16, false),
                (b, 100, false),
                (b + 100, 1000, false),
                (b + 1100, 436, false),
                (st, 1, true),
            ],
        );
        assert_eq!(r.run(), vec![(head.into(), 1)]);
        assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
        assert_eq!(r.d.take_interrupts(&mut r.t), 1);
        // IN through an indirect table, data and status in one writable buffer.
        let h = r.header(VIRTIO_BLK_T_IN, 10);
        let out = r.d.alloc(1537, 8);
        let table = r.d.alloc(64, 16);
        let head = r.q.add_indirect(
            &r.mem,
            table,
            &[(h, 16, false), (out, 1000, true), (out + 1000, 537, true)],
        );
        assert_eq!(r.run(), vec![(head.into(), 1537)]);
        let mut got = vec![0u8; 1536];
        r.mem.read_slice(&mut got, GuestAddress(out)).unwrap();
        assert_eq!(got, data);
        assert_eq!(r.status(out + 1536), VIRTIO_BLK_S_OK);
        // And on disk.
        let f = std::fs::read(&r.path).unwrap();
        assert_eq!(&f[5120..5120 + 1536], &data[..]);
        assert_eq!(f[5119], (5119 % 251) as u8);
    }

    #[test]
    fn flush_id_errors_and_malformed_requests() {
        let mut r = rig(64 << 10, false, None);
        let st = r.d.alloc(8, 1);
        let h = r.header(VIRTIO_BLK_T_FLUSH, 0);
        let f = r.q.add(&r.mem, &[(h, 16, false), (st, 1, true)]);
        let h = r.header(VIRTIO_BLK_T_GET_ID, 0);
        let id = r.d.alloc(20, 1);
        let g =
            r.q.add(&r.mem, &[(h, 16, false), (id, 20, true), (st + 1, 1, true)]);
        // Past the end (128 sectors): IOERR; unknown type: UNSUPP.
        let h = r.header(VIRTIO_BLK_T_IN, 127);
        let buf = r.d.alloc(1024, 8);
        let e = r.q.add(
            &r.mem,
            &[(h, 16, false), (buf, 1024, true), (st + 2, 1, true)],
        );
        let h = r.header(99, 0);
        let u = r.q.add(&r.mem, &[(h, 16, false), (st + 3, 1, true)]);
        // Header too short; no status byte at all.
        let s = r.q.add(&r.mem, &[(h, 8, false), (st + 4, 1, true)]);
        let n = r.q.add(&r.mem, &[(h, 16, false)]);
        let sector_max = r.header(VIRTIO_BLK_T_IN, u64::MAX);
        let o = r.q.add(
            &r.mem,
            &[(sector_max, 16, false), (buf, 512, true), (st + 5, 1, true)],
        );
        let used = r.run();
        assert_eq!(
            used,
            vec![
                (f.into(), 1),
                (g.into(), 21),
                (e.into(), 1),
                (u.into(), 1),
                (s.into(), 1),
                (n.into(), 0),
                (o.into(), 1)
            ]
        );
        let mut b = [0u8; 6];
        r.mem.read_slice(&mut b, GuestAddress(st)).unwrap();
        assert_eq!(b, [0, 0, 1, 2, 1, 1]);
        let mut name = [0u8; 20];
        r.mem.read_slice(&mut name, GuestAddress(id)).unwrap();
        assert_eq!(&name[..6], b"rootfs");
        assert_eq!(
            r.d.take_interrupts(&mut r.t),
            1,
            "one interrupt for the batch"
        );
        // Capacity in the config space.
        let mut cap = [0u8; 8];
        r.d.read_config(&mut r.t, 0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 128);
    }

    #[test]
    fn read_only_refuses_writes_and_offers_ro() {
        let mut r = rig(64 << 10, true, None);
        r.d.write_reg(&mut r.t, 0x14, 0);
        let f = r.d.read_reg(&mut r.t, 0x10);
        assert_ne!(u64::from(f) & VIRTIO_BLK_F_RO, 0);
        let st = r.d.alloc(1, 1);
        let h = r.header(VIRTIO_BLK_T_OUT, 0);
        let b = r.d.alloc(512, 8);
        r.q.add(&r.mem, &[(h, 16, false), (b, 512, false), (st, 1, true)]);
        r.run();
        assert_eq!(r.status(st), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(&r.path).unwrap()[1], 1, "unchanged");
    }

    #[test]
    fn write_zeroes_and_discard() {
        let mut r = rig(64 << 10, false, None);
        let st = r.d.alloc(2, 1);
        let h = r.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let seg = r.d.alloc(32, 8);
        r.mem.write_obj(2u64, GuestAddress(seg)).unwrap();
        r.mem.write_obj(3u32, GuestAddress(seg + 8)).unwrap();
        r.mem.write_obj(0u32, GuestAddress(seg + 12)).unwrap();
        r.q.add(&r.mem, &[(h, 16, false), (seg, 16, false), (st, 1, true)]);
        // DISCARD with the unmap flag is invalid.
        let h2 = r.header(VIRTIO_BLK_T_DISCARD, 0);
        r.mem.write_obj(8u64, GuestAddress(seg + 16)).unwrap();
        r.mem.write_obj(1u32, GuestAddress(seg + 24)).unwrap();
        r.mem.write_obj(1u32, GuestAddress(seg + 28)).unwrap();
        r.q.add(
            &r.mem,
            &[(h2, 16, false), (seg + 16, 16, false), (st + 1, 1, true)],
        );
        r.run();
        assert_eq!(
            (r.status(st), r.status(st + 1)),
            (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP)
        );
        let f = std::fs::read(&r.path).unwrap();
        assert!(f[1024..2560].iter().all(|&b| b == 0));
        assert_eq!(f[1023], (1023 % 251) as u8);
        assert_eq!(f[2560], (2560 % 251) as u8);
    }

    #[test]
    fn ops_rate_limiter_delays_requests_then_serves_them() {
        let lim = crate::config::RateLimiter {
            bandwidth: None,
            ops: Some(crate::config::TokenBucket {
                size: 2,
                one_time_burst: None,
                refill_time: 50,
            }),
        };
        let mut r = rig(64 << 10, false, Some(lim));
        let st = r.d.alloc(4, 1);
        let buf = r.d.alloc(512, 8);
        for i in 0..4 {
            let h = r.header(VIRTIO_BLK_T_IN, i);
            r.q.add(
                &r.mem,
                &[(h, 16, false), (buf, 512, true), (st + i, 1, true)],
            );
        }
        let t0 = std::time::Instant::now();
        assert_eq!(r.run().len(), 2, "the bucket holds two ops");
        let mut served = 2;
        while served < 4 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(5));
            let mut pfd = libc::pollfd {
                fd: r.t.epoll_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            r.t.process_events();
            served += r.q.take_used(&r.mem).len();
        }
        // 2 more ops need 50 ms of refill.
        assert!(
            t0.elapsed() >= std::time::Duration::from_millis(40),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn replacing_the_image_changes_capacity_and_raises_config_interrupt() {
        let mut r = rig(64 << 10, false, None);
        let other = r.path.with_file_name("other.raw");
        std::fs::write(&other, vec![0x5au8; 128 << 10]).unwrap();
        let changed =
            r.t.device_mut()
                .as_any_mut()
                .downcast_mut::<Block>()
                .unwrap()
                .replace_image(&other)
                .unwrap();
        assert!(changed);
        r.t.notify_config_change();
        assert_eq!(
            r.d.read_reg(&mut r.t, 0x60) & crate::devices::virtio::INT_CONFIG,
            2
        );
        let mut cap = [0u8; 8];
        r.d.read_config(&mut r.t, 0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 256);
        let st = r.d.alloc(1, 1);
        let h = r.header(VIRTIO_BLK_T_IN, 200);
        let b = r.d.alloc(512, 8);
        r.q.add(&r.mem, &[(h, 16, false), (b, 512, true), (st, 1, true)]);
        r.run();
        assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(b)).unwrap(), 0x5a);
        // A bad path keeps the current image.
        let dev =
            r.t.device_mut()
                .as_any_mut()
                .downcast_mut::<Block>()
                .unwrap();
        assert!(dev.replace_image(Path::new("/nonexistent")).is_err());
        assert_eq!(dev.disk().size(), 128 << 10);
    }
}
