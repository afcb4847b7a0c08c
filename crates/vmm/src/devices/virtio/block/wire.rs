//! virtio-blk's wire structures (virtio 1.2 §5.2.4, §5.2.6; Linux
//! `include/uapi/linux/virtio_blk.h`) as `#[repr(C)]` types read from and written to guest
//! memory whole. Fields are little-endian on the wire; kobako-vmm builds for x86_64 only, so
//! the `from_le`/`to_le` at the edges are no-ops that say what the bytes are.

use vm_memory::ByteValued;

/// `struct virtio_blk_outhdr`: the 16 bytes in front of every request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub type_: u32,
    pub reserved: u32,
    /// In 512-byte sectors, whatever the `blk_size`.
    pub sector: u64,
}

// SAFETY: plain integers, `#[repr(C)]` without padding (4 + 4 + 8 bytes, asserted below), so
// every byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`: one segment of a DISCARD or WRITE_ZEROES request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DiscardSegment {
    pub sector: u64,
    pub num_sectors: u32,
    /// Bit 0: unmap (WRITE_ZEROES only); the rest must be 0.
    pub flags: u32,
}

// SAFETY: plain integers, `#[repr(C)]` without padding (8 + 4 + 4 bytes, asserted below), so
// every byte pattern is a valid value.
unsafe impl ByteValued for DiscardSegment {}

/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` and its padding (60 bytes;
/// packed as the kernel's, since `capacity` is a `le64` at offset 0 of a 60-byte struct).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Config {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    /// `struct virtio_blk_geometry { le16 cylinders; u8 heads; u8 sectors; }`.
    pub geometry_cylinders: u16,
    pub geometry_heads: u8,
    pub geometry_sectors: u8,
    pub blk_size: u32,
    /// `struct virtio_blk_topology { u8 physical_block_exp; u8 alignment_offset;
    /// le16 min_io_size; le32 opt_io_size; }`.
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub unused0: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
    pub unused1: [u8; 3],
}

// SAFETY: plain integers and a byte array, `#[repr(C, packed)]` so there is no padding (60
// bytes, asserted below); every byte pattern is a valid value.
unsafe impl ByteValued for Config {}

const _: () = assert!(std::mem::size_of::<RequestHeader>() == 16);
const _: () = assert!(std::mem::size_of::<DiscardSegment>() == 16);
const _: () = assert!(std::mem::size_of::<Config>() == 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_sit_at_the_spec_offsets() {
        let c = Config {
            capacity: 0x0102_0304_0506_0708u64.to_le(),
            seg_max: 0x11u32.to_le(),
            blk_size: 0x22u32.to_le(),
            num_queues: 0x33u16.to_le(),
            max_discard_sectors: 0x44u32.to_le(),
            max_discard_seg: 0x55u32.to_le(),
            discard_sector_alignment: 0x66u32.to_le(),
            max_write_zeroes_sectors: 0x77u32.to_le(),
            max_write_zeroes_seg: 0x88u32.to_le(),
            write_zeroes_may_unmap: 0x99,
            ..Config::default()
        };
        let b = c.as_slice();
        assert_eq!(b[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        for (at, v) in [
            (12, 0x11),
            (20, 0x22),
            (36, 0x44),
            (40, 0x55),
            (44, 0x66),
            (48, 0x77),
            (52, 0x88),
        ] {
            assert_eq!(b[at..at + 4], u32::to_le_bytes(v), "offset {at}");
        }
        assert_eq!(b[34..36], 0x33u16.to_le_bytes());
        assert_eq!(b[56], 0x99);
    }

    #[test]
    fn request_and_segment_layouts() {
        let mut h = RequestHeader::default();
        h.as_mut_slice()
            .copy_from_slice(&[4, 0, 0, 0, 9, 9, 9, 9, 7, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(u32::from_le(h.type_), 4);
        assert_eq!(u64::from_le(h.sector), (1 << 56) | 7);
        let mut s = DiscardSegment::default();
        s.as_mut_slice()
            .copy_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            (
                u64::from_le(s.sector),
                u32::from_le(s.num_sectors),
                u32::from_le(s.flags)
            ),
            (3, 8, 1)
        );
    }
}
