//! kobako-runtime
