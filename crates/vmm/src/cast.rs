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
