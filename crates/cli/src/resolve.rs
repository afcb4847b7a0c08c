//! Turning user words (`--kernel default`, `--image tiny`, `--accel auto`) into files and choices,
//! building what is missing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use kobako_image::{kernel, tiny, StderrProgress};
use kobako_runtime::config::{KernelKind, Root};
use kobako_runtime::{host, Accel};

/// Resolve `--kernel`: `default` builds/uses the cached kernel; anything else is a path.
pub fn kernel(arg: &str) -> Result<(PathBuf, KernelKind)> {
    if arg == "default" {
        let a = match kernel::cached() {
            Some(a) => a,
            None => {
                eprintln!("kobako: the default guest kernel is not built yet; building it once (see `kobako image kernel`)");
                kernel::build(&StderrProgress, host::cpus() as usize)?
            }
        };
        return Ok((a.vmlinux, KernelKind::ElfPvh));
    }
    let k = kernel::inspect(Path::new(arg))?;
    let kind = match k.format {
        kernel::KernelFormat::ElfPvh => KernelKind::ElfPvh,
        kernel::KernelFormat::BzImage => KernelKind::BzImage,
        kernel::KernelFormat::Elf => bail!(
            "{arg}: an ELF without a PVH entry note cannot be booted directly; build the kernel with CONFIG_PVH=y or give its bzImage"
        ),
    };
    Ok((k.path, kind))
}

/// Which form of an image to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootKind {
    /// The whole root filesystem in RAM (fastest boot).
    Initramfs,
    /// A virtio-blk disk (writable ext4).
    Disk,
}

/// Resolve `--image`: `tiny` (built if missing), or a path to an initramfs (newc cpio), a raw
/// ext4 image or a qcow2 image.
pub fn image(arg: &str, root: RootKind) -> Result<Root> {
    if arg == "tiny" {
        let agent = tiny::find_agent()?;
        let img = match tiny::cached(&agent) {
            Some(i) => i,
            None => tiny::build(&agent, &StderrProgress)?,
        };
        return Ok(match root {
            RootKind::Initramfs => Root::Initramfs {
                path: img.initramfs,
            },
            RootKind::Disk => Root::Disk {
                path: img.ext4,
                format: "raw".into(),
                // The cached image is shared: boot it read-only (per-VM overlays come with the
                // image store).
                read_only: true,
            },
        });
    }
    let p = Path::new(arg);
    if !p.exists() {
        if arg.contains('/') || arg.contains('.') {
            bail!("image file {arg}: no such file");
        }
        bail!("unknown image '{arg}': known images are: tiny (or give the path of an initramfs, ext4 or qcow2 file)");
    }
    let head = read_head(p, 2048).with_context(|| format!("read {arg}"))?;
    if head.starts_with(b"070701") {
        return Ok(Root::Initramfs {
            path: p.to_path_buf(),
        });
    }
    if head.starts_with(b"QFI\xfb") {
        return Ok(Root::Disk {
            path: p.to_path_buf(),
            format: "qcow2".into(),
            read_only: false,
        });
    }
    if head.len() >= 1082 && head[1080..1082] == [0x53, 0xef] {
        return Ok(Root::Disk {
            path: p.to_path_buf(),
            format: "raw".into(),
            read_only: false,
        });
    }
    Err(anyhow!(
        "{arg}: not an image kobako can boot (expected an uncompressed newc cpio initramfs, an ext4 filesystem image or a qcow2 file)"
    ))
}

fn read_head(p: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
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

/// `--accel auto|kvm|tcg` (also `$KOBAKO_ACCEL`). Returns the choice and why.
pub fn accel(arg: &str) -> Result<(Accel, String)> {
    match arg {
        "auto" => {
            let c = host::detect_accel();
            Ok((c.accel, c.reason))
        }
        "kvm" => Ok((Accel::Kvm, "forced with --accel kvm".into())),
        "tcg" => Ok((Accel::Tcg, "forced with --accel tcg".into())),
        other => bail!("--accel {other}: use auto, kvm or tcg"),
    }
}
