//! virtio-balloon (type 5), as Firecracker's: the host sets a target (`amount_mib`), the
//! guest's driver gives that many pages back (inflate queue: page frame numbers), and the
//! device drops them from the VMM's memory with `madvise(MADV_DONTNEED)`, so the host RSS
//! falls; deflating hands them back (they read as zero when touched again).
//!
//! Optional, as configured with `PUT /balloon`: `deflate_on_oom` (the guest may take pages
//! back under memory pressure), statistics (`stats_polling_interval_s` > 0: the driver's stats
//! buffer is held and returned every interval, the guest refills it), free page reporting (the
//! guest reports free page ranges, which are dropped the same way) and free page hinting (a
//! host-started run: the guest hints its free pages for one command id, then says it is done).
//!
//! Queues are numbered as the Linux driver numbers them: inflate, deflate, then stats, free
//! page hinting and reporting, each only if its feature is offered (the driver takes every
//! feature offered). Every page number and range comes from the guest and is checked to lie in
//! guest memory before anything is dropped; a bad one is skipped and counted.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::timerfd::TimerFd;

use super::device_state::{ActiveState, DeviceState};
use super::queue::{Buf, ChainReader};
use super::{ActiveContext, VirtioDevice, COMMON_FEATURES};

pub const TYPE_BALLOON: u32 = 5;
const QUEUE_SIZE: u16 = 256;
const PAGE_SHIFT: u64 = 12;
/// Pages per MiB.
pub const PAGES_PER_MIB: u64 = 256;

pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// Free page hinting command ids (virtio 1.2 §5.5.6.5).
pub const CMD_ID_STOP: u32 = 0;
pub const CMD_ID_DONE: u32 = 1;

const TOKEN_STATS: u64 = super::DEVICE_TOKEN_BASE;

/// What `PUT /balloon` configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonSetup {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    pub stats_polling_interval_s: u16,
    pub free_page_hinting: bool,
    pub free_page_reporting: bool,
}

/// The guest's statistics (virtio 1.2 §5.5.6.3; tags 10-15 from Linux 6.12), by tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStats {
    pub values: [Option<u64>; 16],
}

/// The names of the statistics tags in Firecracker's `GET /balloon/statistics`.
pub const STAT_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kill",
    "alloc_stall",
    "async_scan",
    "direct_scan",
    "async_reclaim",
    "direct_reclaim",
];

/// Where a free page hinting run stands (`GET /balloon/hinting/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HintingStatus {
    pub host_cmd: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_cmd: Option<u32>,
}

/// Counters of what the device did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub reported_bytes: u64,
    pub hinted_bytes: u64,
    /// Page numbers or ranges outside guest memory (skipped).
    pub bad_ranges: u64,
}

/// What a snapshot keeps of the device beyond its queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonSnap {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub hint_cmd: u32,
}

/// The balloon device.
pub struct Balloon {
    state: DeviceState,
    setup: BalloonSetup,
    target_pages: u32,
    actual_pages: u32,
    stats_q: Option<usize>,
    hint_q: Option<usize>,
    report_q: Option<usize>,
    /// The driver's statistics buffer while the device holds it.
    stats_head: Option<u16>,
    stats: GuestStats,
    stats_timer: TimerFd,
    stats_interval: Duration,
    /// The timer runs (armed on the event loop: activation runs on a vCPU thread, whose
    /// seccomp filter has no timerfd calls).
    stats_armed: bool,
    hint: HintingStatus,
    acknowledge_on_stop: bool,
    pub counters: BalloonCounters,
    /// Reusable page-number buffer.
    pfns: Vec<u8>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("setup", &self.setup)
            .field("target_pages", &self.target_pages)
            .field("actual_pages", &self.actual_pages)
            .finish_non_exhaustive()
    }
}

/// Drops `[addr, addr + len)` of guest memory from the host (the parts inside guest memory);
/// false if some of it was outside.
pub fn discard(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut covered = 0u64;
    for region in mem.iter() {
        let r_start = region.start_addr().0;
        let r_end = r_start + region.len();
        let (s, e) = (addr.max(r_start), end.min(r_end));
        if s >= e {
            continue;
        }
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(s - r_start)) else {
            continue;
        };
        // SAFETY: `host` points into this live mapping of guest memory, `e - s` bytes of it
        // lie inside the region (checked above); MADV_DONTNEED keeps the mapping valid (the
        // pages read as zero, or as the backing file's, when touched again), which is what a
        // balloon's pages may be.
        let rc = unsafe {
            libc::madvise(
                host.cast(),
                crate::cast::usize_from(e - s),
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            covered += e - s;
        }
    }
    covered == len
}

