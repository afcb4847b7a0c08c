//! From the validated configuration to virtio-mmio devices: one 4 KiB window each from
//! [`MMIO_BASE`], one IRQ each from [`FIRST_IRQ`], in Firecracker's order (block devices with
//! the root device first, pmem devices with the root device first, network interfaces, vsock,
//! entropy, balloon), and the kernel command-line entries (`virtio_mmio.device=4K@0xd0000000:5`)
//! that tell the guest where they are. A pmem device also brings guest memory: its backing
//! file mapped, placed by [`crate::arch::layout::pmem_regions`], which the builder registers
//! as a KVM slot ([`VirtioSlot::memory`]).

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::{MmioTransport, MMIO_LEN};
use super::VirtioDevice;
use crate::config::VmResources;
use crate::file_mapping::FileMapping;

/// First device window (in the 3-4 GiB MMIO gap, below the IOAPIC).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// IRQs 5..=23 of the IOAPIC (0-4 are the timer, keyboard, cascade and COM ports).
pub const FIRST_IRQ: u32 = 5;
pub const LAST_IRQ: u32 = 23;

/// Which configured object a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceId {
    Block(String),
    Pmem(String),
    Net(String),
    Vsock,
    Rng,
    Balloon,
}

/// A device placed on the MMIO bus.
#[derive(Debug)]
pub struct VirtioSlot {
    pub id: DeviceId,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub base: u64,
    pub irq: u32,
    /// Guest memory the device brings (pmem): `(guest physical address, mapping)`, for the
    /// builder to register as a KVM slot of its own.
    pub memory: Option<(u64, Arc<FileMapping>)>,
}

/// Why the devices could not be created; the message names the object and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct SetupError {
    pub what: String,
    pub why: SetupCause,
}

