//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): one 4 KiB window per device,
//! registers at 0x000-0x0ff, device configuration from 0x100.
//!
//! Driver-side rules enforced here (a driver breaking them gets no effect, never a panic):
//! features are read/written only between DRIVER and FEATURES_OK; FEATURES_OK is refused
//! (the bit does not stick) unless VIRTIO_F_VERSION_1 is acked and nothing unoffered is;
//! queue registers change only after FEATURES_OK, before DRIVER_OK, on a queue not yet ready;
//! DRIVER_OK activates the device when every ready queue is valid in guest memory (else
//! DEVICE_NEEDS_RESET is set and a config interrupt raised); writing 0 to Status resets.
//!
//! Queue notifications: a write to QueueNotify normally never reaches us (the builder
//! registers each queue's eventfd as a KVM ioeventfd on it); when it does, we signal the same
//! eventfd, so both paths end in [`MmioTransport::process_events`].

use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActiveContext, Interrupt, VirtQueue, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// Why a transport could not take a snapshot's state.
#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    /// The snapshot's device here is not the configured one.
    #[error("the snapshot has a device of type {saved_type} with {saved_queues} queues here, the configuration a device of type {device_type} with {queues} queues")]
    Mismatch {
        saved_type: u32,
        saved_queues: usize,
        device_type: u32,
        queues: usize,
    },
    /// A ready queue's used ring is outside guest memory.
    #[error("queue {queue}: used ring at {addr:#x}: {source}")]
    UsedRing {
        queue: usize,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    /// The saved queue is not a valid virtio queue.
    #[error("queue {queue}: {detail}")]
    Queue { queue: usize, detail: String },
    /// The device refused to start on the restored queues.
    #[error("virtio device type {device_type} could not be activated again (status {status:#x})")]
    Reactivate { device_type: u32, status: u32 },
}

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify (where ioeventfds go).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR_ID: u32 = 0x4b42_4f4b; // "KOBK"

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// Transport errors at creation.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create an eventfd or epoll for the device")]
    Fd(#[source] std::io::Error),
    #[error("device queue size {0} is not a power of two in 1..=32768")]
    QueueSize(u16),
}

