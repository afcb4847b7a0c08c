//! kobako-image
