//! KVM state: the VM (memory slots, irqchip, PIT), file mappings that become guest memory
//! (virtio-pmem), and the vCPUs with their run loops.

pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
