//! virtio-pmem (type 27, virtio 1.2 §5.19): a host file mapped whole into guest physical
//! memory (its own KVM slot above RAM, see `arch::layout::pmem_regions`), which Linux's
//! `virtio_pmem` driver turns into `/dev/pmemN`. The guest reads and writes the file's pages
//! directly; the device only answers FLUSH requests, with `fdatasync(2)` of the file.
//!
//! - Configuration space: `{ start: le64, size: le64 }`, the region's guest physical address
//!   and length. Read-only (driver writes are ignored).
//! - One request queue (256 entries). A request is a chain with a device-readable
//!   `{ type: le32 }` and a device-writable `{ ret: le32 }`; type 0 (FLUSH) is the only type.
//!   `ret` is 0 when the file was synced, 1 (`VIRTIO_PMEM_RESP_TYPE_EIO`) when the sync failed
//!   or the request was malformed (readable part shorter than 4 bytes, unknown type). A chain
//!   without 4 writable bytes for `ret` (or one the queue layer refused) is returned with used
//!   length 0 and counted (`virtio.bad_requests`).
//! - The requests available when the device looks are answered by one `fdatasync` (they
//!   were all published before it started, so every store the guest made before asking is
//!   covered); requests published meanwhile get the next one. The rate limiter (Firecracker's
//!   `rate_limiter` of a pmem device) charges each sync one op and the file's size in bytes,
//!   as Firecracker charges its `msync`.
//!
//! Threads: queue work (and so the `fdatasync`) runs on the event loop, whose seccomp list
//! has it; activation and reset (vCPU thread) make no syscall. The file mapping is shared with
//! the [`crate::vstate::vm::Vm`], which keeps it alive as long as the KVM slot exists.

use std::any::Any;
use std::os::fd::RawFd;
use std::sync::Arc;

use vmm_sys_util::epoll::Epoll;

use super::device_state::{ActiveState, DeviceState};
use super::queue::{Buf, Chain, ChainError, ChainReader, ChainWriter};
use super::rate_limiter::RateLimiter;
use super::{ActiveContext, VirtioDevice, COMMON_FEATURES, TYPE_PMEM};
use crate::file_mapping::FileMapping;

const QUEUE_SIZE: u16 = 256;
const TOKEN_LIMITER: u64 = super::DEVICE_TOKEN_BASE;
/// `VIRTIO_PMEM_REQ_TYPE_FLUSH`.
pub const REQ_TYPE_FLUSH: u32 = 0;
/// `VIRTIO_PMEM_RESP_TYPE_OK`.
pub const RESP_OK: u32 = 0;
/// `VIRTIO_PMEM_RESP_TYPE_EIO`.
pub const RESP_EIO: u32 = 1;
/// Bytes of the request (`type`) and of the response (`ret`).
const WORD: u64 = 4;

/// What one chain asks.
#[derive(Debug)]
enum Request {
    /// A FLUSH; its `ret` goes into these buffers.
    Flush(Vec<Buf>),
    /// Malformed, answered `RESP_EIO` in these buffers (when it has room for `ret`).
    Bad(Option<Vec<Buf>>),
}

/// The device state a snapshot keeps: where the guest was told the region is. A restore
/// whose backing file no longer gives the same place and size is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PmemSnap {
    start: u64,
    size: u64,
}

/// The virtio-pmem device.
pub struct Pmem {
    state: DeviceState,
    map: Arc<FileMapping>,
    /// Guest physical address of the region.
    start: u64,
    limiter: RateLimiter,
    /// `fdatasync` calls made (the tests check that a batch shares one).
    syncs: u64,
}

impl std::fmt::Debug for Pmem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pmem")
            .field("start", &self.start)
            .field("size", &self.map.len())
            .field("read_only", &self.map.read_only())
            .finish_non_exhaustive()
    }
}

