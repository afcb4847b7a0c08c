//! Virtio devices (virtio 1.x, "modern" only) on the virtio-mmio transport.
//!
//! - [`mmio`]: the transport: registers, feature negotiation, queue setup, activation and
//!   reset as the spec (virtio 1.2 §4.2.2) describes. It owns the queue-notify eventfds (KVM
//!   ioeventfds, registered by the builder) and the interrupt eventfd (a KVM irqfd), so devices
//!   never see KVM types.
//! - [`queue`]: validated descriptor chains on top of rust-vmm's `virtio-queue`, and the byte
//!   cursors devices read requests from and write replies into.
//! - devices: [`rng`], [`block`] (raw and qcow2), [`net`] (tap), [`vsock`] (Firecracker's Unix
//!   socket host side), [`balloon`], [`pmem`] (a host file mapped as guest memory).
//! - [`device_state`]: what every device holds once activated (memory, queues, interrupt).
//! - [`rate_limiter`]: Firecracker's token buckets (bandwidth and ops).
//! - [`testing`]: a driver that lays out virtqueues in guest memory and drives a transport
//!   through its registers, as a guest kernel would (used by the unit tests and fuzz targets).
//!
//! Threads: a transport is shared (`Arc<Mutex<..>>`) between the MMIO bus (vCPU threads:
//! register accesses) and the event loop, which waits on each transport's own epoll fd and
//! calls [`mmio::MmioTransport::process_events`] (queue notifications, tap/socket/timer fds).

pub mod balloon;
pub mod block;
pub mod device_state;
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod pmem;
pub mod queue;
pub mod rate_limiter;
pub mod rng;
pub mod setup;
pub mod testing;
pub mod vsock;

use std::any::Any;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

pub use queue::VirtQueue;

/// Device IDs (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_PMEM: u32 = 27;

/// Feature bits every device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// The transport features all our devices offer.
pub const COMMON_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

/// Interrupt status bits (virtio-mmio `InterruptStatus`).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: the status register the driver reads and acknowledges, and the
/// eventfd KVM turns into an edge on the device's GSI.
#[derive(Debug, Clone)]
pub struct Interrupt {
    inner: Arc<InterruptInner>,
}

#[derive(Debug)]
struct InterruptInner {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Interrupt {
        Interrupt {
            inner: Arc::new(InterruptInner {
                status: AtomicU32::new(0),
                evt,
            }),
        }
    }

    /// Used buffers were added to a queue.
    pub fn signal_used(&self) {
        self.signal(INT_USED_RING);
    }

    /// The device configuration changed.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bit: u32) {
        self.inner.status.fetch_or(bit, Ordering::SeqCst);
        crate::metrics::inc(&crate::metrics::METRICS.virtio_interrupts);
        // A full eventfd counter (2^64-2 pending) cannot happen: KVM drains it.
        let _ = self.inner.evt.write(1);
    }

    pub fn status(&self) -> u32 {
        self.inner.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.inner.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.inner.evt
    }

    /// Sets the status bits saved in a snapshot and raises the line once.
    pub fn restore_status(&self, bits: u32) {
        self.signal(bits);
    }

    fn clear(&self) {
        self.inner.status.store(0, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActiveContext {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<VirtQueue>,
    pub interrupt: Interrupt,
    pub acked_features: u64,
}

/// Extra fds a device wants its transport to watch; `token` comes back in
/// [`VirtioDevice::event`]. Tokens below [`DEVICE_TOKEN_BASE`] are the transport's.
pub const DEVICE_TOKEN_BASE: u64 = 1 << 16;

/// A virtio device behind a transport. Implementations never panic on guest input: malformed
/// requests are answered (with an error status or a zero-length used entry) and counted.
/// Why a device refused to start when the driver set DRIVER_OK (the transport logs it and
/// sets DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up another number of queues than the device has.
    #[error("{device} needs {}", queues_needed(*.needs))]
    BadQueueCount {
        device: &'static str,
        needs: usize,
        got: usize,
    },
}

fn queues_needed(n: usize) -> String {
    if n == 1 {
        "its queue".into()
    } else {
        format!("{n} queues")
    }
}

/// Refuses an activation whose queue count is not `needs`.
pub fn check_queue_count(
    device: &'static str,
    needs: usize,
    got: usize,
) -> Result<(), ActivateError> {
    if got == needs {
        Ok(())
    } else {
        Err(ActivateError::BadQueueCount { device, needs, got })
    }
}

pub trait VirtioDevice: Send {
    /// The virtio device ID ([`TYPE_BLOCK`] ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits offered (including [`COMMON_FEATURES`]).
    fn features(&self) -> u64;
    /// Reads from the device configuration space (out-of-range bytes read as 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device on validated queues.
    fn activate(&mut self, ctx: ActiveContext, epoll: &Epoll) -> Result<(), ActivateError>;
    /// Back to the state before activation (queues dropped, connections closed).
    fn reset(&mut self, epoll: &Epoll);
    /// The driver notified queue `idx` (only called while active).
    fn queue_event(&mut self, idx: usize, epoll: &Epoll);
    /// Fds watched from creation on, with their tokens (≥ [`DEVICE_TOKEN_BASE`]).
    fn fds(&self) -> Vec<(RawFd, u64)> {
        Vec::new()
    }
    /// One of the device's own fds is ready (also called while inactive: drain it).
    fn event(&mut self, _token: u64, _epoll: &Epoll) {}
    /// Like [`VirtioDevice::event`], with the ready set (HUP/ERR/OUT matter to socket devices).
    fn event_set(&mut self, token: u64, _events: vmm_sys_util::epoll::EventSet, epoll: &Epoll) {
        self.event(token, epoll)
    }
    /// The device was activated again from a snapshot (vsock drops its connections and tells
    /// the guest with a transport-reset event; others have nothing to do).
    fn restored(&mut self, _epoll: &Epoll) {}
    /// Device state a snapshot keeps beyond the queues (most devices have none).
    fn save_device(&self) -> Option<serde_json::Value> {
        None
    }
    /// Puts back what [`VirtioDevice::save_device`] saved (before the device is activated
    /// again on the restored queues); `Err` says why this device cannot continue the saved
    /// one (the load is refused with it).
    fn restore_device(&mut self, _state: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    /// Makes everything written so far durable (block devices, before a snapshot's disks are
    /// copied); others have nothing to do.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// For post-boot updates through the API.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Sets `O_NONBLOCK` on an fd the caller owns.
pub fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns; F_GETFL/F_SETFL only change its status flags.
    let r = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The bytes of config space `space` at `offset` into `data` (what a driver's config read
/// sees): bytes past the end of the space, or an offset that does not fit, read as 0.
pub(crate) fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = crate::cast::usize_from(offset)
            .checked_add(i)
            .and_then(|j| space.get(j))
            .copied()
            .unwrap_or(0);
    }
}
