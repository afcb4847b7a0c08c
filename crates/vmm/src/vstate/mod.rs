//! KVM state: the VM (memory slots, irqchip, PIT) and the vCPUs with their run loops.

pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
