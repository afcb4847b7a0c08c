//! The KVM VM: guest memory (anonymous `MAP_NORESERVE` mappings, so a guest's RAM costs host
//! memory only when it is touched), memory slots (RAM, then file mappings of virtio-pmem
//! devices, which are not part of [`Vm::memory`]: no device reads or writes them, only the
//! guest), the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.
//!
//! Created and configured on the event-loop thread by the builder; afterwards the `VmFd` is
//! only used by that thread (irqfd registration) and the vCPU fds by their own threads.

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_memory::{FileOffset, GuestRegionMmap};

use crate::arch::layout;
use crate::file_mapping::FileMapping;

/// Failure to create or configure the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot allocate {mib} MiB of guest memory")]
    Memory {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot map the snapshot memory file: {0}")]
    MemoryFile(String),
    #[error("this host's KVM cannot map read-only guest memory (no KVM_CAP_READONLY_MEM): set \"read_only\": false for pmem device at {gpa:#x}")]
    NoReadonlyMem { gpa: u64 },
    #[error("no KVM memory slot left for the region at {gpa:#x} (this host's KVM has {max})")]
    NoSlot { gpa: u64, max: usize },
    #[error("KVM ioctl {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The VM and its memory.
#[derive(Debug)]
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    /// File mappings registered as their own slots ([`Vm::add_file_slot`]), kept alive until
    /// the VM fd is closed (fields drop in order: `fd` first).
    file_slots: Vec<Arc<FileMapping>>,
    pub memory: GuestMemoryMmap,
    /// Whether [`Vm::setup_irqchip`] ran (vCPUs then get a LAPIC to configure).
    pub irqchip: bool,
}

impl Vm {
    /// Opens /dev/kvm, creates the VM, maps `mem_bytes` of guest RAM and registers the slots.
    pub fn new(mem_bytes: u64) -> Result<Vm, VmError> {
        Self::with_thp(mem_bytes, false)
    }

