//! Initial vCPU register state for the two x86_64 entry conventions kobako supports:
//! the PVH entry (32-bit protected mode, paging off, `%ebx` = `hvm_start_info`) and the Linux
//! 64-bit boot protocol (long mode, identity-mapped page tables, `%rsi` = zero page).
//!
//! Called by the builder on the event-loop thread while it creates each vCPU, before the vCPU's
//! own thread exists (KVM allows any thread to configure a vCPU that is not running). The
//! guest-memory writes (GDT, page tables) are done once per VM.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Failure to set up a vCPU's or the guest's initial CPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing {what} into guest memory")]
    GuestWrite {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM ioctl {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// The CPU mode in which a vCPU starts executing guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode, CS:IP = 0:entry (used by test guests).
    Real,
    /// 32-bit flat protected mode, paging off (PVH).
    Protected32,
    /// 64-bit long mode with the identity map (Linux 64-bit boot protocol).
    Long64,
}

/// Where and how vCPU 0 starts.
#[derive(Debug, Clone, Copy)]
pub struct EntryPoint {
    pub mode: EntryMode,
    pub addr: u64,
    /// `%rbx` for PVH (start_info), `%rsi` for Linux (zero page); ignored for real mode.
    pub boot_info: u64,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Builds a GDT entry from flags/base/limit the way the Intel SDM vol. 3 §3.4.5 lays it out.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            // 20 bits: 16 from bits 0..16, 4 from bits 48..52.
            #[allow(clippy::cast_possible_truncation, reason = "masked to 20 bits")]
            let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

fn gdt_for(mode: EntryMode) -> [u64; 4] {
    match mode {
        // 64-bit code (L=1), data, TSS.
        EntryMode::Long64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x808b, 0, 0xfffff),
        ],
        // 32-bit flat code (D=1) and data, TSS; what the PVH ABI requires
        // (xen/include/public/arch-x86/hvm/start_info.h: "CS: 32-bit read/execute, flat").
        EntryMode::Protected32 | EntryMode::Real => [
            0,
            gdt_entry(0xc09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
    }
}

/// Writes the identity-map page tables (2 MiB pages) covering `[0, map_end)`, rounded up to
/// whole GiB and capped at [`MAX_PDES`] GiB. Returns the number of GiB mapped.
pub fn write_page_tables(mem: &GuestMemoryMmap, map_end: u64) -> Result<u64, RegsError> {
    let w = |v: u64, a: u64, what| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|source| RegsError::GuestWrite { what, source })
    };
    let gibs = map_end.div_ceil(1 << 30).clamp(1, MAX_PDES);
    // PML4[0] -> PDPT, present + writable.
    w(PDPTE_START | 0x03, PML4_START, "PML4")?;
    for g in 0..gibs {
        let pd = PDE_START + g * 0x1000;
        w(pd | 0x03, PDPTE_START + g * 8, "PDPT")?;
        // The directory's 512 entries in one write (one guest-memory lookup, not 512: this runs
        // at every VM start): present + writable + page size (2 MiB).
        let mut dir = [0u8; 4096];
        for (i, e) in (0u64..).zip(dir.chunks_exact_mut(8)) {
            e.copy_from_slice(&(((g << 30) | (i << 21)) | 0x83).to_le_bytes());
        }
        mem.write_slice(&dir, GuestAddress(pd))
            .map_err(|source| RegsError::GuestWrite {
                what: "page directory",
                source,
            })?;
    }
    Ok(gibs)
}

