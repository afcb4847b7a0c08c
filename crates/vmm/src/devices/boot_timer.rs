//! The boot-complete signal: a guest write of [`BOOT_COMPLETE_VALUE`] to I/O port
//! [`BOOT_TIMER_PORT`] records how long the VMM process took to get there.
//!
//! Same port and value as Firecracker's boot timer (`0x03f0`, 123), so guests and init
//! programs written for Firecracker (and kobako-agent) work unchanged. The write happens on a
//! vCPU thread; the event-loop thread reads the recorded value for the API and logs.

use std::sync::{Arc, Mutex};

use super::BusDevice;
use crate::timing::BootTime;

/// I/O port of the boot timer.
pub const BOOT_TIMER_PORT: u64 = 0x03f0;
/// Value the guest writes when userspace is up.
pub const BOOT_COMPLETE_VALUE: u8 = 123;

/// The device; shares its result with the event loop through `recorded`.
#[derive(Debug)]
pub struct BootTimer {
    pub recorded: Arc<Mutex<Option<BootTime>>>,
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_COMPLETE_VALUE) {
            return;
        }
        let t = BootTime::now();
        let mut slot = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(t);
            crate::log_info!(
                "Guest-boot-time = {:>6} us {} ms, {:>6} CPU us {} CPU ms",
                t.wall_us,
                t.wall_us / 1000,
                t.cpu_us,
                t.cpu_us / 1000
            );
        }
    }
}
