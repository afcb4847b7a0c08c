//! Address-range → device routing for port I/O and MMIO.
//!
//! Built on the event-loop thread by the builder, then immutable and shared by vCPU threads.

use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. `offset` is relative to the range's base.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus (vCPU threads) and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Failure to add a device to a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} overlaps an existing device or is empty")]
    Overlap { base: u64, len: u64 },
}

struct Range {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// A sorted set of non-overlapping ranges.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|r| (r.base, r.len)))
            .finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(pos, Range { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        let idx = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(idx.checked_sub(1)?)?;
        (addr - r.base < r.len).then(|| (r, addr - r.base))
    }

    /// Routes a read; returns false (and leaves `data` as all-ones) when nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((r, off)) => {
                // A poisoned lock means a device panicked on another vCPU; keep serving.
                let mut d = r.dev.lock().unwrap_or_else(|e| e.into_inner());
                d.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a write; returns false when nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((r, off)) => {
                let mut d = r.dev.lock().unwrap_or_else(|e| e.into_inner());
                d.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let a = Arc::new(Mutex::new(Rec(vec![])));
        let b = Arc::new(Mutex::new(Rec(vec![])));
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 5).unwrap();
        assert!(bus.insert(b.clone(), 0x3fc, 8).is_err());
        assert!(bus.insert(b.clone(), 0x10, 0).is_err());
        assert!(bus.write(0x3f9, &[7]));
        assert!(bus.write(0x64, &[0xfe]));
        assert!(!bus.write(0x400, &[1]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(!bus.read(0x65, &mut d));
        assert_eq!(d, [0xff]);
        assert_eq!(a.lock().unwrap().0, vec![(1, vec![7])]);
        assert_eq!(b.lock().unwrap().0, vec![(4, vec![0xfe])]);
    }
}