/// What went wrong with the object a [`SetupError`] names.
#[derive(Debug, thiserror::Error)]
pub enum SetupCause {
    #[error("{0}")]
    Block(#[from] super::block::BlockError),
    #[error("{0}")]
    Net(#[from] super::net::NetConfigError),
    #[error("{0}")]
    Vsock(#[from] super::vsock::VsockConfigError),
    #[error("{0}")]
    Pmem(#[from] crate::config::PmemError),
    /// The pmem regions do not fit in 64-bit guest physical addresses.
    #[error("the backing files are too large to place above the guest's RAM")]
    PmemSpace,
    /// The entropy device or an interrupt eventfd could not be created.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Transport(#[from] super::mmio::MmioError),
    /// More devices than IRQs.
    #[error("{count} configured, at most {max} fit (one IRQ each)")]
    TooMany { count: usize, max: usize },
}

fn err(what: impl Into<String>, why: impl Into<SetupCause>) -> SetupError {
    SetupError {
        what: what.into(),
        why: why.into(),
    }
}

/// Creates every configured device.
pub fn create(res: &VmResources, mem: &GuestMemoryMmap) -> Result<Vec<VirtioSlot>, SetupError> {
    type Memory = Option<(u64, Arc<FileMapping>)>;
    let mut devs: Vec<(DeviceId, Box<dyn VirtioDevice>, Memory)> = Vec::new();
    let mut drives: Vec<_> = res.drives.values().collect();
    drives.sort_by_key(|d| !d.is_root_device);
    for d in drives {
        let what = format!("drive {:?}", d.drive_id);
        let dev = super::block::Block::from_config(d).map_err(|e| err(&what, e))?;
        devs.push((DeviceId::Block(d.drive_id.clone()), Box::new(dev), None));
    }
    // The root pmem device first: Linux names them /dev/pmem0, 1, ... in probe order, which
    // is the command line's, and the root is /dev/pmem0.
    let mut pmems: Vec<_> = res.pmem.values().collect();
    pmems.sort_by_key(|p| !p.root_device);
    let mut files = Vec::with_capacity(pmems.len());
    for p in &pmems {
        let f = crate::config::open_pmem_file(&p.path_on_host, p.read_only)
            .map_err(|e| err(format!("pmem device {:?}", p.id), e))?;
        files.push(f);
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    let regions = crate::arch::layout::pmem_regions(res.machine.mem_size_mib << 20, &sizes)
        .ok_or_else(|| err("pmem devices", SetupCause::PmemSpace))?;
    for ((p, f), (gpa, size)) in pmems.into_iter().zip(files).zip(regions) {
        let what = format!("pmem device {:?}", p.id);
        let map = Arc::new(FileMapping::new(f.file, size, p.read_only).map_err(|e| err(&what, e))?);
        let dev = super::pmem::Pmem::new(map.clone(), gpa, p.rate_limiter.as_ref())
            .map_err(|e| err(&what, e))?;
        devs.push((
            DeviceId::Pmem(p.id.clone()),
            Box::new(dev),
            Some((gpa, map)),
        ));
    }
    for n in res.net.values() {
        let what = format!("network interface {:?}", n.iface_id);
        let mut dev = super::net::Net::from_config(n).map_err(|e| err(&what, e))?;
        if let Some(m) = res
            .mmds_config
            .as_ref()
            .filter(|m| m.network_interfaces.contains(&n.iface_id))
        {
            dev.set_mmds(crate::mmds::stack::MmdsStack::new(
                m.ipv4(),
                res.mmds.clone(),
            ));
        }
        devs.push((DeviceId::Net(n.iface_id.clone()), Box::new(dev), None));
    }
    if let Some(v) = &res.vsock {
        let dev = super::vsock::Vsock::from_config(v).map_err(|e| err("vsock", e))?;
        devs.push((DeviceId::Vsock, Box::new(dev), None));
    }
    if let Some(e) = &res.entropy {
        let dev = super::rng::Rng::new(e.rate_limiter.as_ref()).map_err(|e| err("entropy", e))?;
        devs.push((DeviceId::Rng, Box::new(dev), None));
    }
    if let Some(b) = &res.balloon {
        let dev = super::balloon::Balloon::new(super::balloon::BalloonSetup {
            amount_mib: b.amount_mib,
            deflate_on_oom: b.deflate_on_oom,
            stats_polling_interval_s: b.stats_polling_interval_s,
            free_page_hinting: b.free_page_hinting,
            free_page_reporting: b.free_page_reporting,
        })
        .map_err(|e| err("balloon", e))?;
        devs.push((DeviceId::Balloon, Box::new(dev), None));
    }
    let max = (LAST_IRQ - FIRST_IRQ + 1) as usize;
    if devs.len() > max {
        return Err(err(
            "virtio devices",
            SetupCause::TooMany {
                count: devs.len(),
                max,
            },
        ));
    }
    let mut slots = Vec::new();
    for ((id, dev, memory), i) in devs.into_iter().zip(0u32..) {
        let what = format!("{id:?}");
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| err(&what, e))?;
        let t = MmioTransport::new(dev, mem.clone(), irq_evt).map_err(|e| err(&what, e))?;
        slots.push(VirtioSlot {
            id,
            transport: Arc::new(Mutex::new(t)),
            base: MMIO_BASE + u64::from(i) * MMIO_LEN,
            irq: FIRST_IRQ + i,
            memory,
        });
    }
    Ok(slots)
}

/// Kernel command-line additions: the root device (as Firecracker: `root=/dev/vda` or
/// `root=PARTUUID=...`, or `root=/dev/pmem0` for a root pmem device; `ro`/`rw`) and one
/// `virtio_mmio.device=` per device.
pub fn cmdline_entries(res: &VmResources, slots: &[VirtioSlot]) -> String {
    let mut s = String::new();
    let has_block = slots.iter().any(|s| matches!(s.id, DeviceId::Block(_)));
    let has_pmem = slots.iter().any(|s| matches!(s.id, DeviceId::Pmem(_)));
    if let Some(root) = res.drives.values().find(|d| d.is_root_device && has_block) {
        match &root.partuuid {
            Some(u) => s.push_str(&format!(" root=PARTUUID={u}")),
            None => s.push_str(" root=/dev/vda"),
        }
        s.push_str(if root.is_read_only { " ro" } else { " rw" });
    } else if let Some(root) = res.pmem.values().find(|p| p.root_device && has_pmem) {
        s.push_str(" root=/dev/pmem0");
        s.push_str(if root.read_only { " ro" } else { " rw" });
    }
    for sl in slots {
        s.push_str(&format!(" virtio_mmio.device=4K@{:#x}:{}", sl.base, sl.irq));
    }
    s
}

fn slot<'a>(slots: &'a [VirtioSlot], id: &DeviceId) -> Option<&'a VirtioSlot> {
    slots.iter().find(|s| &s.id == id)
}

/// Why a live device refused a `PATCH /drives` or `PATCH /network-interfaces`.
#[derive(Debug, thiserror::Error)]
pub enum DeviceUpdateError {
    #[error("No block device for drive {0:?}.")]
    NoDrive(String),
    #[error("Device of drive {0:?} is not a block device.")]
    NotBlock(String),
    /// The new image could not be opened (the old one stays).
    #[error("Cannot update drive {id:?}: {source}")]
    Drive {
        id: String,
        source: super::block::BlockError,
    },
    #[error("No network device for interface {0:?}.")]
    NoInterface(String),
    #[error("Device of interface {0:?} is not a network device.")]
    NotNet(String),
    #[error("No pmem device {0:?}.")]
    NoPmem(String),
}

/// `PATCH /drives/{id}` after boot: a new image file and/or rate limiter, applied to the live
/// device (the guest gets a configuration interrupt when the capacity changed).
pub fn patch_drive(
    slots: &[VirtioSlot],
    id: &str,
    u: &crate::config::DriveUpdate,
) -> Result<(), DeviceUpdateError> {
    let s = slot(slots, &DeviceId::Block(id.to_string()))
        .ok_or_else(|| DeviceUpdateError::NoDrive(id.to_string()))?;
    let mut t = s.transport.lock().unwrap_or_else(|e| e.into_inner());
    let dev = t
        .device_mut()
        .as_any_mut()
        .downcast_mut::<super::block::Block>()
        .ok_or_else(|| DeviceUpdateError::NotBlock(id.to_string()))?;
    let mut changed = false;
    if let Some(p) = &u.path_on_host {
        changed = dev
            .replace_image(p)
            .map_err(|source| DeviceUpdateError::Drive {
                id: id.to_string(),
                source,
            })?;
    }
    if let Some(r) = &u.rate_limiter {
        dev.update_limiter(r);
    }
    if changed {
        t.notify_config_change();
    }
    Ok(())
}

/// Runs `f` on the live balloon device (`None`: no balloon device); when `f` sets its flag the
/// guest gets a configuration-change interrupt afterwards (a new target, a hinting command).
pub fn with_balloon<R>(
    slots: &[VirtioSlot],
    f: impl FnOnce(&mut super::balloon::Balloon, &mut bool) -> R,
) -> Option<R> {
    let s = slot(slots, &DeviceId::Balloon)?;
    let mut t = s.transport.lock().unwrap_or_else(|e| e.into_inner());
    let mut notify = false;
    let r = f(
        t.device_mut()
            .as_any_mut()
            .downcast_mut::<super::balloon::Balloon>()?,
        &mut notify,
    );
    if notify {
        t.notify_config_change();
    }
    Some(r)
}

/// `PATCH /pmem/{id}` after boot: a new rate limiter for the live device.
pub fn patch_pmem(
    slots: &[VirtioSlot],
    id: &str,
    u: &crate::config::PmemUpdate,
) -> Result<(), DeviceUpdateError> {
    let s = slot(slots, &DeviceId::Pmem(id.to_string()))
        .ok_or_else(|| DeviceUpdateError::NoPmem(id.to_string()))?;
    let mut t = s.transport.lock().unwrap_or_else(|e| e.into_inner());
    let dev = t
        .device_mut()
        .as_any_mut()
        .downcast_mut::<super::pmem::Pmem>()
        .ok_or_else(|| DeviceUpdateError::NoPmem(id.to_string()))?;
    if let Some(r) = &u.rate_limiter {
        dev.update_limiter(r);
    }
    Ok(())
}

/// `PATCH /network-interfaces/{id}` after boot: new RX/TX rate limiters.
pub fn patch_net(
    slots: &[VirtioSlot],
    id: &str,
    u: &crate::config::NetworkInterfaceUpdate,
) -> Result<(), DeviceUpdateError> {
    let s = slot(slots, &DeviceId::Net(id.to_string()))
        .ok_or_else(|| DeviceUpdateError::NoInterface(id.to_string()))?;
    let mut t = s.transport.lock().unwrap_or_else(|e| e.into_inner());
    let dev = t
        .device_mut()
        .as_any_mut()
        .downcast_mut::<super::net::Net>()
        .ok_or_else(|| DeviceUpdateError::NotNet(id.to_string()))?;
    dev.update_limiters(u.rx_rate_limiter.as_ref(), u.tx_rate_limiter.as_ref());
    // Frames that waited for the old limits go now.
    t.kick_queues();
    Ok(())
}
