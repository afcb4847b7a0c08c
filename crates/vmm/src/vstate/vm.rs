//! The KVM VM: guest memory (anonymous `MAP_NORESERVE` mappings, so a guest's RAM costs host
//! memory only when it is touched), memory slots, the in-kernel irqchip (PIC + IOAPIC + LAPICs)
//! and PIT.
//!
//! Created and configured on the event-loop thread by the builder; afterwards the `VmFd` is
//! only used by that thread (irqfd registration) and the vCPU fds by their own threads.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout;

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
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_bytes)
            .into_iter()
            .map(|(s, l)| (GuestAddress(s), l as usize))
            .collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmError::Memory {
            mib: mem_bytes >> 20,
            source,
        })?;
        for (slot, region) in memory.iter().enumerate() {
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
                    libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE)
                };
                if rc != 0 {
                    crate::log_warn!(
                        "madvise(MADV_HUGEPAGE) failed: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
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
            memory,
            irqchip: false,
        })
    }

    /// TSS area, in-kernel PIC/IOAPIC/LAPIC, and the PIT (speaker port stubbed).
    pub fn setup_irqchip(&mut self) -> Result<(), VmError> {
        let k = |what| move |source| VmError::Kvm { what, source };
        self.fd
            .set_tss_address(layout::KVM_TSS_ADDRESS as usize)
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
