//! The driver's side of the virtio-mmio transport: register reads and writes (the
//! [`BusDevice`] a vCPU's MMIO exit reaches), feature negotiation, the device status state
//! machine, and activation and reset of the device (the rules in the module doc of `mmio`).

use virtio_queue::{Queue, QueueT};

use super::{
    MmioTransport, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::devices::virtio::{
    ActiveContext, VirtQueue, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR_ID: u32 = 0x4b42_4f4b; // "KOBK"

impl MmioTransport {
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

    pub(super) fn activate(&mut self) {
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
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
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
