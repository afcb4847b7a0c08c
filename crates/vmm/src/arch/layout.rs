//! Guest physical memory layout of an x86_64 kobako microVM (constants only).
//!
//! Owned by nobody at run time: the builder (event-loop thread, before the guest runs) writes
//! the boot structures at these addresses. The layout follows Firecracker's so that kernels and
//! tools that expect a Firecracker-like machine find the same things in the same places.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info         0x0000_6040  PVH module list (initrd)
//! 0x0000_7000  Linux zero page / PVH e820 0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  PML4                       0x0000_a000  PDPT
//! 0x0000_b000  page directories (1 page per GiB mapped, up to 21 GiB)
//! 0x0002_0000  kernel command line (2 KiB, x86 COMMAND_LINE_SIZE)
//! 0x0009_fc00  EBDA: MP floating pointer + MP config table
//! 0x0010_0000  kernel (HIMEM_START)        ... RAM up to 3 GiB ...
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio devices from 0xd000_0000, IOAPIC 0xfec0_0000,
//!              LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB (when mem_size_mib > 3072)
//! ```

/// Global descriptor table.
pub const GDT_ADDR: u64 = 0x500;
/// Interrupt descriptor table (left empty: the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` (see xen/include/public/arch-x86/hvm/start_info.h).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map; shares the page with the Linux zero page (the two protocols are exclusive).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First page directory; each maps 1 GiB with 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
/// Number of page directories that fit below the command line: the identity map covers
/// min(guest memory end, this many GiB).
pub const MAX_PDES: u64 = (CMDLINE_START - PDE_START) / 0x1000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// x86 `COMMAND_LINE_SIZE` (arch/x86/include/uapi/asm/setup.h... 2048 since v3.x).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: where the MP table lives; RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the kernel is loaded and RAM above the legacy hole starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO gap.
pub const MMIO_GAP_SIZE: u64 = 0x4000_0000;
/// First address past the gap (RAM continues here).
pub const MMIO_GAP_END: u64 = MMIO_GAP_START + MMIO_GAP_SIZE;
/// Where virtio-mmio devices will be placed (issue: devices).
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// IOAPIC base (fixed by the in-kernel irqchip).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// LAPIC base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// TSS address for KVM_SET_TSS_ADDR (3 pages just below the IOAPIC... inside the gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Highest vCPU count accepted (Firecracker's limit, also what the MP table is sized for).
pub const MAX_VCPUS: u8 = 32;

/// Guest RAM as (start, size) ranges for `mem_bytes` of memory, split around the MMIO gap.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// One past the highest guest-physical RAM address.
pub fn ram_end(mem_bytes: u64) -> u64 {
    ram_ranges(mem_bytes)
        .last()
        .map(|(s, l)| s + l)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_around_gap() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(ram_ranges(5 << 30), vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
        assert_eq!(ram_end(5 << 30), 6 << 30);
        assert_eq!(MAX_PDES, 0x15);
    }
}
