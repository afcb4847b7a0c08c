//! A virtio driver for tests and fuzzing: it negotiates with a transport through its MMIO
//! registers and lays out split virtqueues (descriptor table, available and used rings,
//! indirect tables, event index fields) in guest memory exactly as a guest kernel does.
//! Nothing here is a stand-in for the device side: devices under test run unmodified.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::devices::BusDevice;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Guest memory for a test: one region at 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory")
}

/// One buffer of a chain to submit: `(guest address, length, device-writable)`.
pub type TestBuf = (u64, u32, bool);

/// The driver side of one split virtqueue.
#[derive(Debug, Clone)]
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Writes a raw descriptor (for malformed-chain tests too).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let a = self.desc + u64::from(idx) * 16;
        mem.write_obj(addr.to_le(), GuestAddress(a)).unwrap();
        mem.write_obj(len.to_le(), GuestAddress(a + 8)).unwrap();
        mem.write_obj(flags.to_le(), GuestAddress(a + 12)).unwrap();
        mem.write_obj(next.to_le(), GuestAddress(a + 14)).unwrap();
    }

    /// Makes `head` available (ring entry, then the index, with a release fence between).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + u64::from(self.avail_idx % self.size) * 2;
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    fn alloc_desc(&mut self) -> u16 {
        let i = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.size;
        i
    }

    /// Submits a chain in the descriptor table; returns its head.
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[TestBuf]) -> u16 {
        let idx: Vec<u16> = bufs.iter().map(|_| self.alloc_desc()).collect();
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = if last { 0 } else { idx[i + 1] };
            self.write_desc(mem, idx[i], addr, len, flags, next);
        }
        self.publish(mem, idx[0]);
        idx[0]
    }

    /// Submits a chain as an indirect table written at `table`; returns its head.
    pub fn add_indirect(&mut self, mem: &GuestMemoryMmap, table: u64, bufs: &[TestBuf]) -> u16 {
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let a = table + i as u64 * 16;
            mem.write_obj(addr.to_le(), GuestAddress(a)).unwrap();
            mem.write_obj(len.to_le(), GuestAddress(a + 8)).unwrap();
            mem.write_obj(flags.to_le(), GuestAddress(a + 12)).unwrap();
            mem.write_obj(u16::try_from(i + 1).unwrap().to_le(), GuestAddress(a + 14))
                .unwrap();
        }
        let head = self.alloc_desc();
        self.write_desc(
            mem,
            head,
            table,
            u32::try_from(bufs.len() * 16).unwrap(),
            VIRTQ_DESC_F_INDIRECT,
            0,
        );
        self.publish(mem, head);
        head
    }

    /// New used entries `(id, len)` since the last call.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap());
        fence(Ordering::Acquire);
        let mut out = Vec::new();
        while self.last_used != idx {
            let e = self.used + 4 + u64::from(self.last_used % self.size) * 8;
            let id: u32 = u32::from_le(mem.read_obj(GuestAddress(e)).unwrap());
            let len: u32 = u32::from_le(mem.read_obj(GuestAddress(e + 4)).unwrap());
            out.push((id, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// Event index: interrupt me when the used index passes `v` (`used_event` field).
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, v: u16) {
        let a = self.avail + 4 + u64::from(self.size) * 2;
        mem.write_obj(v.to_le(), GuestAddress(a)).unwrap();
    }

    /// The device's `avail_event` field (where it wants the next notification).
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        let a = self.used + 4 + u64::from(self.size) * 8;
        u16::from_le(mem.read_obj(GuestAddress(a)).unwrap())
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Jumps the driver's and (after reset) the device's ring positions: only for a queue the
    /// device has not used yet; used by tests to start near the u16 wrap of the indices.
    pub fn next_desc(&self) -> u16 {
        self.next_desc
    }
}

/// Drives a transport through its registers.
#[derive(Debug)]
pub struct TestDriver {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<DriverQueue>,
    next_free: u64,
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// The low and high 32-bit halves of a 64-bit value (a feature word, a ring address), as the
/// MMIO transport's register pairs take it.
fn halves(v: u64) -> (u32, u32) {
    let b = v.to_le_bytes();
    (
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

impl TestDriver {
    /// Rings are placed from 1 MiB up; [`TestDriver::alloc`] hands out memory after them.
    pub fn new(mem: GuestMemoryMmap) -> TestDriver {
        TestDriver {
            mem,
            queues: Vec::new(),
            next_free: 1 << 20,
        }
    }

    /// Bump allocation of guest memory (aligned to `align`).
    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let a = self.next_free.div_ceil(align) * align;
        self.next_free = a + len;
        a
    }

    /// The Linux driver's sequence: reset, ACKNOWLEDGE, DRIVER, features (offered & `want`),
    /// FEATURES_OK (checked), queues of `sizes` (0 = device maximum), DRIVER_OK. Returns the
    /// negotiated features, or the status when the device refused.
    pub fn init(&mut self, t: &mut MmioTransport, want: u64, sizes: &[u16]) -> Result<u64, u32> {
        assert_eq!(rd(t, 0), 0x7472_6976, "magic");
        assert_eq!(rd(t, 4), 2, "version");
        wr(t, 0x70, 0);
        wr(t, 0x70, STATUS_ACKNOWLEDGE);
        wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, 0x14, 0);
        let lo = rd(t, 0x10);
        wr(t, 0x14, 1);
        let hi = rd(t, 0x10);
        let feats = (u64::from(hi) << 32 | u64::from(lo)) & want;
        let (lo, hi) = halves(feats);
        wr(t, 0x24, 0);
        wr(t, 0x20, lo);
        wr(t, 0x24, 1);
        wr(t, 0x20, hi);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        wr(t, 0x70, s);
        if rd(t, 0x70) & STATUS_FEATURES_OK == 0 {
            return Err(rd(t, 0x70));
        }
        self.queues.clear();
        for (i, &want_size) in sizes.iter().enumerate() {
            wr(t, 0x30, u32::try_from(i).unwrap());
            let max = u16::try_from(rd(t, 0x34)).expect("QueueNumMax fits 16 bits");
            assert!(max > 0, "queue {i} exists");
            let size = if want_size == 0 { max } else { want_size };
            let desc = self.alloc(16 * u64::from(size), 16);
            let avail = self.alloc(6 + 2 * u64::from(size), 2);
            let used = self.alloc(6 + 8 * u64::from(size), 4);
            wr(t, 0x38, u32::from(size));
            for (off, a) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                let (lo, hi) = halves(a);
                wr(t, off, lo);
                wr(t, off + 4, hi);
            }
            wr(t, 0x44, 1);
            self.queues.push(DriverQueue {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
                last_used: 0,
            });
        }
        wr(t, 0x70, s | STATUS_DRIVER_OK);
        let st = rd(t, 0x70);
        if st & STATUS_DRIVER_OK == 0 || st & super::mmio::STATUS_NEEDS_RESET != 0 {
            return Err(st);
        }
        Ok(feats)
    }

    /// QueueNotify through the register, then lets the transport process it.
    pub fn notify(&self, t: &mut MmioTransport, q: u16) {
        wr(t, 0x50, u32::from(q));
        t.process_events();
    }

    /// Interrupts raised since the last call (the irqfd's counter), acknowledging them.
    pub fn take_interrupts(&self, t: &mut MmioTransport) -> u64 {
        let n = t.irq_evt().read().unwrap_or(0);
        let st = rd(t, 0x60);
        wr(t, 0x64, st);
        n
    }

    pub fn read_config(&self, t: &mut MmioTransport, off: u64, out: &mut [u8]) {
        t.read(0x100 + off, out);
    }

    pub fn status(&self, t: &mut MmioTransport) -> u32 {
        rd(t, 0x70)
    }

    /// Writes a register (for tests of the transport's rules).
    pub fn write_reg(&self, t: &mut MmioTransport, off: u64, v: u32) {
        wr(t, off, v);
    }

    pub fn read_reg(&self, t: &mut MmioTransport, off: u64) -> u32 {
        rd(t, off)
    }
}

/// RX buffers a [`VsockGuest`] keeps posted, and their size (a 4 KiB page plus the header, as
/// Linux 6.1 posts them: header and data in two descriptors).
pub const VSOCK_RX_SLOTS: usize = 32;
pub const VSOCK_RX_BUF: u32 = 4096 + super::vsock::HDR_LEN_U32;

/// The guest side of a vsock device (its driver's rings and buffers; the credit bookkeeping is
/// the caller's, as a guest kernel's socket layer does it). Used by the device's unit tests and
/// by the runtime's test of the host-side handshake.
#[derive(Debug)]
pub struct VsockGuest {
    pub t: MmioTransport,
    pub d: TestDriver,
    pub mem: GuestMemoryMmap,
    pub rxq: DriverQueue,
    pub txq: DriverQueue,
    pub evq: DriverQueue,
    rx_slots: std::collections::HashMap<u32, u64>,
    free_slots: Vec<u64>,
    /// Where [`VsockGuest::send`] builds packets.
    pub tx_area: u64,
}

impl VsockGuest {
    /// A vsock device with `cid` listening on `uds`, initialised through its registers, with
    /// [`VSOCK_RX_SLOTS`] receive buffers posted.
    pub fn new(cid: u64, uds: &std::path::Path) -> VsockGuest {
        use super::vsock::{Vsock, HDR_LEN, MAX_PKT_PAYLOAD};
        let dev = Vsock::new(cid, uds).expect("vsock device");
        let mem = guest_memory(32 << 20);
        let evt = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
            .expect("eventfd");
        let mut t = MmioTransport::new(Box::new(dev), mem.clone(), evt).expect("transport");
        let mut d = TestDriver::new(mem.clone());
        d.init(&mut t, u64::MAX, &[0, 0, 0])
            .expect("vsock negotiation");
        let mut cfg = [0u8; 8];
        d.read_config(&mut t, 0, &mut cfg);
        assert_eq!(
            u64::from_le_bytes(cfg),
            cid,
            "guest_cid in the config space"
        );
        let (rxq, txq, evq) = (
            d.queues[0].clone(),
            d.queues[1].clone(),
            d.queues[2].clone(),
        );
        let free_slots = (0..VSOCK_RX_SLOTS)
            .map(|_| d.alloc(u64::from(VSOCK_RX_BUF), 8))
            .collect();
        let tx_area = d.alloc(u64::from(MAX_PKT_PAYLOAD) + HDR_LEN as u64, 8);
        let mut g = VsockGuest {
            t,
            d,
            mem,
            rxq,
            txq,
            evq,
            rx_slots: Default::default(),
            free_slots,
            tx_area,
        };
        g.post_rx();
        g
    }

    /// Posts every free receive buffer and notifies the RX queue.
    pub fn post_rx(&mut self) {
        use super::vsock::{HDR_LEN, HDR_LEN_U32};
        while let Some(a) = self.free_slots.pop() {
            let h = self.rxq.add(
                &self.mem,
                &[
                    (a, HDR_LEN_U32, true),
                    (a + HDR_LEN as u64, VSOCK_RX_BUF - HDR_LEN_U32, true),
                ],
            );
            self.rx_slots.insert(u32::from(h), a);
        }
        self.d.notify(&mut self.t, 0);
    }

    /// Lets the device handle whatever is ready (its sockets, queue notifications).
    pub fn pump(&mut self) {
        for _ in 0..4 {
            self.t.process_events();
        }
    }

    /// Packets the device put in receive buffers since the last call (buffers posted again).
    /// Checks what every packet must satisfy: used length = header + `len`, host source CID,
    /// STREAM type.
    pub fn recv(&mut self) -> Vec<(super::vsock::PacketHeader, Vec<u8>)> {
        use super::vsock::{PacketHeader, HDR_LEN, HOST_CID, TYPE_STREAM};
        self.pump();
        let mut out = Vec::new();
        for (id, len) in self.rxq.take_used(&self.mem) {
            let a = self.rx_slots.remove(&id).expect("a buffer we posted");
            self.free_slots.push(a);
            assert!(len as usize >= HDR_LEN, "used length {len}");
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            let h = PacketHeader::decode(&b).unwrap();
            assert_eq!(
                h.len as usize,
                b.len() - HDR_LEN,
                "used length = header + len"
            );
            assert_eq!((h.src_cid, h.type_), (HOST_CID, TYPE_STREAM));
            out.push((h, b[HDR_LEN..].to_vec()));
        }
        self.post_rx();
        out
    }

    /// Submits a raw TX chain and lets the device process it.
    pub fn send_raw(&mut self, bufs: &[TestBuf]) {
        self.txq.add(&self.mem, bufs);
        self.d.notify(&mut self.t, 1);
        let _ = self.txq.take_used(&self.mem);
    }

    /// Sends one packet (header and payload in two descriptors, as Linux 6.1 does).
    pub fn send(&mut self, h: super::vsock::PacketHeader, payload: &[u8]) {
        use super::vsock::{HDR_LEN, HDR_LEN_U32};
        let a = self.tx_area;
        self.mem.write_slice(&h.encode(), GuestAddress(a)).unwrap();
        self.mem
            .write_slice(payload, GuestAddress(a + HDR_LEN as u64))
            .unwrap();
        if payload.is_empty() {
            self.send_raw(&[(a, HDR_LEN_U32, false)]);
        } else {
            self.send_raw(&[
                (a, HDR_LEN_U32, false),
                (
                    a + HDR_LEN as u64,
                    u32::try_from(payload.len()).unwrap(),
                    false,
                ),
            ]);
        }
    }

    /// The device (for counters and direct calls).
    pub fn dev(&mut self) -> &mut super::vsock::Vsock {
        self.t
            .device_mut()
            .as_any_mut()
            .downcast_mut::<super::vsock::Vsock>()
            .expect("a vsock device")
    }
}