impl Balloon {
    pub fn new(setup: BalloonSetup) -> std::io::Result<Balloon> {
        let mut next = 2;
        let mut opt = |on: bool| {
            on.then(|| {
                next += 1;
                next - 1
            })
        };
        let stats_q = opt(setup.stats_polling_interval_s > 0);
        let hint_q = opt(setup.free_page_hinting);
        let report_q = opt(setup.free_page_reporting);
        Ok(Balloon {
            state: DeviceState::Inactive,
            setup,
            target_pages: mib_to_pages(setup.amount_mib),
            actual_pages: 0,
            stats_q,
            hint_q,
            report_q,
            stats_head: None,
            stats: GuestStats::default(),
            stats_timer: TimerFd::new()?,
            stats_interval: Duration::from_secs(u64::from(setup.stats_polling_interval_s)),
            stats_armed: false,
            hint: HintingStatus::default(),
            acknowledge_on_stop: false,
            counters: BalloonCounters::default(),
            pfns: vec![0u8; 4096],
        })
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    pub fn stats(&self) -> &GuestStats {
        &self.stats
    }

    pub fn stats_enabled(&self) -> bool {
        self.stats_q.is_some()
    }

    pub fn hinting_enabled(&self) -> bool {
        self.hint_q.is_some()
    }

    /// A new target (`PATCH /balloon`); the caller raises the configuration interrupt.
    pub fn set_target_mib(&mut self, mib: u32) {
        self.target_pages = mib_to_pages(mib);
        self.setup.amount_mib = mib;
    }

    /// A new statistics interval (`PATCH /balloon/statistics`), the first update at once.
    pub fn set_stats_interval(&mut self, secs: u16) {
        self.stats_interval = Duration::from_secs(u64::from(secs));
        self.setup.stats_polling_interval_s = secs;
        if self.state.active_mut().is_some() {
            self.arm_stats(Duration::from_millis(1));
        }
    }

    /// Arms the statistics timer (event loop thread only).
    fn arm_stats(&mut self, first: Duration) {
        if self.stats_interval.is_zero() {
            return;
        }
        match self.stats_timer.reset(first, Some(self.stats_interval)) {
            Ok(()) => self.stats_armed = true,
            Err(e) => crate::log_warn!("balloon: cannot arm the statistics timer: {e}"),
        }
    }

    /// `PATCH /balloon/hinting/start`: a new command id for the guest (the caller raises the
    /// configuration interrupt).
    pub fn start_hinting(&mut self, acknowledge_on_stop: bool) {
        // Ids 0 and 1 are STOP and DONE; runs count up from 2.
        self.hint.host_cmd = self.hint.host_cmd.max(CMD_ID_DONE).wrapping_add(1).max(2);
        self.hint.guest_cmd = None;
        self.acknowledge_on_stop = acknowledge_on_stop;
    }

    /// `PATCH /balloon/hinting/stop`: the run is over, the guest may reuse the pages.
    pub fn stop_hinting(&mut self) {
        self.hint.host_cmd = CMD_ID_DONE;
    }

    pub fn hinting_status(&self) -> HintingStatus {
        self.hint
    }

    pub fn snap(&self) -> BalloonSnap {
        BalloonSnap {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            hint_cmd: self.hint.host_cmd,
        }
    }

    pub fn restore_snap(&mut self, s: &BalloonSnap) {
        self.target_pages = s.target_pages;
        self.actual_pages = s.actual_pages;
        self.hint.host_cmd = s.hint_cmd;
    }

    /// Inflate: page numbers (le32) to drop. Deflate: page numbers the guest takes back.
    fn process_pfns(&mut self, idx: usize) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let q = &mut queues[idx];
        let mut used = false;
        // Drain, then re-enable notifications (with EVENT_IDX this publishes avail_event: a
        // driver kicks only past it) and drain again if more arrived meanwhile.
        loop {
            q.disable_notification(mem);
            while let Some((head, chain)) = q.pop(mem) {
                if let Ok(c) = chain {
                    let mut r = ChainReader::new(mem, &c.readable);
                    // Consecutive pages are dropped with one madvise.
                    let mut run: Option<(u64, u64)> = None;
                    loop {
                        let n = r.read(&mut self.pfns);
                        if n < 4 {
                            break;
                        }
                        for p in self.pfns[..n - n % 4].chunks_exact(4) {
                            let pfn = u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
                            if idx == 1 {
                                self.counters.deflated_pages += 1;
                                continue;
                            }
                            self.counters.inflated_pages += 1;
                            run = match run {
                                Some((start, len)) if start + len == pfn => Some((start, len + 1)),
                                Some((start, len)) => {
                                    if !discard(mem, start << PAGE_SHIFT, len << PAGE_SHIFT) {
                                        self.counters.bad_ranges += 1;
                                    }
                                    Some((pfn, 1))
                                }
                                None => Some((pfn, 1)),
                            };
                        }
                    }
                    if let Some((start, len)) = run {
                        if !discard(mem, start << PAGE_SHIFT, len << PAGE_SHIFT) {
                            self.counters.bad_ranges += 1;
                        }
                    }
                }
                q.add_used(mem, head, 0);
                used = true;
            }
            if !q.enable_notification(mem) {
                break;
            }
        }
        if used && q.needs_notification(mem) {
            irq.signal_used();
        }
    }

