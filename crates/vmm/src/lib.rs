//! kobako-vmm (placeholder; being written)
