//! kobako-net (placeholder; being written)