impl Pmem {
    /// A device for the mapping `map`, which the guest finds at `start`.
    pub fn new(
        map: Arc<FileMapping>,
        start: u64,
        limiter: Option<&crate::config::RateLimiter>,
    ) -> std::io::Result<Pmem> {
        Ok(Pmem {
            state: DeviceState::Inactive,
            map,
            start,
            limiter: RateLimiter::new(limiter)?,
            syncs: 0,
        })
    }

    /// `(start, size)` of the region in guest physical memory.
    pub fn region(&self) -> (u64, u64) {
        (self.start, self.map.len())
    }

    /// The mapped file.
    pub fn mapping(&self) -> &Arc<FileMapping> {
        &self.map
    }

    /// How many times the file was synced for the guest.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// `PATCH /pmem/{id}`: the new buckets apply now; requests that waited go.
    pub fn update_limiter(&mut self, cfg: &crate::config::RateLimiter) {
        self.limiter.update(Some(cfg));
        self.process();
    }

    fn config_space(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&self.start.to_le_bytes());
        c[8..].copy_from_slice(&self.map.len().to_le_bytes());
        c
    }

    /// `fdatasync` of the file: the guest's stores through the shared mapping are in its page
    /// cache; this makes them durable.
    fn sync(&mut self) -> u32 {
        self.syncs += 1;
        match self.map.file().sync_data() {
            Ok(()) => RESP_OK,
            Err(e) => {
                crate::log_warn!("virtio-pmem: fdatasync failed: {e}");
                RESP_EIO
            }
        }
    }

    fn process(&mut self) {
        let Some(mut active) = self.state.take() else {
            return;
        };
        self.drain(&mut active);
        self.state.put_back(active);
    }

    fn drain(&mut self, a: &mut ActiveState) {
        let ActiveState { mem, queues, irq } = a;
        let queue = &mut queues[0];
        let mut used = false;
        let mut batch: Vec<(u16, Request)> = Vec::new();
        loop {
            queue.disable_notification(mem);
            while queue.has_available(mem) {
                // One sync answers the batch: charged once, before it is taken.
                if !self.limiter.consume(self.map.len(), 1) {
                    break;
                }
                while batch.len() < usize::from(QUEUE_SIZE) {
                    let Some((head, chain)) = queue.pop(mem) else {
                        break;
                    };
                    batch.push((head, parse(mem, chain)));
                }
                if batch.is_empty() {
                    break;
                }
                let any_flush = batch.iter().any(|(_, r)| matches!(r, Request::Flush(_)));
                let ret = if any_flush { self.sync() } else { RESP_EIO };
                for (head, req) in batch.drain(..) {
                    let (bufs, status) = match &req {
                        Request::Flush(b) => (Some(b), ret),
                        Request::Bad(b) => {
                            crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_requests);
                            (b.as_ref(), RESP_EIO)
                        }
                    };
                    let len =
                        bufs.map_or(0, |b| ChainWriter::new(mem, b).write(&status.to_le_bytes()));
                    queue.add_used(mem, head, crate::cast::len_u32(len));
                    used = true;
                }
            }
            if self.limiter.is_blocked() || !queue.enable_notification(mem) {
                break;
            }
        }
        if used && queue.needs_notification(mem) {
            irq.signal_used();
        }
    }
}

