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
//! max(end of RAM, 4 GiB) rounded up to 1 GiB: virtio-pmem regions (each backing file mapped
//!              whole, its own KVM memory slot; the next one at a 128 MiB boundary). Not in
//!              the e820 map: the guest's pmem driver finds them in the device's config space.
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

/// The first virtio-pmem region starts at a multiple of this (above RAM and the 32-bit gap).
pub const PMEM_FIRST_ALIGN: u64 = 1 << 30;
/// Later pmem regions start at a multiple of this (Linux hot-adds device memory in 128 MiB
/// sections on x86_64).
pub const PMEM_ALIGN: u64 = 128 << 20;

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

/// Guest-physical `(start, size)` of each virtio-pmem region of `sizes` bytes, in order: the
/// first at max(end of RAM, 4 GiB) rounded up to [`PMEM_FIRST_ALIGN`], each next one at the
/// previous end rounded up to [`PMEM_ALIGN`]. `None` when the sum overflows 64 bits (the
/// caller checks the end against the guest's physical address width).
pub fn pmem_regions(mem_bytes: u64, sizes: &[u64]) -> Option<Vec<(u64, u64)>> {
    let mut next = align_up(ram_end(mem_bytes).max(MMIO_GAP_END), PMEM_FIRST_ALIGN)?;
    let mut out = Vec::with_capacity(sizes.len());
    for &size in sizes {
        out.push((next, size));
        next = align_up(next.checked_add(size)?, PMEM_ALIGN)?;
    }
    Some(out)
}

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

    #[test]
    fn pmem_regions_sit_above_ram_and_the_gap() {
        const G: u64 = 1 << 30;
        const M: u64 = 1 << 20;
        // Small guest: at 4 GiB; the next one 128 MiB-aligned after the first.
        assert_eq!(
            pmem_regions(64 * M, &[2 * M, 130 * M, 2 * M]),
            Some(vec![
                (4 * G, 2 * M),
                (4 * G + 128 * M, 130 * M),
                (4 * G + 384 * M, 2 * M)
            ])
        );
        // RAM up to exactly 3 GiB still ends below the gap: 4 GiB.
        assert_eq!(pmem_regions(3 * G, &[2 * M]), Some(vec![(4 * G, 2 * M)]));
        // RAM above the gap: after its end, rounded up to 1 GiB.
        assert_eq!(pmem_regions(5 * G, &[2 * M]), Some(vec![(6 * G, 2 * M)]));
        assert_eq!(
            pmem_regions(5 * G + 2 * M, &[2 * M]),
            Some(vec![(7 * G, 2 * M)])
        );
        for (s, l) in pmem_regions(5 * G + 2 * M, &[2 * M, 4 * M]).unwrap() {
            for (rs, rl) in ram_ranges(5 * G + 2 * M) {
                assert!(s >= rs + rl || s + l <= rs, "overlaps RAM");
            }
            assert!(s >= MMIO_GAP_END);
        }
        assert_eq!(pmem_regions(64 * M, &[]), Some(vec![]));
        // Sizes a file could claim: overflow is None, never a wrap.
        assert_eq!(pmem_regions(64 * M, &[u64::MAX - 2 * M]), None);
        assert_eq!(
            pmem_regions(64 * M, &[1 << 62, 1 << 62, 1 << 62, 1 << 62]),
            None
        );
    }
}
