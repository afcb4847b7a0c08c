//! Integer conversions whose range this crate proves once instead of at every `as`.
//!
//! kobako-vmm builds only for x86_64 (KVM x86 ioctls, x86 boot protocols, the seccomp arch),
//! so `usize` is 64 bits: asserted here at compile time, which makes `u64` → `usize` lossless.

const _: () = assert!(usize::BITS == 64, "kobako-vmm needs a 64-bit target");

/// `u64` → `usize`, lossless (see the module docs). Sizes a guest or an image file controls
/// are bounded by their callers before they are used as lengths; this only changes the type.
#[inline]
#[allow(
    clippy::cast_possible_truncation,
    reason = "usize is 64 bits: asserted at compile time above"
)]
pub const fn usize_from(v: u64) -> usize {
    v as usize
}

/// A byte count as `u32` (a virtio used-ring length, a vsock credit counter step): what a
/// device wrote or read, bounded by the one buffer involved (a frame, a packet, an id, a
/// request), far below 4 GiB. Saturates rather than wraps if a caller ever broke that bound.
#[inline]
pub fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `v` as `u16` where `u16::try_from` cannot be called (in a `const`): a compile-time error
/// there, a panic elsewhere, when it does not fit. No cast: the high bytes must be zero.
pub const fn u16_of(v: u32) -> u16 {
    let b = v.to_le_bytes();
    assert!(b[2] == 0 && b[3] == 0, "value does not fit in 16 bits");
    u16::from_le_bytes([b[0], b[1]])
}

/// `v` as `u32` where `u32::try_from` cannot be called (in a `const`); as [`u16_of`].
pub const fn u32_of(v: u64) -> u32 {
    let b = v.to_le_bytes();
    assert!(
        b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] == 0,
        "value does not fit in 32 bits"
    );
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn const_conversions_keep_values_that_fit_and_refuse_others() {
        assert_eq!(u16_of(0xffff), 0xffff);
        assert_eq!(u32_of(257), 257);
        assert_eq!(u32_of(u64::from(u32::MAX)), u32::MAX);
        assert!(std::panic::catch_unwind(|| u16_of(0x1_0000)).is_err());
        assert!(std::panic::catch_unwind(|| u32_of(1 << 32)).is_err());
    }
}