    /// Drops every device-writable buffer of each chain (reported or hinted free pages).
    fn process_ranges(&mut self, idx: usize, hinting: bool) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let q = &mut queues[idx];
        let mut used = false;
        let mut config_changed = false;
        loop {
            q.disable_notification(mem);
            while let Some((head, chain)) = q.pop(mem) {
                if let Ok(c) = chain {
                    if hinting && !c.readable.is_empty() {
                        // A command id from the guest: the start of its run, or STOP at its end.
                        let mut id = [0u8; 4];
                        if ChainReader::new(mem, &c.readable).read_exact(&mut id) {
                            let id = u32::from_le_bytes(id);
                            self.hint.guest_cmd = Some(id);
                            if id == CMD_ID_STOP
                                && self.acknowledge_on_stop
                                && self.hint.host_cmd >= 2
                            {
                                self.hint.host_cmd = CMD_ID_DONE;
                                config_changed = true;
                            }
                        }
                    }
                    // Hints count only for the run the host asked for.
                    let take = !hinting
                        || (self.hint.host_cmd >= 2
                            && self.hint.guest_cmd == Some(self.hint.host_cmd));
                    for Buf { addr, len } in &c.writable {
                        if !take {
                            break;
                        }
                        if discard(mem, *addr, u64::from(*len)) {
                            let n = u64::from(*len);
                            if hinting {
                                self.counters.hinted_bytes += n;
                            } else {
                                self.counters.reported_bytes += n;
                            }
                        } else {
                            self.counters.bad_ranges += 1;
                        }
                    }
                }
                q.add_used(mem, head, 0);
                used = true;
            }
            if !q.enable_notification(mem) {
                break;
            }
        }
        if used && q.needs_notification(mem) {
            irq.signal_used();
        }
        if config_changed {
            irq.signal_config();
        }
    }

    /// The driver's stats buffer arrived (first time, or refilled): read it, hold it.
    fn process_stats(&mut self) {
        let Some(sq) = self.stats_q else { return };
        if !self.stats_armed && self.state.active_mut().is_some() {
            self.arm_stats(self.stats_interval);
        }
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let q = &mut queues[sq];
        loop {
            q.disable_notification(mem);
            while let Some((head, chain)) = q.pop(mem) {
                // A driver sends one buffer at a time; a second one returns the first.
                if let Some(old) = self.stats_head.take() {
                    q.add_used(mem, old, 0);
                    irq.signal_used();
                }
                if let Ok(c) = chain {
                    let mut r = ChainReader::new(mem, &c.readable);
                    let mut entry = [0u8; 10];
                    // At most one entry per tag, and a bounded walk.
                    for _ in 0..64 {
                        if !r.read_exact(&mut entry) {
                            break;
                        }
                        let tag = usize::from(u16::from_le_bytes([entry[0], entry[1]]));
                        let mut v = [0u8; 8];
                        v.copy_from_slice(&entry[2..]);
                        if let Some(slot) = self.stats.values.get_mut(tag) {
                            *slot = Some(u64::from_le_bytes(v));
                        }
                    }
                }
                self.stats_head = Some(head);
            }
            if !q.enable_notification(mem) {
                break;
            }
        }
    }

    /// The statistics interval elapsed: give the buffer back so the guest refills it.
    fn on_stats_timer(&mut self) {
        let _ = self.stats_timer.wait();
        let Some(sq) = self.stats_q else { return };
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            // Reset since it was armed: stop it (here, on the event loop).
            let _ = self.stats_timer.clear();
            self.stats_armed = false;
            return;
        };
        if let Some(head) = self.stats_head.take() {
            queues[sq].add_used(mem, head, 0);
            irq.signal_used();
        }
    }
}