/// One chain as a request: the first 4 readable bytes are `type`, the first 4 writable bytes
/// take `ret`. Nothing the guest wrote is trusted beyond that: lengths come from the validated
/// chain, reads and writes are bounded by it.
fn parse(mem: &vm_memory::GuestMemoryMmap, chain: Result<Chain, ChainError>) -> Request {
    let Ok(c) = chain else {
        return Request::Bad(None);
    };
    let resp = (c.writable_len() >= WORD).then(|| c.writable.clone());
    let mut ty = [0u8; 4];
    if c.readable_len() < WORD || !ChainReader::new(mem, &c.readable).read_exact(&mut ty) {
        return Request::Bad(resp);
    }
    match (u32::from_le_bytes(ty), resp) {
        (REQ_TYPE_FLUSH, Some(r)) => Request::Flush(r),
        (_, r) => Request::Bad(r),
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        TYPE_PMEM
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        COMMON_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_space();
        crate::devices::virtio::read_config_bytes(&c, offset, data);
    }
    fn activate(&mut self, ctx: ActiveContext, _epoll: &Epoll) -> Result<(), super::ActivateError> {
        super::check_queue_count("virtio-pmem", 1, ctx.queues.len())?;
        self.state.activate(ctx);
        Ok(())
    }
    fn reset(&mut self, _epoll: &Epoll) {
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
    fn save_device(&self) -> Option<serde_json::Value> {
        serde_json::to_value(PmemSnap {
            start: self.start,
            size: self.map.len(),
        })
        .ok()
    }
    fn restore_device(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let saved: PmemSnap =
            serde_json::from_value(state.clone()).map_err(|e| format!("virtio-pmem state: {e}"))?;
        let now = PmemSnap {
            start: self.start,
            size: self.map.len(),
        };
        if saved != now {
            return Err(format!(
                "the snapshot's guest has its pmem region at {:#x} with {} bytes, the backing files now give {:#x} with {} bytes: give every pmem backing file the size it had when the snapshot was taken",
                saved.start, saved.size, now.start, now.size
            ));
        }
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.map.file().sync_data()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::testing::{guest_memory, DriverQueue, TestDriver};

    const MIB2: u64 = 2 << 20;
    const START: u64 = 0x1_0000_0000;

    struct Rig {
        t: MmioTransport,
        d: TestDriver,
        q: DriverQueue,
        mem: GuestMemoryMmap,
        map: Arc<FileMapping>,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn rig(read_only: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pmem.img");
        std::fs::write(&path, vec![0u8; usize::try_from(MIB2).unwrap()]).unwrap();
        let map = Arc::new(FileMapping::open(&path, MIB2, read_only).unwrap());
        let dev = Pmem::new(map.clone(), START, None).unwrap();
        let mem = guest_memory(4 << 20);
        let mut t = MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        let mut d = TestDriver::new(mem.clone());
        d.init(&mut t, COMMON_FEATURES, &[0]).unwrap();
        let q = d.queues[0].clone();
        Rig {
            t,
            d,
            q,
            mem,
            map,
            path,
            _dir: dir,
        }
    }

    impl Rig {
        /// A request word at a fresh address.
        fn word(&mut self, v: u32) -> u64 {
            let a = self.d.alloc(4, 4);
            self.mem.write_obj(v.to_le(), GuestAddress(a)).unwrap();
            a
        }
        /// A response word, preset to a value the device must overwrite.
        fn resp(&mut self) -> u64 {
            self.word(0xdead_beef)
        }
        fn ret(&self, a: u64) -> u32 {
            u32::from_le(self.mem.read_obj(GuestAddress(a)).unwrap())
        }
        fn run(&mut self) -> Vec<(u32, u32)> {
            self.d.notify(&mut self.t, 0);
            self.q.take_used(&self.mem)
        }
        fn syncs(&mut self) -> u64 {
            self.t
                .device_mut()
                .as_any_mut()
                .downcast_mut::<Pmem>()
                .unwrap()
                .syncs()
        }
    }

    #[test]
    fn config_space_is_start_and_size() {
        let mut r = rig(false);
        let mut c = [0u8; 16];
        r.d.read_config(&mut r.t, 0, &mut c);
        assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), START);
        assert_eq!(u64::from_le_bytes(c[8..].try_into().unwrap()), MIB2);
        // 32-bit halves, as a driver reads them; bytes past the end read 0.
        assert_eq!(r.d.read_reg(&mut r.t, 0x100), 0);
        assert_eq!(r.d.read_reg(&mut r.t, 0x104), 1);
        assert_eq!(r.d.read_reg(&mut r.t, 0x108), 0x20_0000);
        assert_eq!(r.d.read_reg(&mut r.t, 0x10c), 0);
        assert_eq!(r.d.read_reg(&mut r.t, 0x110), 0);
        // Writes are ignored.
        r.d.write_reg(&mut r.t, 0x100, 0x1234);
        assert_eq!(r.d.read_reg(&mut r.t, 0x100), 0);
        assert_eq!(r.d.read_reg(&mut r.t, 0), 0x7472_6976);
        assert_eq!(r.d.read_reg(&mut r.t, 8), TYPE_PMEM);
    }

    #[test]
    fn flush_is_answered_ok_and_the_data_is_in_the_file() {
        let mut r = rig(false);
        // What the guest's stores do: straight into the shared mapping.
        assert!(r.map.write_at(4096, b"KOBAKO-PMEM-DATA"));
        let req = r.word(REQ_TYPE_FLUSH);
        let resp = r.resp();
        let head = r.q.add(&r.mem, &[(req, 4, false), (resp, 4, true)]);
        assert_eq!(r.run(), vec![(head.into(), 4)]);
        assert_eq!(r.ret(resp), RESP_OK);
        assert_eq!(r.d.take_interrupts(&mut r.t), 1);
        assert_eq!(r.syncs(), 1);
        let f = std::fs::read(&r.path).unwrap();
        assert_eq!(f.len() as u64, MIB2);
        assert_eq!(&f[4096..4112], b"KOBAKO-PMEM-DATA");
        // Request and response in one descriptor each of an indirect table, more room than
        // needed: still one word each.
        let req = r.word(REQ_TYPE_FLUSH);
        let resp = r.d.alloc(16, 4);
        let table = r.d.alloc(32, 16);
        let head =
            r.q.add_indirect(&r.mem, table, &[(req, 4, false), (resp, 16, true)]);
        assert_eq!(r.run(), vec![(head.into(), 4)]);
        assert_eq!(r.ret(resp), RESP_OK);
    }

    #[test]
    fn requests_available_together_share_one_sync() {
        let mut r = rig(false);
        let mut heads = Vec::new();
        let mut resps = Vec::new();
        for _ in 0..5 {
            let req = r.word(REQ_TYPE_FLUSH);
            let resp = r.resp();
            heads.push(u32::from(
                r.q.add(&r.mem, &[(req, 4, false), (resp, 4, true)]),
            ));
            resps.push(resp);
        }
        let used = r.run();
        assert_eq!(used, heads.iter().map(|h| (*h, 4)).collect::<Vec<_>>());
        assert!(resps.iter().all(|a| r.ret(*a) == RESP_OK));
        assert_eq!(r.syncs(), 1, "one fdatasync for the batch");
        assert_eq!(
            r.d.take_interrupts(&mut r.t),
            1,
            "one interrupt for the batch"
        );
        // A later request gets a sync of its own.
        let req = r.word(REQ_TYPE_FLUSH);
        let resp = r.resp();
        r.q.add(&r.mem, &[(req, 4, false), (resp, 4, true)]);
        r.run();
        assert_eq!(r.syncs(), 2);
    }

    #[test]
    fn malformed_requests_get_an_error_status_and_no_panic() {
        let mut r = rig(false);
        let flush = r.word(REQ_TYPE_FLUSH);
        let unknown = r.word(7);
        let (r1, r2, r3, r4) = (r.resp(), r.resp(), r.resp(), r.resp());
        // Unknown type.
        let u = r.q.add(&r.mem, &[(unknown, 4, false), (r1, 4, true)]);
        // Short request descriptor (2 bytes).
        let s = r.q.add(&r.mem, &[(flush, 2, false), (r2, 4, true)]);
        // A write-only "header": no readable part at all.
        let w = r.q.add(&r.mem, &[(r3, 4, true)]);
        // No room for the response: nothing written, used length 0.
        let short_resp = r.resp();
        let n = r.q.add(&r.mem, &[(flush, 4, false), (short_resp, 3, true)]);
        let o = r.q.add(&r.mem, &[(flush, 4, false)]);
        // A buffer outside guest memory: the chain is refused whole.
        let x =
            r.q.add(&r.mem, &[(flush, 4, false), (u64::MAX - 1, 4, true)]);
        // And a good one after all that is still served.
        let g = r.q.add(&r.mem, &[(flush, 4, false), (r4, 4, true)]);
        let used = r.run();
        assert_eq!(
            used,
            vec![
                (u.into(), 4),
                (s.into(), 4),
                (w.into(), 4),
                (n.into(), 0),
                (o.into(), 0),
                (x.into(), 0),
                (g.into(), 4)
            ]
        );
        assert_eq!(
            [r.ret(r1), r.ret(r2), r.ret(r3), r.ret(r4)],
            [RESP_EIO, RESP_EIO, RESP_EIO, RESP_OK]
        );
        assert_eq!(r.ret(short_resp), 0xdead_beef, "untouched");
        let st = r.d.status(&mut r.t);
        assert_eq!(st & crate::devices::virtio::mmio::STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn read_only_mapping_syncs_and_cannot_be_written() {
        let mut r = rig(true);
        assert!(!r.map.write_at(0, b"x"));
        let req = r.word(REQ_TYPE_FLUSH);
        let resp = r.resp();
        r.q.add(&r.mem, &[(req, 4, false), (resp, 4, true)]);
        r.run();
        assert_eq!(r.ret(resp), RESP_OK);
        assert!(std::fs::read(&r.path).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn rate_limiter_delays_flushes_until_its_timer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, vec![0u8; usize::try_from(MIB2).unwrap()]).unwrap();
        let map = Arc::new(FileMapping::open(&path, MIB2, false).unwrap());
        // One sync per 100 ms.
        let lim: crate::config::RateLimiter =
            serde_json::from_str(r#"{"ops": {"size": 1, "refill_time": 100}}"#).unwrap();
        let dev = Pmem::new(map, START, Some(&lim)).unwrap();
        let mem = guest_memory(4 << 20);
        let mut t = MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        let mut d = TestDriver::new(mem.clone());
        d.init(&mut t, COMMON_FEATURES, &[0]).unwrap();
        let mut q = d.queues[0].clone();
        let req = d.alloc(4, 4);
        mem.write_obj(0u32, GuestAddress(req)).unwrap();
        let (a, b) = (d.alloc(4, 4), d.alloc(4, 4));
        q.add(&mem, &[(req, 4, false), (a, 4, true)]);
        d.notify(&mut t, 0);
        assert_eq!(q.take_used(&mem).len(), 1, "the first goes at once");
        q.add(&mem, &[(req, 4, false), (b, 4, true)]);
        d.notify(&mut t, 0);
        assert!(
            q.take_used(&mem).is_empty(),
            "the second waits for the bucket"
        );
        let t0 = std::time::Instant::now();
        while q.take_used(&mem).is_empty() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "never served"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
            t.process_events();
        }
    }

    #[test]
    fn snapshot_state_must_match_the_region() {
        let mut r = rig(false);
        let dev =
            r.t.device_mut()
                .as_any_mut()
                .downcast_mut::<Pmem>()
                .unwrap();
        let saved = dev.save_device().unwrap();
        assert!(dev.restore_device(&saved).is_ok());
        let moved = serde_json::json!({"start": START + (128 << 20), "size": MIB2});
        let e = dev.restore_device(&moved).unwrap_err();
        assert!(e.contains("size it had when the snapshot was taken"), "{e}");
        assert!(dev.restore_device(&serde_json::json!([1])).is_err());
    }
}
