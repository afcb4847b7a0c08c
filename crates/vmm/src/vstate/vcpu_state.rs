//! A vCPU's architectural state for snapshots: what KVM exposes through its `KVM_GET_*`
//! ioctls, read on the vCPU's own thread while it is paused (outside `KVM_RUN`), and written
//! back in the order KVM needs on a freshly created vCPU (Firecracker's order: CPUID, MP state,
//! registers, special registers, XSAVE, XCRs, debug registers, LAPIC, MSRs, pending events —
//! MSRs after the LAPIC because of the TSC deadline and APIC base, events last because setting
//! registers clears them).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Why a vCPU's state could not be read or written back.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A `KVM_GET_*` / `KVM_SET_*` ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// A CPUID or MSR table did not fit KVM's fixed-size array.
    #[error("{what}: {detail}")]
    Table { what: &'static str, detail: String },
    /// The host's KVM would not take a saved MSR.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs: this host's KVM refuses MSR {index:#x}")]
    MsrRefused {
        set: usize,
        wanted: usize,
        index: u32,
    },
    /// A save was asked while the vCPU ran.
    #[error("the vCPU is running; pause the microVM first")]
    Running,
}

/// Everything KVM holds about one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: Option<kvm_xsave>,
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    pub lapic: Option<kvm_lapic_state>,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

/// What the builder learned from /dev/kvm before seccomp closed it (the vCPU threads cannot
/// ask later).
#[derive(Debug, Clone, Default)]
pub struct SaveCaps {
    /// MSR indices KVM can save (`KVM_GET_MSR_INDEX_LIST`).
    pub msr_list: Vec<u32>,
    /// `KVM_GET_XSAVE` covers the whole XSAVE area (≤ 4 KiB; no AMX state).
    pub xsave: bool,
    pub xcrs: bool,
    pub irqchip: bool,
}

/// Reads a paused vCPU's state. `cpuid` is the table the VMM gave the vCPU (stored as is:
/// on PVM hosts KVM_GET_CPUID2 does not return what was set).
pub fn save(
    fd: &VcpuFd,
    index: u8,
    cpuid: &[kvm_cpuid_entry2],
    caps: &SaveCaps,
) -> Result<VcpuState, VcpuStateError> {
    let k = |what: &'static str| move |source| VcpuStateError::Kvm { what, source };
    let cpuid = cpuid.to_vec();
    // Before the other reads: KVM_GET_MP_STATE also flushes pending LAPIC events (as
    // KVM_GET_VCPU_EVENTS does).
    let mp_state = fd.get_mp_state().map_err(k("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(k("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(k("KVM_GET_SREGS"))?;
    let xsave = if caps.xsave {
        Some(fd.get_xsave().map_err(k("KVM_GET_XSAVE"))?)
    } else {
        None
    };
    let xcrs = if caps.xcrs {
        Some(fd.get_xcrs().map_err(k("KVM_GET_XCRS"))?)
    } else {
        None
    };
    let debugregs = fd.get_debug_regs().map_err(k("KVM_GET_DEBUGREGS"))?;
    let lapic = if caps.irqchip {
        Some(fd.get_lapic().map_err(k("KVM_GET_LAPIC"))?)
    } else {
        None
    };
    let msrs = read_msrs(fd, &caps.msr_list)?;
    let events = fd.get_vcpu_events().map_err(k("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        index,
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        events,
    })
}

/// A FAM-wrapper error (its `Debug` form, as the messages always had).
fn table(what: &'static str, e: &impl std::fmt::Debug) -> VcpuStateError {
    VcpuStateError::Table {
        what,
        detail: format!("{e:?}"),
    }
}

/// Reads every listed MSR KVM can read: `KVM_GET_MSRS` stops at the first one it cannot
/// (e.g. an MSR of a feature the guest's CPUID hides), which is skipped.
fn read_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(list.len());
    let mut i = 0;
    while i < list.len() {
        let chunk = &list[i..list.len().min(i + kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| table("MSR list", &e))?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                what: "KVM_GET_MSRS",
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        i += n;
        if n < chunk.len() {
            // Skip the one KVM could not read.
            i += 1;
        }
    }
    Ok(out)
}

/// Writes `s` into a freshly created vCPU.
pub fn restore(fd: &VcpuFd, s: &VcpuState) -> Result<(), VcpuStateError> {
    let k = |what: &'static str| move |source| VcpuStateError::Kvm { what, source };
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|e| table("CPUID table", &e))?;
    fd.set_cpuid2(&cpuid).map_err(k("KVM_SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state).map_err(k("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(k("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(k("KVM_SET_SREGS"))?;
    if let Some(x) = &s.xsave {
        // SAFETY: `kvm_xsave` is the 4 KiB legacy layout; the snapshot only carries one when
        // KVM_CAP_XSAVE2 said the host's XSAVE area fits in it (SaveCaps::xsave), so KVM reads
        // no further than the struct.
        unsafe { fd.set_xsave(x) }.map_err(k("KVM_SET_XSAVE"))?;
    }
    if let Some(x) = &s.xcrs {
        fd.set_xcrs(x).map_err(k("KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&s.debugregs)
        .map_err(k("KVM_SET_DEBUGREGS"))?;
    if let Some(l) = &s.lapic {
        fd.set_lapic(l).map_err(k("KVM_SET_LAPIC"))?;
    }
    let msrs = Msrs::from_entries(&s.msrs).map_err(|e| table("MSR table", &e))?;
    let n = fd.set_msrs(&msrs).map_err(k("KVM_SET_MSRS"))?;
    if n != s.msrs.len() {
        return Err(VcpuStateError::MsrRefused {
            set: n,
            wanted: s.msrs.len(),
            index: s.msrs[n].index,
        });
    }
    fd.set_vcpu_events(&s.events)
        .map_err(k("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
