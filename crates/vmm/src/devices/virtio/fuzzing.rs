//! Fuzz bodies shared by the cargo-fuzz targets (`fuzz/`, nightly + libFuzzer) and the
//! bounded stable-Rust randomized test (`tests/fuzz_stable.rs`, run by scripts/test.sh).
//! Each takes arbitrary bytes and must neither panic nor hang.

use std::io::Write;
use std::os::fd::FromRawFd;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::block::image::DiskImage;
use super::block::qcow2::Qcow2;
use super::mmio::MmioTransport;
use super::queue::{ChainReader, ChainWriter, VirtQueue};
use super::testing::{guest_memory, TestDriver};

/// Guest memory of the fuzz bodies: the input image in the first MiB, the test driver's rings
/// (which it places from 1 MiB up) in the second.
const MEM: usize = 2 << 20;

/// Guest memory filled from `data`, a split queue placed by its first bytes, then: chains
/// popped and parsed, their buffers read and written; and the same memory driven through a
/// virtio-blk device on an in-memory disk.
pub fn descriptor_chains(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let mem = guest_memory(MEM);
    // The rest of the input is the guest's memory image (descriptors, rings, requests).
    let _ = mem.write_slice(&data[8..data.len().min((1 << 20) + 8)], GuestAddress(0));
    let size = 1u16 << (data[0] % 9); // 1..=256
    let at = |b: u8| u32::from(b) * 4096;
    let mut q = match Queue::new(256) {
        Ok(q) => q,
        Err(_) => return,
    };
    let _ = q.try_set_size(size);
    q.set_desc_table_address(Some(at(data[1])), Some(0));
    q.set_avail_ring_address(Some(at(data[2]) + u32::from(data[4] & 0xe)), Some(0));
    q.set_used_ring_address(Some(at(data[3])), Some(0));
    q.set_event_idx(data[5] & 1 != 0);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let mut vq = VirtQueue::new(q);
    let mut scratch = vec![0u8; 4096];
    for _ in 0..512 {
        let Some((head, chain)) = vq.pop(&mem) else {
            break;
        };
        if let Ok(c) = chain {
            let mut r = ChainReader::new(&mem, &c.readable);
            while r.read(&mut scratch) > 0 {}
            let mut w = ChainWriter::new(&mem, &c.writable);
            while w.write(&scratch) > 0 {}
        }
        vq.add_used(&mem, head, 0);
        let _ = vq.needs_notification(&mem);
    }

    // Through a block device: the driver sets up a queue, then the input overwrites memory.
    let disk = MemDisk(vec![0u8; 64 << 10]);
    let dev = match super::block::Block::new("fuzz", Box::new(disk), data[6] & 1 != 0, None) {
        Ok(d) => d,
        Err(_) => return,
    };
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let Ok(mut t) = MmioTransport::new(Box::new(dev), mem.clone(), evt) else {
        return;
    };
    let mut d = TestDriver::new(mem.clone());
    if d.init(&mut t, u64::MAX, &[size]).is_err() {
        debug_assert!(
            false,
            "the block device must accept the test driver's queue"
        );
        return;
    }
    let qd = &d.queues[0];
    // Descriptor table and available ring from the input (the used ring stays the device's).
    let table = &data[8..data.len().min(8 + 16 * usize::from(size))];
    let _ = mem.write_slice(table, GuestAddress(qd.desc));
    let ring = &data[data.len().min(8 + 16 * usize::from(size))..];
    let _ = mem.write_slice(
        &ring[..ring.len().min(4 + 2 * usize::from(size))],
        GuestAddress(qd.avail),
    );
    d.notify(&mut t, 0);
}

