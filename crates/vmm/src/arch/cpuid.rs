//! The CPUID template: what a kobako guest sees when it executes CPUID.
//!
//! Applied by the builder (event-loop thread) to each vCPU it creates. The template starts from
//! what KVM says it can virtualise (`KVM_GET_SUPPORTED_CPUID`) and normalises it, so that a
//! guest sees the same machine whatever host it lands on:
//!
//! | leaf | change | why |
//! |---|---|---|
//! | 0x1 | EBX[31:24] = vCPU index (initial APIC ID), EBX[23:16] = vCPU count, EBX[15:8] = 8 (64-byte CLFLUSH), EDX.HTT when > 1 vCPU | topology must match the MP table; the host's values describe host threads |
//! | 0x1 | ECX.HYPERVISOR set | guests must know they are virtualised (kvm-clock, paravirt ops) |
//! | 0x1 | ECX.CX16 cleared **on PVM hosts** | kvm_pvm's instruction emulator cannot run `cmpxchg16b` (SLUB's fast path); see shared/reference/pvm-guest-notes.md. Without CX16 Linux falls back to a lock-based path |
//! | 0x4 | EAX[31:26] = vCPU count - 1, EAX[25:14] = 0 | cores per package as we expose them, one thread per core |
//! | 0x6 | EAX = ARAT only, rest zeroed | thermal and power management are not virtualised; ARAT (the LAPIC timer keeps running in deep C-states) is what KVM's LAPIC timer does, and without it Linux keeps the PIT as its tick (`apic_needs_pit()`), which on PVM costs more emulated work than the 4 ms tick period (the boot starves) |
//! | 0xa | zeroed | no virtual PMU is promised |
//! | 0xb | rebuilt: level 0 = SMT (1 thread), level 1 = core (vCPU count), EDX = x2APIC ID | same topology as leaf 1 |
//!
//! Measured on kvm_pvm (these hosts): KVM keeps its own table there, `KVM_GET_CPUID2` answers the
//! host's values whatever `KVM_SET_CPUID2` was given and the guest reads those, so this template
//! (and a custom one, [`super::cpu_template`]) takes effect on VT-x/AMD-V hosts only.
//!
//! Everything else passes through as KVM reports it. Hiding XSAVE, POPCNT or SMAP here has no
//! effect under PVM (measured), so a PVM guest drops those with `noxsave clearcpuid=popcnt,smap`.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Inputs to the template for one vCPU.
#[derive(Debug, Clone, Copy)]
pub struct CpuidParams {
    pub vcpu_index: u8,
    pub vcpu_count: u8,
    /// Apply the PVM-specific hides (see the module table).
    pub pvm: bool,
}

const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 EAX bit 2: Always Running APIC Timer.
const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// True when /dev/kvm is the PVM module (`kvm_pvm`).
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

fn normalise_entry(e: &mut kvm_cpuid_entry2, p: &CpuidParams) {
    let count = u32::from(p.vcpu_count.max(1));
    match e.function {
        0x1 => {
            e.ebx = (u32::from(p.vcpu_index) << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            if p.pvm {
                e.ecx &= !LEAF1_ECX_CX16;
            }
            if count > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            e.eax = (e.eax & 0x3fff) | ((count - 1) << 26);
        }
        0x6 => {
            e.eax = LEAF6_EAX_ARAT;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xa => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xb => {
            let shift = 32 - (count - 1).leading_zeros();
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = shift;
                    e.ebx = count;
                    e.ecx = 1 | (2 << 8);
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            e.edx = u32::from(p.vcpu_index);
        }
        _ => {}
    }
}

/// Applies the template to a copy of KVM's supported CPUID.
pub fn normalise(supported: &CpuId, p: &CpuidParams) -> CpuId {
    let mut out = supported.clone();
    for e in out.as_mut_slice() {
        normalise_entry(e, p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_topology_and_pvm_hides_cx16() {
        let cpuid = CpuId::from_entries(&[entry(1, 0), entry(6, 0), entry(0xb, 1)]).unwrap();
        let p = CpuidParams {
            vcpu_index: 2,
            vcpu_count: 4,
            pvm: true,
        };
        let out = normalise(&cpuid, &p);
        let l1 = out.as_slice()[0];
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ecx & LEAF1_ECX_CX16, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(out.as_slice()[1].eax, LEAF6_EAX_ARAT);
        assert_eq!(out.as_slice()[1].ecx, 0);
        let lb = out.as_slice()[2];
        assert_eq!((lb.eax, lb.ebx, lb.edx), (2, 4, 2));
        let not_pvm = normalise(&cpuid, &CpuidParams { pvm: false, ..p });
        assert_ne!(not_pvm.as_slice()[0].ecx & LEAF1_ECX_CX16, 0);
    }
}
