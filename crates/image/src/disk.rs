//! Disk files: format sniffing, the qcow2 header (backing file), and the host tools kobako drives
//! to make and check images (`mkfs.ext4 -d`, `qemu-img convert|create|check|info`).
//!
//! Everything here is synchronous and runs on the caller's thread.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian packages the helpers need.
pub const PACKAGES: &[&str] = &["qemu-utils", "e2fsprogs"];

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let what = what.into();
    move |source| DiskError::Io { what, source }
}

/// Run a tool, capturing its output; a non-zero exit is an error carrying the tool's stderr.
pub fn run(cmd: &mut Command, tool: &str) -> Result<String, DiskError> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {tool}")))?;
    if !o.status.success() {
        let mut detail = String::from_utf8_lossy(&o.stderr).trim().to_string();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
        // Keep the last lines: they say what went wrong.
        let lines: Vec<&str> = detail.lines().collect();
        let detail = lines[lines.len().saturating_sub(8)..].join("\n");
        return Err(DiskError::Tool {
            tool: tool.to_string(),
            detail: format!("{detail} (exit {:?})", o.status.code()),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// What a file looks like from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    Qcow2,
    Ext4,
    /// newc cpio (an initramfs).
    Cpio,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
    /// POSIX/GNU tar (`ustar` at offset 257).
    Tar,
    Unknown,
}

/// First `n` bytes of a file (fewer if it is shorter).
pub fn read_head(p: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = f.read(&mut buf[got..])?;
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Classify bytes from the start of a file.
pub fn sniff_bytes(head: &[u8]) -> Sniff {
    if head.starts_with(b"QFI\xfb") {
        Sniff::Qcow2
    } else if head.starts_with(b"070701") {
        Sniff::Cpio
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Sniff::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Sniff::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Sniff::Zstd
    } else if head.starts_with(b"BZh") {
        Sniff::Bzip2
    } else if head.len() >= 1082 && head[1080..1082] == [0x53, 0xef] {
        // ext2/3/4 superblock magic at 1024 + 0x38.
        Sniff::Ext4
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Sniff::Tar
    } else {
        Sniff::Unknown
    }
}

/// Classify a file.
pub fn sniff(p: &Path) -> Result<Sniff, DiskError> {
    let head = read_head(p, 2048).map_err(io(format!("read {}", p.display())))?;
    Ok(sniff_bytes(&head))
}

/// The backing file named in a qcow2 header, if any (resolved against the file's directory when
/// relative). The header is big-endian: `backing_file_offset: u64` at 8, `backing_file_size: u32`
/// at 16 (QEMU docs/interop/qcow2.txt).
pub fn qcow2_backing(p: &Path) -> Option<PathBuf> {
    let head = read_head(p, 64 * 1024).ok()?;
    if !head.starts_with(b"QFI\xfb") || head.len() < 20 {
        return None;
    }
    let off = u64::from_be_bytes(head[8..16].try_into().ok()?) as usize;
    let len = u32::from_be_bytes(head[16..20].try_into().ok()?) as usize;
    if off == 0 || len == 0 {
        return None;
    }
    let name = head.get(off..off + len)?;
    let b = PathBuf::from(String::from_utf8_lossy(name).into_owned());
    Some(if b.is_absolute() {
        b
    } else {
        p.parent().unwrap_or(Path::new("/")).join(b)
    })
}

/// `mkfs.ext4 -d tree out size`: an ext4 filesystem populated from a directory (owners, modes,
/// hard links, device nodes and xattrs preserved), as a sparse raw file.
pub fn mkfs_ext4(tree: &Path, out: &Path, size_bytes: u64, label: &str) -> Result<(), DiskError> {
    let size_k = size_bytes.div_ceil(1024);
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d"])
            .arg(tree)
            .arg(out)
            .arg(format!("{size_k}k")),
        "mkfs.ext4",
    )?;
    Ok(())
}

/// `qemu-img convert` of a raw file into qcow2 (zero clusters are not stored).
pub fn raw_to_qcow2(raw: &Path, out: &Path) -> Result<(), DiskError> {
    run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(out),
        "qemu-img convert",
    )?;
    Ok(())
}

/// A qcow2 overlay on a base (`qemu-img create -f qcow2 -F FMT -b BASE OUT`); the base is only
/// read, every write of the VM lands in the overlay.
pub fn create_overlay(base: &Path, base_format: &str, out: &Path) -> Result<(), DiskError> {
    run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
            .arg(base)
            .arg(out),
        "qemu-img create",
    )?;
    Ok(())
}

