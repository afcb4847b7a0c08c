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
//!
//! Files: this one holds the transport itself (creation, the fds the builder and the event
//! loop use, event dispatch to the device); `registers.rs` the driver's side (register reads
//! and writes, feature negotiation, the status state machine, activation and reset);
//! `state.rs` the transport's snapshot state (save and restore); `tests.rs` the unit tests.

mod registers;
mod state;
#[cfg(test)]
mod tests;

pub use state::{QueueSnap, TransportRestoreError, TransportState};

use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Interrupt, VirtioDevice};

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of QueueNotify (where ioeventfds go).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

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
}
