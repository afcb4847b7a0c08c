//! Emulated devices and the buses that route guest port-I/O and MMIO accesses to them.
//!
//! Devices never see KVM types: a device gets its interrupt as a [`vm_superio::Trigger`]
//! (an eventfd registered as an irqfd) and its accesses as `(offset, data)` calls.
//! The buses are built once by the builder and then shared read-only (`Arc<Bus>`) by all vCPU
//! threads, which call into the devices on their own thread on each I/O exit; each device sits
//! behind its own `Mutex` so that the event-loop thread (serial input, Ctrl-Alt-Del) and vCPU
//! threads can both reach it.

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, SharedDevice};

/// An interrupt line as an eventfd (registered with KVM as an irqfd for its GSI).
#[derive(Debug)]
pub struct EventFdTrigger(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