/// Writes the GDT and an empty IDT for `mode` into guest memory.
pub fn write_gdt(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    for (i, e) in gdt_for(mode).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(|source| RegsError::GuestWrite {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|source| RegsError::GuestWrite {
            what: "IDT",
            source,
        })
}

/// Sets segment, control and general registers of a vCPU for `entry`. Only vCPU 0 gets the
/// entry point; application processors stay in the reset state waiting for INIT/SIPI.
pub fn setup_boot_regs(vcpu: &VcpuFd, entry: &EntryPoint) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.addr,
        ..Default::default()
    };
    match entry.mode {
        EntryMode::Real => {
            // Flat real mode: CS base 0 so that IP = entry address (< 64 KiB).
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
        }
        EntryMode::Protected32 | EntryMode::Long64 => {
            let gdt = gdt_for(entry.mode);
            let code = segment_from_gdt(gdt[1], 1);
            let data = segment_from_gdt(gdt[2], 2);
            let tss = segment_from_gdt(gdt[3], 3);
            sregs.gdt.base = GDT_ADDR;
            // A 4-entry table: limit 31.
            sregs.gdt.limit = u16::try_from(gdt.len() * 8 - 1).unwrap_or(u16::MAX);
            sregs.idt.base = IDT_ADDR;
            sregs.idt.limit = 7;
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = tss;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET;
            if entry.mode == EntryMode::Long64 {
                sregs.cr3 = PML4_START;
                sregs.cr4 |= X86_CR4_PAE;
                sregs.cr0 |= X86_CR0_PG;
                sregs.efer |= EFER_LME | EFER_LMA;
                regs.rsp = BOOT_STACK_POINTER;
                regs.rbp = BOOT_STACK_POINTER;
                regs.rsi = entry.boot_info;
            } else {
                sregs.cr0 &= !X86_CR0_PG;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rbx = entry.boot_info;
            }
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// x87/SSE state a kernel expects at entry (FCW and MXCSR defaults from the SDM).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

// MSR numbers: Intel SDM vol. 4, and arch/x86/include/asm/msr-index.h.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled (bit 11), default type write-back (6).
const MTRR_DEF_WB_ENABLED: u64 = (1 << 11) | 6;

/// The boot MSR values: syscall MSRs cleared, fast strings on, memory write-back by default.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_WB_ENABLED),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets the boot MSRs. `strict` fails when KVM accepts fewer than all of them; PVM rejects
/// some (it does not emulate the MTRRs), so the builder passes `strict = false` there and logs.
pub fn setup_msrs(vcpu: &VcpuFd, strict: bool) -> Result<usize, RegsError> {
    let entries = boot_msr_entries();
    let wanted = entries.len();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs { set: 0, wanted })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if strict && set != wanted {
        return Err(RegsError::Msrs { set, wanted });
    }
    Ok(set)
}

// LAPIC register offsets and delivery modes (SDM vol. 3 §10.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_bindings::kvm_lapic_state, off: usize) -> u32 {
    let b = &state.regs[off..off + 4];
    // The registers are `c_char` bytes: reinterpret each as unsigned.
    u32::from_le_bytes([b[0], b[1], b[2], b[3]].map(|c| c.to_ne_bytes()[0]))
}

fn set_lapic_reg(state: &mut kvm_bindings::kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = *byte as _;
    }
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a BIOS would (MP spec §5.1 virtual
/// wire mode), so a kernel without an IOAPIC driver still gets the timer.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut state = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let lvt0 = lapic_reg(&state, APIC_LVT0);
    set_lapic_reg(
        &mut state,
        APIC_LVT0,
        (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8),
    );
    let lvt1 = lapic_reg(&state, APIC_LVT1);
    set_lapic_reg(
        &mut state,
        APIC_LVT1,
        (lvt1 & !0x700) | (APIC_MODE_NMI << 8),
    );
    vcpu.set_lapic(&state).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.g, code.present), (1, 0, 1, 1));
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.selector, 8);
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db, code32.type_), (0, 1, 0xb));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_each_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let gibs = write_page_tables(&mem, (2 << 30) + 1).unwrap();
        assert_eq!(gibs, 3);
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 0x1000 + 8)).unwrap();
        assert_eq!(pde, (1 << 30) | (1 << 21) | 0x83);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START + 16)).unwrap();
        assert_eq!(pdpte, (PDE_START + 0x2000) | 3);
    }
}