/// A virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    epoll: Epoll,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("type", &self.device.device_type())
            .field("status", &self.status)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the eventfd the builder registers as the device's irqfd.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> Result<MmioTransport, MmioError> {
        let epoll = Epoll::new().map_err(MmioError::Fd)?;
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (i, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|_| MmioError::QueueSize(max))?);
            let evt = EventFd::new(EFD_NONBLOCK).map_err(MmioError::Fd)?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    evt.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(MmioError::Fd)?;
            queue_evts.push(evt);
        }
        for (fd, token) in device.fds() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(MmioError::Fd)?;
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Interrupt::new(irq),
            queue_evts,
            queues,
            epoll,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The eventfd of each queue (for KVM ioeventfds on QueueNotify with the queue index as
    /// data match).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt eventfd (for a KVM irqfd).
    pub fn irq_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    /// An fd that is readable when [`MmioTransport::process_events`] has work.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device, for post-boot updates (`downcast_mut` on the concrete type).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Runs `f` on the device with the transport's epoll set (for device operations that
    /// register fds, such as the vsock transport-reset event), on the event loop's thread.
    pub fn with_device<R>(&mut self, f: impl FnOnce(&mut dyn VirtioDevice, &Epoll) -> R) -> R {
        f(self.device.as_mut(), &self.epoll)
    }

    /// Raises a configuration-change interrupt (after an update the guest must see).
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.active {
            self.interrupt.signal_config();
        }
    }

    /// Signals every queue's eventfd, so the device looks at its rings again (after a
    /// limiter update, for example).
    pub fn kick_queues(&self) {
        for e in &self.queue_evts {
            let _ = e.write(1);
        }
    }

    /// Handles whatever is ready: queue notifications and the device's own fds.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                let token = ev.data();
                if let Some(evt) = self.queue_evts.get(crate::cast::usize_from(token)) {
                    let _ = evt.read();
                    if self.active {
                        self.device
                            .queue_event(crate::cast::usize_from(token), &self.epoll);
                    }
                } else {
                    self.device.event_set(token, ev.event_set(), &self.epoll);
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    /// Flushes the device's writes (before a snapshot's disks are copied).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.device.flush()
    }

    /// The transport's registers and queue configuration, for a snapshot (the event loop
    /// calls this with the vCPUs paused, so no register access runs concurrently).
    pub fn save(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            active: self.active,
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let st = q.state();
                    QueueSnap {
                        size: st.size,
                        ready: st.ready,
                        desc_table: st.desc_table,
                        avail_ring: st.avail_ring,
                        used_ring: st.used_ring,
                    }
                })
                .collect(),
            device: self.device.save_device(),
        }
    }

    /// Puts a freshly created transport into a snapshot's state and, if the driver had
    /// started the device, activates it again on the same rings.
    ///
    /// Ring positions are not stored: every device here completes each chain it pops before
    /// it returns to the event loop, so at a snapshot the device's next available index equals
    /// its next used index, which is the used ring's `idx` in guest memory (only the device
    /// writes it). Both are read back from the restored memory.
    pub fn restore(&mut self, s: &TransportState) -> Result<(), TransportRestoreError> {
        let ty = self.device.device_type();
        if s.device_type != ty || s.queues.len() != self.queues.len() {
            return Err(TransportRestoreError::Mismatch {
                saved_type: s.device_type,
                saved_queues: s.queues.len(),
                device_type: ty,
                queues: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (qs, q)) in s.queues.iter().zip(&self.queues).enumerate() {
            let next = if qs.ready {
                self.mem
                    .read_obj::<u16>(vm_memory::GuestAddress(qs.used_ring + 2))
                    .map_err(|source| TransportRestoreError::UsedRing {
                        queue: i,
                        addr: qs.used_ring,
                        source,
                    })?
            } else {
                0
            };
            let st = virtio_queue::QueueState {
                max_size: q.max_size(),
                next_avail: next,
                next_used: next,
                event_idx_enabled: false,
                size: qs.size,
                ready: qs.ready,
                desc_table: qs.desc_table,
                avail_ring: qs.avail_ring,
                used_ring: qs.used_ring,
            };
            queues.push(
                Queue::try_from(st).map_err(|e| TransportRestoreError::Queue {
                    queue: i,
                    detail: format!("{e:?}"),
                })?,
            );
        }
        self.queues = queues;
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.acked_features = s.acked_features;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        if let Some(d) = &s.device {
            self.device.restore_device(d);
        }
        if s.active {
            self.activate();
            if !self.active {
                return Err(TransportRestoreError::Reactivate {
                    device_type: ty,
                    status: self.status,
                });
            }
            self.device.restored(&self.epoll);
        }
        if s.interrupt_status != 0 {
            // The line is edge-triggered: raise it again so a driver that had not yet looked
            // sees it (a spurious interrupt is harmless: drivers read InterruptStatus).
            self.interrupt.restore_status(s.interrupt_status);
        }
        Ok(())
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn can_configure_queue(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset(&self.epoll);
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for e in &self.queue_evts {
            let _ = e.read();
        }
        self.interrupt.clear();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits only get added (clearing needs a reset), in the spec's order.
        let new = v & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.status & STATUS_DRIVER != 0
                && self.acked_features & VIRTIO_F_VERSION_1 != 0
                && self.acked_features & !offered == 0;
            if !ok {
                // The driver reads Status back and sees FEATURES_OK missing.
                self.status |= v & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
                return;
            }
        }
        if new & STATUS_DRIVER_OK != 0 && !self.active {
            if v & STATUS_FEATURES_OK == 0 {
                self.status |= v & !STATUS_DRIVER_OK;
                return;
            }
            self.status |= v;
            self.activate();
            return;
        }
        self.status |= v;
    }

    fn activate(&mut self) {
        let mem = self.mem.clone();
        let mut bad = None;
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&mem) {
                bad = Some(i);
            }
        }
        if let Some(i) = bad {
            crate::log_warn!(
                "virtio device type {}: queue {i} does not fit in guest memory; device needs reset",
                self.device.device_type()
            );
            self.status |= STATUS_NEEDS_RESET;
            self.interrupt.signal_config();
            return;
        }
        let event_idx = self.acked_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let queues = self
            .queues
            .iter()
            .filter_map(|q| {
                // A copy of the configured queue for the device; the transport keeps its own
                // for the registers (read-only once DRIVER_OK is set).
                let mut q = Queue::try_from(q.state()).ok()?;
                q.set_event_idx(event_idx);
                Some(VirtQueue::new(q))
            })
            .collect::<Vec<_>>();
        if queues.len() != self.queues.len() {
            self.status |= STATUS_NEEDS_RESET;
            self.interrupt.signal_config();
            return;
        }
        let ctx = ActiveContext {
            mem,
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        match self.device.activate(ctx, &self.epoll) {
            Ok(()) => {
                self.active = true;
                // Notifications that arrived before DRIVER_OK are handled now.
                for e in &self.queue_evts {
                    let _ = e.write(1);
                }
            }
            Err(e) => {
                crate::log_warn!(
                    "virtio device type {} failed to activate: {e}",
                    self.device.device_type()
                );
                self.status |= STATUS_NEEDS_RESET;
                self.interrupt.signal_config();
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let f = self.device.features();
                match self.device_features_sel {
                    0 => (f & 0xffff_ffff) as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => self.queue().map(|q| u32::from(q.max_size())).unwrap_or(0),
            0x044 => self.queue().map(|q| u32::from(q.ready())).unwrap_or(0),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 if self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if self.can_configure_queue() => {
                if let Some(q) = self.queue().filter(|q| !q.ready()) {
                    // Sizes that are not powers of two ≤ max leave the size unchanged;
                    // virtio-queue refuses them.
                    let _ = q.try_set_size(u16::try_from(v).unwrap_or(u16::MAX));
                }
            }
            0x044 if self.can_configure_queue() => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x050 => {
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x064 => self.interrupt.ack(v),
            0x070 => self.set_status(v),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if !self.can_configure_queue() {
                    return;
                }
                let Some(q) = self.queue() else { return };
                if q.ready() {
                    return;
                }
                let (lo, hi) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                match offset & !4 {
                    0x080 => q.set_desc_table_address(lo, hi),
                    0x090 => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            data.fill(0);
            if self.status & STATUS_DRIVER != 0 || self.status == 0 {
                self.device.read_config(offset - 0x100, data);
            }
            return;
        }
        if data.len() == 4 && offset % 4 == 0 {
            let v = self.read_reg(offset);
            data.copy_from_slice(&v.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - 0x100, data);
            }
            return;
        }
        if data.len() == 4 && offset % 4 == 0 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.write_reg(offset, u32::from_le_bytes(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::testing::{guest_memory, TestDriver};
    use crate::devices::virtio::{
        COMMON_FEATURES, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    };
    use vm_memory::{Bytes, GuestAddress};

    fn rng_transport(mem: &GuestMemoryMmap) -> MmioTransport {
        MmioTransport::new(
            Box::new(Rng::new(None).unwrap()),
            mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn negotiation_follows_the_spec() {
        let mem = guest_memory(4 << 20);
        let mut t = rng_transport(&mem);
        let mut d = TestDriver::new(mem.clone());
        // A legacy driver (no VERSION_1) is refused at FEATURES_OK.
        let st = d
            .init(&mut t, COMMON_FEATURES & !VIRTIO_F_VERSION_1, &[0])
            .unwrap_err();
        assert_eq!(st & STATUS_FEATURES_OK, 0);
        // Queue registers are ignored before FEATURES_OK.
        d.write_reg(&mut t, 0x70, 0);
        d.write_reg(&mut t, 0x38, 8);
        d.write_reg(&mut t, 0x44, 1);
        assert_eq!(d.read_reg(&mut t, 0x44), 0);
        // A queue outside guest memory: DRIVER_OK leads to DEVICE_NEEDS_RESET.
        d.write_reg(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        d.write_reg(&mut t, 0x20, 0);
        d.write_reg(&mut t, 0x24, 1);
        d.write_reg(&mut t, 0x20, 1);
        d.write_reg(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(d.status(&mut t) & STATUS_FEATURES_OK, 0);
        d.write_reg(&mut t, 0x30, 0);
        d.write_reg(&mut t, 0x38, 100); // not a power of two: ignored
        d.write_reg(&mut t, 0xa0, 0xfff0_0000);
        d.write_reg(&mut t, 0x44, 1);
        d.write_reg(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_ne!(d.status(&mut t) & STATUS_NEEDS_RESET, 0);
        assert!(!t.is_active());
        assert_eq!(
            d.read_reg(&mut t, 0x60) & crate::devices::virtio::INT_CONFIG,
            2
        );
        // Reset, then a proper init works and the device answers.
        let f = d.init(&mut t, u64::MAX, &[0]).unwrap();
        assert_eq!(f, COMMON_FEATURES);
        assert!(t.is_active());
        assert_eq!(d.read_reg(&mut t, 0x08), 4);
        assert_eq!(d.read_reg(&mut t, 0x34), 256);
        // Writing 0 resets: inactive, status 0, queue not ready.
        d.write_reg(&mut t, 0x70, 0);
        assert!(!t.is_active());
        assert_eq!(d.status(&mut t), 0);
        assert_eq!(d.read_reg(&mut t, 0x44), 0);
    }

    #[test]
    fn rng_chains_indirect_and_one_interrupt_per_batch() {
        let mem = guest_memory(4 << 20);
        let mut t = rng_transport(&mem);
        let mut d = TestDriver::new(mem.clone());
        d.init(&mut t, COMMON_FEATURES & !VIRTIO_RING_F_EVENT_IDX, &[16])
            .unwrap();
        let a = d.alloc(4096, 8);
        let b = d.alloc(4096, 8);
        let table = d.alloc(64, 16);
        let mut q = d.queues[0].clone();
        let h1 = q.add(
            &mem,
            &[(a, 100, true), (a + 100, 28, true), (a + 1000, 1, true)],
        );
        let h2 = q.add_indirect(&mem, table, &[(b, 512, true), (b + 512, 512, true)]);
        // A readable buffer first is allowed and ignored by the rng.
        let h3 = q.add(&mem, &[(a + 2000, 8, false), (a + 3000, 64, true)]);
        d.notify(&mut t, 0);
        assert_eq!(
            q.take_used(&mem),
            vec![(h1.into(), 129), (h2.into(), 1024), (h3.into(), 64)]
        );
        assert_eq!(d.take_interrupts(&mut t), 1, "one interrupt for the batch");
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(b)).unwrap();
        assert!(
            got.iter().filter(|&&x| x != 0).count() > 900,
            "random bytes arrived"
        );
        let mut untouched = [0u8; 8];
        mem.read_slice(&mut untouched, GuestAddress(a + 2000))
            .unwrap();
        assert_eq!(untouched, [0; 8], "readable buffers are not written");
        // No new work: no interrupt.
        d.notify(&mut t, 0);
        assert_eq!(d.take_interrupts(&mut t), 0);
        let _ = VIRTIO_RING_F_INDIRECT_DESC;
    }

    #[test]
    fn event_index_and_ring_wrap() {
        let mem = guest_memory(4 << 20);
        let mut t = rng_transport(&mem);
        let mut d = TestDriver::new(mem.clone());
        let f = d.init(&mut t, u64::MAX, &[8]).unwrap();
        assert_ne!(f & VIRTIO_RING_F_EVENT_IDX, 0);
        let buf = d.alloc(64, 8);
        let mut q = d.queues[0].clone();
        // The driver wants an interrupt only once the used index passes 5.
        q.set_used_event(&mem, 5);
        for _ in 0..4 {
            q.add(&mem, &[(buf, 8, true)]);
        }
        d.notify(&mut t, 0);
        assert_eq!(q.take_used(&mem).len(), 4);
        assert_eq!(d.take_interrupts(&mut t), 0, "used_event not reached");
        // The device asks to be notified at the next available index.
        assert_eq!(q.avail_event(&mem), 4);
        for _ in 0..4 {
            q.add(&mem, &[(buf, 8, true)]);
        }
        d.notify(&mut t, 0);
        assert_eq!(q.take_used(&mem).len(), 4);
        assert_eq!(d.take_interrupts(&mut t), 1, "used index passed used_event");
        // Past the 16-bit wrap of the ring indices, with an 8-entry ring.
        let mut total = 8u32;
        while total < 70_000 {
            q.set_used_event(&mem, q.avail_idx().wrapping_add(5));
            for _ in 0..6 {
                q.add(&mem, &[(buf, 8, true)]);
            }
            d.notify(&mut t, 0);
            let used = q.take_used(&mem);
            assert_eq!(used.len(), 6);
            assert!(used.iter().all(|&(id, len)| id < 8 && len == 8));
            assert_eq!(d.take_interrupts(&mut t), 1);
            total += 6;
        }
        assert_eq!(q.used_idx(&mem), u16::try_from(total % 65536).unwrap());
    }

    #[test]
    fn malformed_chains_are_returned_empty_without_panic() {
        use crate::devices::virtio::testing::{
            VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
        };
        let mem = guest_memory(4 << 20);
        let mut t = rng_transport(&mem);
        let mut d = TestDriver::new(mem.clone());
        d.init(&mut t, u64::MAX, &[16]).unwrap();
        let buf = d.alloc(4096, 8);
        let table = d.alloc(16 * 2000, 16);
        let mut q = d.queues[0].clone();
        let w = VIRTQ_DESC_F_WRITE;
        let n = VIRTQ_DESC_F_NEXT;
        // A loop: 0 -> 1 -> 0.
        q.write_desc(&mem, 0, buf, 8, w | n, 1);
        q.write_desc(&mem, 1, buf, 8, w | n, 0);
        q.publish(&mem, 0);
        // Next index out of range.
        q.write_desc(&mem, 2, buf, 8, w | n, 999);
        q.publish(&mem, 2);
        // Buffer outside guest memory, and one that overflows the address space.
        q.write_desc(&mem, 3, 0x7fff_0000_0000, 8, w, 0);
        q.publish(&mem, 3);
        q.write_desc(&mem, 4, u64::MAX - 3, 8, w, 0);
        q.publish(&mem, 4);
        // Readable after writable.
        q.write_desc(&mem, 5, buf, 8, w | n, 6);
        q.write_desc(&mem, 6, buf, 8, 0, 0);
        q.publish(&mem, 5);
        // An indirect table of 2000 descriptors (too long).
        for i in 0..2000u64 {
            let a = table + i * 16;
            mem.write_obj(buf, GuestAddress(a)).unwrap();
            mem.write_obj(1u32, GuestAddress(a + 8)).unwrap();
            mem.write_obj(w | if i < 1999 { n } else { 0 }, GuestAddress(a + 12))
                .unwrap();
            mem.write_obj(u16::try_from(i + 1).unwrap(), GuestAddress(a + 14))
                .unwrap();
        }
        q.write_desc(&mem, 7, table, 2000 * 16, VIRTQ_DESC_F_INDIRECT, 0);
        q.publish(&mem, 7);
        // Indirect table with a misaligned length, and one outside memory.
        q.write_desc(&mem, 8, table, 17, VIRTQ_DESC_F_INDIRECT, 0);
        q.publish(&mem, 8);
        q.write_desc(&mem, 9, 0x7fff_0000_0000, 32, VIRTQ_DESC_F_INDIRECT, 0);
        q.publish(&mem, 9);
        // Head index beyond the ring.
        q.publish(&mem, 300);
        // Finally a good chain: the device must still serve it.
        q.write_desc(&mem, 10, buf, 32, w, 0);
        q.publish(&mem, 10);
        d.notify(&mut t, 0);
        let used = q.take_used(&mem);
        let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
        assert_eq!(lens, vec![0, 0, 0, 0, 0, 0, 0, 0, 32], "{used:?}");
        assert_eq!(used.last().unwrap().0, 10);
        assert!(t.is_active());
    }
}

/// A virtio-mmio transport in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub active: bool,
    pub queues: Vec<QueueSnap>,
    /// What the device keeps beyond its queues (the balloon's target and actual size), if
    /// anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<serde_json::Value>,
}

/// A queue's driver-set configuration (its ring positions come from guest memory).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnap {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}