/// An in-memory disk for the descriptor fuzzer (no file I/O in the hot loop).
#[derive(Debug)]
struct MemDisk(Vec<u8>);

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let s = usize::try_from(off).map_err(std::io::Error::other)?;
        let src = self
            .0
            .get(s..s + buf.len())
            .ok_or_else(|| std::io::Error::other("range"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> std::io::Result<()> {
        let s = usize::try_from(off).map_err(std::io::Error::other)?;
        let dst = self
            .0
            .get_mut(s..s + buf.len())
            .ok_or_else(|| std::io::Error::other("range"))?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&mut self, off: u64, len: u64, _unmap: bool) -> std::io::Result<()> {
        self.write_at(off, &vec![0u8; crate::cast::usize_from(len)])
    }
    fn discard(&mut self, _off: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn format(&self) -> &'static str {
        "mem"
    }
}

/// The input is a qcow2 file (in a memfd); it is opened read-only and writable, read in a few
/// places and written once. Errors are fine; panics and hangs are not.
pub fn qcow2_image(data: &[u8]) {
    let name = c"kobako-fuzz-qcow2";
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` is a fresh fd we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    if f.write_all(data).is_err() {
        return;
    }
    for read_only in [true, false] {
        let Ok(file) = f.try_clone() else { return };
        let Ok(mut q) = Qcow2::open_file(
            file,
            std::path::Path::new("/nonexistent/fuzz.qcow2"),
            read_only,
        ) else {
            continue;
        };
        let size = q.size();
        let mut buf = vec![0u8; 8192];
        for off in [0, size / 3, size.saturating_sub(8192), size / 2 + 511] {
            let n = (size.saturating_sub(off)).min(8192) as usize;
            let _ = q.read_at(off, &mut buf[..n]);
        }
        if !read_only && size > 0 {
            let n = size.min(5000) as usize;
            let _ = q.write_at(
                size / 4,
                &buf[..n.min(crate::cast::usize_from(size - size / 4))],
            );
            let _ = q.write_zeroes(0, size.min(1 << 20), false);
            let _ = q.read_at(0, &mut buf[..n.min(8192)]);
        }
    }
}

/// vsock packets from the guest: the input is a sequence of `[len: u8][fix: u8][packet: len
/// bytes]` records, each sent as one TX chain (header and payload split over two descriptors);
/// with `fix & 1` the CIDs are made valid so the connection state machine is reached. A host
/// connection has asked for guest port 52 first (its REQUEST comes from host port 2^30), so
/// RESPONSE/RW/SHUTDOWN/credit packets can hit a live connection. Header parsing alone too.
pub fn vsock_packets(data: &[u8]) {
    use super::vsock::{PacketHeader, Vsock, HDR_LEN, HDR_LEN_U32, HOST_CID};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let _ = PacketHeader::parse_guest(data, data.len().saturating_sub(HDR_LEN) as u64, 3);

    let dir = std::env::temp_dir().join(format!(
        "kobako-fuzz-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let Ok(dev) = Vsock::new(3, &dir) else { return };
    let mem = guest_memory(MEM);
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let Ok(mut t) = MmioTransport::new(Box::new(dev), mem.clone(), evt) else {
        return;
    };
    let mut d = TestDriver::new(mem.clone());
    if d.init(&mut t, u64::MAX, &[16, 16, 16]).is_err() {
        debug_assert!(
            false,
            "the vsock device must accept the test driver's queues"
        );
        return;
    }
    let (mut rxq, mut txq) = (d.queues[0].clone(), d.queues[1].clone());
    let rx = d.alloc(8 * 4140, 8);
    for i in 0..8u64 {
        rxq.add(&mem, &[(rx + i * 4140, 4140, true)]);
    }
    d.notify(&mut t, 0);
    let host = std::os::unix::net::UnixStream::connect(&dir).ok();
    if let Some(mut h) = host.as_ref() {
        let _ = h.write_all(b"CONNECT 52\n");
        let _ = h.set_nonblocking(true);
    }
    t.process_events();
    t.process_events();
    let buf = d.alloc(64 << 10, 8);
    let mut rest = data;
    let mut n = 0;
    while rest.len() >= 2 && n < 64 {
        n += 1;
        let (len, fix) = (usize::from(rest[0]), rest[1]);
        let take = len.min(rest.len() - 2);
        let mut p = rest[2..2 + take].to_vec();
        rest = &rest[2 + take..];
        if fix & 1 != 0 && p.len() >= 16 {
            p[0..8].copy_from_slice(&3u64.to_le_bytes());
            p[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
        }
        let _ = mem.write_slice(&p, GuestAddress(buf));
        // At most 255 bytes (the length is one input byte).
        let plen = crate::cast::len_u32(p.len());
        let split = plen.min(HDR_LEN_U32);
        if p.len() > HDR_LEN {
            txq.add(
                &mem,
                &[
                    (buf, split, false),
                    (buf + u64::from(split), plen - split, false),
                ],
            );
        } else {
            txq.add(&mem, &[(buf, split.max(1), false)]);
        }
        d.notify(&mut t, 1);
        if fix & 2 != 0 {
            // The guest consumed its RX buffers: post them again.
            for (_, _) in rxq.take_used(&mem) {}
            for i in 0..8u64 {
                rxq.add(&mem, &[(rx + i * 4140, 4140, true)]);
            }
            d.notify(&mut t, 0);
        }
        if let Some(mut h) = host.as_ref() {
            if fix & 4 != 0 {
                let _ = h.write_all(&p);
                t.process_events();
            }
        }
    }
    drop(host);
    t.process_events();
    if std::env::var_os("KOBAKO_FUZZ_DEBUG").is_some() {
        eprintln!("vsock fuzz: {n} packets, used rx {:?}", rxq.take_used(&mem));
    }
}