    /// Like [`Vm::new`]; with `thp`, guest memory is advised for transparent huge pages.
    pub fn with_thp(mem_bytes: u64, thp: bool) -> Result<Vm, VmError> {
        let (kvm, fd) = Self::open()?;
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_bytes)
            .into_iter()
            .map(|(s, l)| (GuestAddress(s), crate::cast::usize_from(l)))
            .collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmError::Memory {
            mib: mem_bytes >> 20,
            source,
        })?;
        Self::with_memory(kvm, fd, memory, thp)
    }

    /// A VM whose RAM is the snapshot memory file `file` (the regions of
    /// [`layout::ram_ranges`] one after the other), mapped private: pages are read from the
    /// file when the guest first touches them, and the guest's writes never reach the file, so
    /// one snapshot can be restored any number of times.
    pub fn from_memory_file(mem_bytes: u64, file: &File) -> Result<Vm, VmError> {
        let (kvm, fd) = Self::open()?;
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for (start, len) in layout::ram_ranges(mem_bytes) {
            let fo = FileOffset::new(
                file.try_clone()
                    .map_err(|e| VmError::MemoryFile(e.to_string()))?,
                offset,
            );
            let region = MmapRegionBuilder::new(crate::cast::usize_from(len))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .with_file_offset(fo)
                .build()
                .map_err(|e| VmError::MemoryFile(e.to_string()))?;
            regions.push(
                GuestRegionMmap::new(region, GuestAddress(start))
                    .ok_or_else(|| VmError::MemoryFile("region overflows".into()))?,
            );
            offset += len;
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| VmError::MemoryFile(e.to_string()))?;
        Self::with_memory(kvm, fd, memory, false)
    }

    fn open() -> Result<(Kvm, VmFd), VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        Ok((kvm, fd))
    }

    fn with_memory(kvm: Kvm, fd: VmFd, memory: GuestMemoryMmap, thp: bool) -> Result<Vm, VmError> {
        for (region, slot) in memory.iter().zip(0u32..) {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::Kvm {
                    what: "host address of guest memory",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            if thp {
                // SAFETY: advising a live mapping we own over exactly its length; madvise does
                // not change its contents or validity.
                let rc = unsafe {
                    libc::madvise(
                        host.cast(),
                        crate::cast::usize_from(region.len()),
                        libc::MADV_HUGEPAGE,
                    )
                };
                if rc != 0 {
                    crate::log_warn!(
                        "madvise(MADV_HUGEPAGE) failed: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of exactly `memory_size` bytes owned by
            // `memory`, which this `Vm` keeps alive for as long as the VM fd exists (fields
            // drop in order: `fd` before `memory`, so the slot is gone before the unmap).
            unsafe { fd.set_user_memory_region(r) }.map_err(|source| VmError::Kvm {
                what: "KVM_SET_USER_MEMORY_REGION",
                source,
            })?;
        }
        Ok(Vm {
            kvm,
            fd,
            file_slots: Vec::new(),
            memory,
            irqchip: false,
        })
    }

    /// Registers `map` as guest memory at `gpa`, in a KVM slot of its own after the RAM
    /// slots (`KVM_MEM_READONLY` when the mapping is read-only: the guest's writes then exit
    /// as MMIO, which no device claims, and are dropped). The caller placed `gpa` clear of RAM
    /// and of the other slots ([`layout::pmem_regions`]). Returns the slot number.
    pub fn add_file_slot(&mut self, gpa: u64, map: Arc<FileMapping>) -> Result<u32, VmError> {
        let flags = if map.read_only() {
            if !self.kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
                return Err(VmError::NoReadonlyMem { gpa });
            }
            KVM_MEM_READONLY
        } else {
            0
        };
        let max = self.kvm.get_nr_memslots();
        let used = self.memory.num_regions() + self.file_slots.len();
        let slot = u32::try_from(used)
            .ok()
            .filter(|_| used < max)
            .ok_or(VmError::NoSlot { gpa, max })?;
        let r = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: map.len(),
            userspace_addr: map.host_addr(),
        };
        // SAFETY: `map` is a live mapping of exactly `memory_size` bytes; this `Vm` keeps an
        // `Arc` of it in `file_slots` for as long as the VM fd exists (fields drop in order:
        // `fd` before `file_slots`), so the slot is gone before the unmap.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION (pmem)",
            source,
        })?;
        self.file_slots.push(map);
        Ok(slot)
    }

    /// The interrupt controllers', PIT's and kvmclock's state (vCPUs paused).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let k = |what| move |source| VmError::Kvm { what, source };
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).map_err(k("KVM_GET_IRQCHIP"))?;
            Ok(c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(k("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(k("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts back what [`Vm::save_state`] read (after [`Vm::setup_irqchip`]).
    pub fn restore_state(&self, s: &VmState) -> Result<(), VmError> {
        let k = |what| move |source| VmError::Kvm { what, source };
        self.fd.set_pit2(&s.pit).map_err(k("KVM_SET_PIT2"))?;
        // The guest's clock goes on from where it was when the snapshot was taken (not
        // KVM_CLOCK_REALTIME, which would jump it by the time the snapshot sat on disk: the
        // agent sets the wall clock after a restore instead).
        let clock = kvm_clock_data {
            clock: s.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(k("KVM_SET_CLOCK"))?;
        for c in [&s.pic_master, &s.pic_slave, &s.ioapic] {
            self.fd.set_irqchip(c).map_err(k("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    /// TSS area, in-kernel PIC/IOAPIC/LAPIC, and the PIT (speaker port stubbed).
    pub fn setup_irqchip(&mut self) -> Result<(), VmError> {
        let k = |what| move |source| VmError::Kvm { what, source };
        self.fd
            .set_tss_address(crate::cast::usize_from(layout::KVM_TSS_ADDRESS))
            .map_err(k("KVM_SET_TSS_ADDR"))?;
        self.fd.create_irq_chip().map_err(k("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(k("KVM_CREATE_PIT2"))?;
        self.irqchip = true;
        Ok(())
    }
}

/// The VM-wide KVM state of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}
