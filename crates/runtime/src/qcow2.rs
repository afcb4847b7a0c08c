//! qcow2 headers: the backing file an image names (kobako's overlays sit on store images and
//! warm snapshots), for the runtime (what a jailed VM must see) and the lab (warm clones).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The backing files of a qcow2 image, nearest first (at most 16; relative names resolve
/// against the image's directory).
pub fn backing_chain(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = path.to_path_buf();
    while out.len() < 16 {
        match backing(&cur) {
            Some(b) => {
                out.push(b.clone());
                cur = b;
            }
            None => break,
        }
    }
    out
}

/// The backing file named in a qcow2 header: `backing_file_offset: u64` at 8 and
/// `backing_file_size: u32` at 16, big-endian (QEMU docs/interop/qcow2.txt).
pub fn backing(p: &Path) -> Option<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p).ok()?;
    let mut h = [0u8; 20];
    f.read_exact(&mut h).ok()?;
    if &h[0..4] != b"QFI\xfb" {
        return None;
    }
    let off = u64::from_be_bytes(h[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(h[16..20].try_into().ok()?) as usize;
    if off == 0 || len == 0 || len > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(off)).ok()?;
    let mut name = vec![0u8; len];
    f.read_exact(&mut name).ok()?;
    let b = PathBuf::from(std::ffi::OsStr::from_bytes(&name));
    Some(if b.is_absolute() {
        b
    } else {
        p.parent().unwrap_or(Path::new("/")).join(b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_backing_names_are_read_and_resolved_against_the_image() {
        let d = std::env::temp_dir().join(format!("kobako-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[8..16].copy_from_slice(&200u64.to_be_bytes());
        h[16..20].copy_from_slice(&8u32.to_be_bytes());
        h[200..208].copy_from_slice(b"base.img");
        std::fs::write(d.join("top.qcow2"), &h).unwrap();
        std::fs::write(d.join("base.img"), b"raw").unwrap();
        assert_eq!(
            backing_chain(&d.join("top.qcow2")),
            vec![d.join("base.img")]
        );
        assert!(backing_chain(&d.join("base.img")).is_empty());
        // A self-referencing chain stops.
        h[200..208].copy_from_slice(b"top.qcow");
        h[16..20].copy_from_slice(&9u32.to_be_bytes());
        h[208] = b'2';
        std::fs::write(d.join("top.qcow2"), &h).unwrap();
        assert_eq!(backing_chain(&d.join("top.qcow2")).len(), 16);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
