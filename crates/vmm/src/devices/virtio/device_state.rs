//! What every virtio device holds once its driver set DRIVER_OK (Firecracker's
//! `devices/virtio/device.rs` `DeviceState`, Cloud Hypervisor's `VirtioCommon`): guest memory,
//! the device's queues and its interrupt line. A device keeps one [`DeviceState`] beside the
//! fields that are its own (a tap, a disk, the vsock connections), activates it from the
//! transport's [`ActiveContext`] and drops it on reset.

use vm_memory::GuestMemoryMmap;

use super::{ActiveContext, Interrupt, VirtQueue};

/// An activated device's memory, queues and interrupt.
#[derive(Debug)]
pub struct ActiveState {
    pub mem: GuestMemoryMmap,
    /// In the order of the device's `queue_max_sizes` (the transport creates exactly those).
    pub queues: Vec<VirtQueue>,
    pub irq: Interrupt,
}

/// Whether the driver has activated the device, and what it got then.
#[derive(Debug, Default)]
pub enum DeviceState {
    /// Before DRIVER_OK, and after a reset.
    #[default]
    Inactive,
    Activated(ActiveState),
}

impl DeviceState {
    /// Activated with the transport's memory, queues and interrupt.
    pub fn activate(&mut self, ctx: ActiveContext) {
        *self = DeviceState::Activated(ActiveState {
            mem: ctx.mem,
            queues: ctx.queues,
            irq: ctx.interrupt,
        });
    }

    /// Back to inactive (a device reset): the queues and the memory are let go.
    pub fn reset(&mut self) {
        *self = DeviceState::Inactive;
    }

    pub fn active_mut(&mut self) -> Option<&mut ActiveState> {
        match self {
            DeviceState::Activated(a) => Some(a),
            DeviceState::Inactive => None,
        }
    }

    /// Takes the state out (leaving `Inactive`), for a device that needs `&mut self` while it
    /// works on its queues; [`DeviceState::put_back`] puts it back.
    pub fn take(&mut self) -> Option<ActiveState> {
        match std::mem::take(self) {
            DeviceState::Activated(a) => Some(a),
            DeviceState::Inactive => None,
        }
    }

    /// Puts back what [`DeviceState::take`] took.
    pub fn put_back(&mut self, a: ActiveState) {
        *self = DeviceState::Activated(a);
    }
}
