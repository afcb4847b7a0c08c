//! kobako-agent
