//! Counters, bumped from any thread with relaxed atomics (hot paths count, they don't log), and
//! written as one JSON line to the `PUT /metrics` file on `FlushMetrics` by the event loop.

use std::sync::atomic::{AtomicU64, Ordering};

/// All counters of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub io_exits: AtomicU64,
    pub mmio_exits: AtomicU64,
    pub unhandled_io: AtomicU64,
    pub unhandled_mmio: AtomicU64,
    pub kicks: AtomicU64,
    pub api_requests: AtomicU64,
    pub api_errors: AtomicU64,
    pub virtio_interrupts: AtomicU64,
    pub virtio_bad_chains: AtomicU64,
    pub virtio_bad_requests: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// The process-wide counters.
pub static METRICS: Metrics = Metrics {
    io_exits: AtomicU64::new(0),
    mmio_exits: AtomicU64::new(0),
    unhandled_io: AtomicU64::new(0),
    unhandled_mmio: AtomicU64::new(0),
    kicks: AtomicU64::new(0),
    api_requests: AtomicU64::new(0),
    api_errors: AtomicU64::new(0),
    virtio_interrupts: AtomicU64::new(0),
    virtio_bad_chains: AtomicU64::new(0),
    virtio_bad_requests: AtomicU64::new(0),
    rate_limited: AtomicU64::new(0),
};

/// Increments a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A JSON snapshot (plus the boot time, when the guest has signalled it).
    pub fn snapshot(&self, boot: Option<crate::timing::BootTime>) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "utc_timestamp_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            "vcpu": {
                "exit_io": g(&self.io_exits),
                "exit_mmio": g(&self.mmio_exits),
                "unhandled_io": g(&self.unhandled_io),
                "unhandled_mmio": g(&self.unhandled_mmio),
                "kicks": g(&self.kicks),
            },
            "api_server": {
                "requests": g(&self.api_requests),
                "errors": g(&self.api_errors),
            },
            "virtio": {
                "interrupts": g(&self.virtio_interrupts),
                "bad_chains": g(&self.virtio_bad_chains),
                "bad_requests": g(&self.virtio_bad_requests),
                "rate_limited": g(&self.rate_limited),
            },
            "boot_time": boot,
        })
    }
}
