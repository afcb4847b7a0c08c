//! kobako-image: everything a guest boots from, built on this host and cached.
//!
//! - [`cache`]: where artifacts live (`/var/cache/kobako`, or `$KOBAKO_CACHE`) and file locks so two
//!   processes never build the same thing at once.
//! - [`deps`]: installs the Debian packages a step needs (idempotent; `apt-get` only when missing).
//! - [`kernel`]: the minimal microVM kernel from Debian's `linux-source` with the repo's config
//!   fragment, keyed by the fragment's hash; or any kernel given by path.
//! - [`tiny`]: the busybox + kobako-agent root filesystem, as an uncompressed initramfs and ext4.
//! - [`cpio`]: the newc archive writer used for initramfs images.
//! - [`store`]: the image store (`/var/lib/kobako/images`): named read-only bases with manifests,
//!   and the per-VM qcow2 overlays on them.
//! - [`debian`]: Debian images built with mmdebstrap; [`import`]: rootfs tarballs and OCI image
//!   layouts, both through [`base`] (staging, agent, tree → ext4 → read-only qcow2 base,
//!   manifest); [`cloudinit`]: NoCloud seed disks; [`disk`]: qemu-img / mkfs helpers.
//! - [`recipes`]: named images kobako builds on demand (`debian-web`, `debian-router`: the node
//!   templates' images).

pub mod base;
pub mod cache;
pub mod cloudinit;
pub mod cpio;
pub mod debian;
pub mod deps;
pub mod disk;
pub mod import;
pub mod inroot;
pub mod kernel;
pub mod recipes;
pub mod store;
pub mod tiny;

/// Progress lines for long steps. The CLI prints them; tests collect them.
pub trait Progress: Send + Sync {
    fn step(&self, msg: &str);
}

/// Prints progress to stderr.
pub struct StderrProgress;

impl Progress for StderrProgress {
    fn step(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

/// Hex SHA-256 of some byte slices, in order.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}