/// Mark a base read-only (mode 0444): VMs write to overlays, never to it.
pub fn make_read_only(p: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444))
        .map_err(io(format!("chmod {}", p.display())))
}

/// `qemu-img check` (qcow2 consistency: leaks, corruptions).
pub fn check(p: &Path) -> Result<(), DiskError> {
    run(
        Command::new("qemu-img").args(["check", "-q"]).arg(p),
        "qemu-img check",
    )?;
    Ok(())
}

/// Facts `qemu-img info` reports.
#[derive(Debug, Clone)]
pub struct Info {
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: u64,
    /// The backing file named in the image's header, as written there (qcow2 overlays).
    pub backing: Option<String>,
}

/// `qemu-img info --output=json` of one file (no backing chain).
pub fn info(p: &Path, format: Option<&str>) -> Result<Info, DiskError> {
    let mut c = Command::new("qemu-img");
    c.args(["info", "--output=json"]);
    if let Some(f) = format {
        c.args(["-f", f]);
    }
    let out = run(c.arg(p), "qemu-img info")?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| DiskError::Tool {
        tool: "qemu-img info".into(),
        detail: format!("unexpected output: {e}"),
    })?;
    Ok(Info {
        format: v["format"].as_str().unwrap_or("").to_string(),
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
        actual_size: v["actual-size"].as_u64().unwrap_or(0),
        backing: v["backing-filename"].as_str().map(str::to_string),
    })
}

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(p: &Path) -> Result<String, DiskError> {
    use sha2::Digest;
    let mut f = std::fs::File::open(p).map_err(io(format!("open {}", p.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", p.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Bytes a path really occupies on disk (allocated blocks; a directory's whole tree).
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut n = m.blocks() * 512;
    if m.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                n += allocated(&e.path());
            }
        }
    }
    n
}

/// Bytes of the files in a tree (apparent sizes), to size a filesystem for it.
pub fn tree_bytes(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    // Round every file up to a 4 KiB block, count inodes too.
    let mut n = m.len().div_ceil(4096) * 4096 + 256;
    if m.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                n += tree_bytes(&e.path());
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff_bytes(b"QFI\xfb\0\0\0\x03"), Sniff::Qcow2);
        assert_eq!(sniff_bytes(b"070701000"), Sniff::Cpio);
        assert_eq!(sniff_bytes(&[0x1f, 0x8b, 8]), Sniff::Gzip);
        assert_eq!(sniff_bytes(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Sniff::Zstd);
        let mut ext = vec![0u8; 2048];
        ext[1080] = 0x53;
        ext[1081] = 0xef;
        assert_eq!(sniff_bytes(&ext), Sniff::Ext4);
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff_bytes(&tar), Sniff::Tar);
        assert_eq!(sniff_bytes(b"hello"), Sniff::Unknown);
    }

    #[test]
    fn qcow2_backing_of_an_overlay() {
        if !Path::new("/usr/bin/qemu-img").exists() {
            eprintln!("skipped: qemu-img not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let ov = d.path().join("ov.qcow2");
        create_overlay(&base, "raw", &ov).unwrap();
        assert_eq!(qcow2_backing(&ov).unwrap(), base);
        assert_eq!(sniff(&ov).unwrap(), Sniff::Qcow2);
        check(&ov).unwrap();
        let i = info(&ov, Some("qcow2")).unwrap();
        assert_eq!(i.virtual_size, 1 << 20);
        assert!(qcow2_backing(&base).is_none());
    }
}
