//! The transport's part of a snapshot: [`TransportState`] (registers, negotiated features,
//! each queue's configuration and the device's own state), taken by [`MmioTransport::save`]
//! and put back into a freshly created transport by [`MmioTransport::restore`].

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::MmioTransport;

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
    /// The device cannot continue the saved one (its text says why).
    #[error("{0}")]
    Device(String),
    /// The device refused to start on the restored queues.
    #[error("virtio device type {device_type} could not be activated again (status {status:#x})")]
    Reactivate { device_type: u32, status: u32 },
}

impl MmioTransport {
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
            self.device
                .restore_device(d)
                .map_err(TransportRestoreError::Device)?;
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
}
