//! kobako-image: everything a guest boots from, built on this host and cached.
//!
//! - [`cache`]: where artifacts live (`/var/cache/kobako`, or `$KOBAKO_CACHE`) and file locks so two
//!   processes never build the same thing at once.
//! - [`deps`]: installs the Debian packages a step needs (idempotent; `apt-get` only when missing).
//! - [`kernel`]: the minimal microVM kernel from Debian's `linux-source` with the repo's config
//!   fragment, keyed by the fragment's hash; or any kernel given by path.
//! - [`tiny`]: the busybox + kobako-agent root filesystem, as an uncompressed initramfs and ext4.
//! - [`cpio`]: the newc archive writer used for initramfs images.

pub mod cache;
pub mod cpio;
pub mod deps;
pub mod kernel;
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