fn mib_to_pages(mib: u32) -> u32 {
    u32::try_from(u64::from(mib) * PAGES_PER_MIB).unwrap_or(u32::MAX)
}

/// Pages to MiB (rounded down).
pub fn pages_to_mib(pages: u32) -> u32 {
    u32::try_from(u64::from(pages) / PAGES_PER_MIB).unwrap_or(u32::MAX)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        let n = 2
            + usize::from(self.stats_q.is_some())
            + usize::from(self.hint_q.is_some())
            + usize::from(self.report_q.is_some());
        vec![QUEUE_SIZE; n]
    }
    fn features(&self) -> u64 {
        let mut f = COMMON_FEATURES;
        if self.setup.deflate_on_oom {
            f |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if self.stats_q.is_some() {
            f |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if self.hint_q.is_some() {
            f |= VIRTIO_BALLOON_F_FREE_PAGE_HINT;
        }
        if self.report_q.is_some() {
            f |= VIRTIO_BALLOON_F_REPORTING;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // num_pages, actual, free_page_hint_cmd_id, poison_val.
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        c[8..12].copy_from_slice(&self.hint.host_cmd.to_le_bytes());
        crate::devices::virtio::read_config_bytes(&c, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let mut actual = self.actual_pages.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            let Some(j) = crate::cast::usize_from(offset).checked_add(i) else {
                return;
            };
            if (4..8).contains(&j) {
                actual[j - 4] = *b;
            }
        }
        self.actual_pages = u32::from_le_bytes(actual);
    }
    fn activate(&mut self, ctx: ActiveContext, _epoll: &Epoll) -> Result<(), super::ActivateError> {
        let needs = self.queue_max_sizes().len();
        super::check_queue_count("virtio-balloon", needs, ctx.queues.len())?;
        // No timer call here: this runs on a vCPU thread. The timer starts when the driver's
        // first statistics buffer arrives (on the event loop).
        self.state.activate(ctx);
        self.stats_head = None;
        Ok(())
    }
    fn reset(&mut self, _epoll: &Epoll) {
        // A vCPU thread too: a running timer is stopped at its next tick.
        self.state.reset();
        self.stats_head = None;
    }
    fn queue_event(&mut self, idx: usize, _epoll: &Epoll) {
        match idx {
            0 | 1 => self.process_pfns(idx),
            i if Some(i) == self.stats_q => self.process_stats(),
            i if Some(i) == self.hint_q => self.process_ranges(i, true),
            i if Some(i) == self.report_q => self.process_ranges(i, false),
            _ => {}
        }
    }
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![(self.stats_timer.as_raw_fd(), TOKEN_STATS)]
    }
    fn event(&mut self, token: u64, _epoll: &Epoll) {
        if token == TOKEN_STATS {
            self.on_stats_timer();
        }
    }
    fn save_device(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.snap()).ok()
    }
    fn restore_device(&mut self, state: &serde_json::Value) -> Result<(), String> {
        if let Ok(s) = serde_json::from_value::<BalloonSnap>(state.clone()) {
            self.restore_snap(&s);
        }
        Ok(())
    }
    fn restored(&mut self, _epoll: &Epoll) {
        // The stats buffer the old process held is available again (ring positions restart
        // at the used index): take it back, and the timer goes on.
        self.process_stats();
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::testing::{guest_memory, TestDriver};
    use crate::devices::BusDevice;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn dev(t: &mut MmioTransport) -> &mut Balloon {
        t.device_mut()
            .as_any_mut()
            .downcast_mut::<Balloon>()
            .unwrap()
    }

    #[test]
    fn inflate_reporting_and_stats_through_a_driver() {
        let mem = guest_memory(8 << 20);
        let setup = BalloonSetup {
            amount_mib: 1,
            deflate_on_oom: true,
            stats_polling_interval_s: 60,
            free_page_hinting: false,
            free_page_reporting: true,
        };
        let mut t = MmioTransport::new(
            Box::new(Balloon::new(setup).unwrap()),
            mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        let mut d = TestDriver::new(mem.clone());
        d.init(&mut t, u64::MAX, &[0, 0, 0, 0]).unwrap();
        let mut cfg = [0u8; 4];
        d.read_config(&mut t, 0, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg), 256, "1 MiB target");

        // Inflate: three pages that hold data, one page number outside guest memory.
        let page = |pfn: u64| GuestAddress(pfn << PAGE_SHIFT);
        for pfn in [1024u64, 1025, 1027] {
            mem.write_slice(&[0xab; 4096], page(pfn)).unwrap();
        }
        let list = d.alloc(16, 8);
        for (i, pfn) in [1024u32, 1025, 1027, 0x00ff_ffff].iter().enumerate() {
            mem.write_obj(pfn.to_le(), GuestAddress(list + 4 * i as u64))
                .unwrap();
        }
        d.queues[0].add(&mem, &[(list, 16, false)]);
        d.notify(&mut t, 0);
        assert_eq!(d.queues[0].take_used(&mem).len(), 1);
        // With EVENT_IDX the driver kicks only past avail_event: the device must publish it
        // (a Linux guest's second inflate batch waited forever before).
        assert_eq!(d.queues[0].avail_event(&mem), d.queues[0].avail_idx());
        let mut b = [0u8; 4096];
        for pfn in [1024u64, 1025, 1027] {
            mem.read_slice(&mut b, page(pfn)).unwrap();
            assert!(b.iter().all(|&x| x == 0), "page {pfn} dropped");
        }
        assert_eq!(dev(&mut t).counters.inflated_pages, 4);
        assert_eq!(dev(&mut t).counters.bad_ranges, 1);
        // The driver reports its progress in `actual`.
        t.write(0x100 + 4, &3u32.to_le_bytes());
        assert_eq!(dev(&mut t).actual_pages(), 3);

        // Free page reporting: a device-writable range is dropped.
        mem.write_slice(&[0xcd; 8192], page(1100)).unwrap();
        d.queues[3].add(&mem, &[(1100 << PAGE_SHIFT, 8192, true)]);
        d.notify(&mut t, 3);
        mem.read_slice(&mut b, page(1101)).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(dev(&mut t).counters.reported_bytes, 8192);

        // Statistics: the buffer is read and held; the interval gives it back.
        let st = d.alloc(20, 8);
        for (i, (tag, v)) in [(4u16, 1000u64), (5, 2000)].iter().enumerate() {
            let a = st + 10 * i as u64;
            mem.write_obj(tag.to_le(), GuestAddress(a)).unwrap();
            mem.write_obj(v.to_le(), GuestAddress(a + 2)).unwrap();
        }
        d.queues[2].add(&mem, &[(st, 20, false)]);
        d.notify(&mut t, 2);
        assert!(d.queues[2].take_used(&mem).is_empty(), "held");
        assert_eq!(d.queues[2].avail_event(&mem), d.queues[2].avail_idx());
        let s = dev(&mut t).stats().values;
        assert_eq!((s[4], s[5], s[0]), (Some(1000), Some(2000), None));
        dev(&mut t).set_stats_interval(60);
        std::thread::sleep(std::time::Duration::from_millis(20));
        t.process_events();
        assert_eq!(
            d.queues[2].take_used(&mem).len(),
            1,
            "returned for a refill"
        );
        // A snapshot keeps target and actual.
        let snap = t.save();
        assert_eq!(
            snap.device,
            Some(serde_json::json!({"target_pages": 256, "actual_pages": 3, "hint_cmd": 0}))
        );
    }

    #[test]
    fn queues_features_and_config_follow_the_setup() {
        let b = Balloon::new(BalloonSetup {
            amount_mib: 3,
            deflate_on_oom: true,
            stats_polling_interval_s: 1,
            free_page_hinting: false,
            free_page_reporting: true,
        })
        .unwrap();
        assert_eq!(b.queue_max_sizes().len(), 4);
        assert_eq!((b.stats_q, b.hint_q, b.report_q), (Some(2), None, Some(3)));
        let f = b.features();
        assert!(f & VIRTIO_BALLOON_F_DEFLATE_ON_OOM != 0);
        assert!(f & VIRTIO_BALLOON_F_STATS_VQ != 0);
        assert!(f & VIRTIO_BALLOON_F_REPORTING != 0);
        assert!(f & VIRTIO_BALLOON_F_FREE_PAGE_HINT == 0);
        let mut c = [0u8; 4];
        b.read_config(0, &mut c);
        assert_eq!(u32::from_le_bytes(c), 768);
        let mut b = b;
        b.write_config(4, &700u32.to_le_bytes());
        b.write_config(0, &[9, 9, 9, 9]);
        assert_eq!((b.target_pages(), b.actual_pages()), (768, 700));
        b.start_hinting(true);
        assert_eq!(b.hinting_status().host_cmd, 2);
        b.start_hinting(false);
        assert_eq!(b.hinting_status().host_cmd, 3);
        b.stop_hinting();
        assert_eq!(b.hinting_status().host_cmd, CMD_ID_DONE);
        let plain = Balloon::new(BalloonSetup::default()).unwrap();
        assert_eq!(plain.queue_max_sizes().len(), 2);
    }
}
