//! A writer for "newc" cpio archives, the format the kernel unpacks as initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst). Uncompressed on purpose: under
//! emulation, decompressing a gzip initramfs costs more than reading the bigger file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Archive the tree under `root` (paths stored relative to it, parents before children, sorted so
/// the output is reproducible). Owners become root, timestamps zero.
pub fn write_tree(root: &Path, out: &mut impl Write) -> io::Result<()> {
    let mut entries = Vec::new();
    collect(root, root, &mut entries)?;
    entries.sort();
    for (ino, rel) in (1u32..).zip(entries) {
        let path = root.join(&rel);
        let md = fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        let data: Vec<u8> = if ft.is_symlink() {
            fs::read_link(&path)?
                .as_os_str()
                .as_encoded_bytes()
                .to_vec()
        } else if ft.is_file() {
            fs::read(&path)?
        } else {
            Vec::new()
        };
        let (rmaj, rmin) = if ft.is_char_device() || ft.is_block_device() {
            let r = md.rdev();
            (libc::major(r), libc::minor(r))
        } else {
            (0, 0)
        };
        entry(out, &rel, md.mode(), ino, rmaj, rmin, &data)?;
    }
    entry(out, "TRAILER!!!", 0, 0, 0, 0, &[])
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_string_lossy()
            .into_owned();
        out.push(rel);
        if e.file_type()?.is_dir() {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

fn pad4(out: &mut impl Write, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

fn entry(
    out: &mut impl Write,
    name: &str,
    mode: u32,
    ino: u32,
    rmaj: u32,
    rmin: u32,
    data: &[u8],
) -> io::Result<()> {
    let nlink = if mode & libc::S_IFMT == libc::S_IFDIR {
        2
    } else {
        1
    };
    let namesize = name.len() + 1;
    write!(
        out,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        size = data.len(),
        maj = 0,
        min = 0,
        check = 0,
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, 110 + namesize)?;
    out.write_all(data)?;
    pad4(out, data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_readable_by_cpio_tool() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/hello"), b"hello world\n").unwrap();
        std::os::unix::fs::symlink("hello", root.join("bin/hi")).unwrap();
        let mut buf = Vec::new();
        write_tree(&root, &mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        // Cross-check with GNU cpio when present (it is, on hosts that built an image).
        if Path::new("/usr/bin/cpio").exists() {
            let out_dir = d.path().join("out");
            fs::create_dir_all(&out_dir).unwrap();
            let mut child = std::process::Command::new("cpio")
                .args(["-idm", "--quiet"])
                .current_dir(&out_dir)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&buf).unwrap();
            assert!(child.wait().unwrap().success());
            assert_eq!(
                fs::read(out_dir.join("bin/hello")).unwrap(),
                b"hello world\n"
            );
            assert_eq!(
                fs::read_link(out_dir.join("bin/hi")).unwrap(),
                Path::new("hello")
            );
        }
    }
}
