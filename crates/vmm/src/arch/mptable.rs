//! The Intel MultiProcessor Specification 1.4 table that tells a kernel without ACPI how many
//! CPUs there are, where the IOAPIC is, and how ISA IRQs are routed.
//!
//! Written once into guest memory at [`EBDA_START`] by the builder (event-loop thread), before
//! any vCPU runs. Layout and field meanings: MP spec 1.4 chapter 4; Linux reads it in
//! arch/x86/kernel/mpparse.c.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, MAX_VCPUS};

/// Failure to write the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in the MP table (1..={MAX_VCPUS})")]
    VcpuCount(u8),
    #[error("the MP table address {0:#x} is not below 4 GiB")]
    Address(u64),
    #[error("writing the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Highest legacy IRQ routed through the IOAPIC (24 pins).
const IRQ_MAX: u8 = 23;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the MP floating pointer followed by the configuration table, as bytes to be written
/// at `base`.
pub fn build(base: u64, vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(vcpus));
    }
    let table_addr = base + 16;
    let ioapic_id = vcpus;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        entries.extend_from_slice(&[
            0,
            cpu,
            APIC_VERSION,
            CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 },
        ]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU | APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT, LINT1 = NMI, to all local APICs (0xff).
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    // One entry per vCPU (at most 32) plus a fixed few: far below 64 KiB.
    let table_len = u16::try_from(44 + entries.len()).unwrap_or(u16::MAX);
    header.extend_from_slice(&table_len.to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"KOBAKO  ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    let table_addr32 = u32::try_from(table_addr).map_err(|_| MpTableError::Address(table_addr))?;
    fp.extend_from_slice(&table_addr32.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table for `vcpus` CPUs at the EBDA.
pub fn setup(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MpTableError> {
    let bytes = build(EBDA_START, vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_and_counts() {
        let t = build(EBDA_START, 3).unwrap();
        let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(ptr, EBDA_START + 16);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        // BSP flag only on CPU 0.
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BSP);
        assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
        // Fits below the legacy video hole.
        assert!(EBDA_START + t.len() as u64 <= 0xa_0000);
        assert!(build(EBDA_START, 0).is_err());
        assert!(build(EBDA_START, 33).is_err());
    }
}
