//! Turning user words (`--kernel default`, `--image tiny`, `--accel auto`) into files and choices,
//! building what is missing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use kobako_image::store::{self, Image, Store, StoreError};
use kobako_image::{cloudinit, disk, kernel, recipes, tiny, StderrProgress};
use kobako_runtime::config::{Disk, KernelKind, Root};
use kobako_runtime::{host, Accel, VmDir};

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

/// What an image contributes to a VM's config.
#[derive(Debug, Default)]
pub struct VmImage {
    pub root: Option<Root>,
    /// Created for this VM alone (its overlay directory): removed with the VM.
    pub owned_paths: Vec<PathBuf>,
    /// More disks after the root (the cloud-init seed).
    pub extra_disks: Vec<Disk>,
    /// Kernel parameters the image needs (e.g. `init=` of an imported tree without systemd).
    pub cmdline: String,
}

impl VmImage {
    /// Remove what was created for a VM that will not run after all.
    pub fn discard(&self) {
        discard(&self.owned_paths);
    }
}

/// Remove paths created for a VM (overlay directories).
pub fn discard(paths: &[PathBuf]) {
    // Best effort, path by path: this runs on an error path that already has an error to report.
    for p in paths {
        let _ = kobako_runtime::vmdir::remove_paths(std::slice::from_ref(p));
    }
}

/// `--image` options after the image: `NAME[,cloud-init][,user-data=FILE]`.
struct ImageSpec {
    image: String,
    cloud_init: bool,
    user_data: Option<PathBuf>,
}

fn parse_spec(arg: &str) -> Result<ImageSpec> {
    let mut parts = arg.split(',');
    let image = parts.next().unwrap_or_default().to_string();
    let mut s = ImageSpec {
        image,
        cloud_init: false,
        user_data: None,
    };
    for p in parts {
        match p.split_once('=') {
            None if p == "cloud-init" => s.cloud_init = true,
            Some(("user-data", f)) if !f.is_empty() => {
                s.cloud_init = true;
                s.user_data = Some(PathBuf::from(f));
            }
            _ => bail!("--image {arg}: unknown option '{p}' (options: cloud-init, user-data=FILE)"),
        }
    }
    Ok(s)
}

/// What to say about an image name that is neither stored (`known`: the stored names) nor a
/// recipe: `kobako up`, `kobako lab check` and `vm run` word it the same way.
pub fn unknown_image(name: &str, known: &str) -> String {
    format!(
        "unknown image '{name}' (stored: {known}; built on demand: {}): build it with `kobako image build debian --name {name} --packages ...` or `kobako image import FILE --name {name}`, use one of those, or give the path of an initramfs, ext4 or qcow2 file",
        recipes::names()
    )
}

/// Resolve `--image` for the VM `vm`:
/// - `tiny` (built if missing): the initramfs, or with `--root disk` a qcow2 overlay on the
///   stored tiny ext4;
/// - a named recipe (`debian-web`, `debian-router`; [`recipes`]): its stored image, built first
///   when missing or outdated, then as below;
/// - the name of a stored image (`kobako image ls`): a fresh qcow2 overlay on its read-only base,
///   under the overlays directory, owned by the VM; plus a cloud-init NoCloud seed when the image
///   has cloud-init (or `,cloud-init` / `,user-data=FILE` is given);
/// - a path to an initramfs (newc cpio), a raw ext4 image or a qcow2 image: booted as it is
///   (anything with a '/'; with `names_only` false also a bare name that exists as a file).
pub fn image(arg: &str, root: RootKind, vm: &str, names_only: bool) -> Result<VmImage> {
    let spec = parse_spec(arg)?;
    let arg = spec.image.as_str();
    if arg == "tiny" && root == RootKind::Initramfs {
        if spec.cloud_init {
            bail!("--image tiny: the tiny image has no cloud-init (use a Debian image with cloud-init)");
        }
        let agent = tiny::find_agent()?;
        let img = match tiny::cached(&agent) {
            Some(i) => i,
            None => tiny::build(&agent, &StderrProgress)?,
        };
        return Ok(VmImage {
            root: Some(Root::Initramfs {
                path: img.initramfs,
            }),
            ..Default::default()
        });
    }
    let looks_like_path = arg.contains('/') || (!names_only && Path::new(arg).exists());
    if !looks_like_path {
        let store = if arg == "tiny" {
            let agent = tiny::find_agent()?;
            let t = match tiny::cached(&agent) {
                Some(i) => i,
                None => tiny::build(&agent, &StderrProgress)?,
            };
            let s = Store::default();
            s.register_tiny(&t)?;
            s
        } else {
            crate::image_cmd::store()
        };
        let img = if let Some(r) = recipes::find(arg) {
            // A named recipe: built once when missing, rebuilt when outdated.
            let agent = tiny::find_agent()?;
            recipes::ensure(&store, r, &agent, &crate::image_cmd::users, &StderrProgress)
                .with_context(|| format!("building image '{arg}' from its recipe"))?
        } else {
            match store.get(arg) {
                Ok(i) => i,
                Err(StoreError::NotFound { known, .. }) => bail!("{}", unknown_image(arg, &known)),
                Err(e) => return Err(e.into()),
            }
        };
        if crate::image_cmd::agent_is_current(&img) == Some(false) {
            eprintln!(
                "kobako: warning: image '{arg}' holds an older kobako-agent than this kobako; if the VM does not become ready, rebuild the image"
            );
        }
        return stored(&img, vm, &spec);
    }
    let p = Path::new(arg);
    if !p.exists() {
        bail!("image file {arg}: no such file");
    }
    let mut out = VmImage::default();
    match disk::sniff(p).with_context(|| format!("read {arg}"))? {
        disk::Sniff::Cpio => {
            out.root = Some(Root::Initramfs {
                path: p.to_path_buf(),
            })
        }
        disk::Sniff::Qcow2 => {
            // A damaged qcow2 fails here, with qemu-img's words, instead of inside QEMU.
            kobako_image::deps::ensure(disk::PACKAGES, &StderrProgress)?;
            let info = disk::info(p, Some("qcow2"))
                .map_err(|e| anyhow!("{arg}: not a usable qcow2 image: {e}"))?;
            // The format of a path is read from its first bytes at every boot: a guest that
            // wrote a qcow2 header naming a backing file into its raw disk would make the
            // next boot read that host file. A qcow2 path boots only without a backing file.
            if let Some(b) = info.backing {
                bail!(
                    "{arg}: this qcow2 image names a backing file ({b}); kobako boots a qcow2 file given by path only when it stands alone: flatten it (`qemu-img convert -O qcow2 {arg} flat.qcow2`) or import it into the store (`kobako image import`)"
                );
            }
            out.root = Some(Root::Disk {
                path: p.to_path_buf(),
                format: "qcow2".into(),
                read_only: false,
            })
        }
        disk::Sniff::Ext4 => {
            out.root = Some(Root::Disk {
                path: p.to_path_buf(),
                format: "raw".into(),
                read_only: false,
            })
        }
        _ => bail!(
            "{arg}: not an image kobako can boot (expected an uncompressed newc cpio initramfs, an ext4 filesystem image or a qcow2 file; import root filesystem archives with `kobako image import`)"
        ),
    }
    if spec.cloud_init {
        let dir = fresh_vm_dir(vm)?;
        out.owned_paths.push(dir.clone());
        if let Err(e) = attach_seed(&mut out, &dir, vm, &spec) {
            out.discard();
            return Err(e);
        }
    }
    Ok(out)
}

/// A new overlay directory for `vm`, refusing while a VM of that name runs (its overlay is
/// there).
fn fresh_vm_dir(vm: &str) -> Result<PathBuf> {
    let d = VmDir::for_name(vm);
    if d.exists() && (d.supervisor_pid().is_some() || d.vm_pid().is_some()) {
        bail!("a VM named '{vm}' already exists: stop it with `kobako vm stop {vm}` or choose another --name");
    }
    let dir = store::overlays_root().join(vm);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove stale {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn stored(img: &Image, vm: &str, spec: &ImageSpec) -> Result<VmImage> {
    let dir = fresh_vm_dir(vm)?;
    let (dir, file) = store::create_overlay(img, vm).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    let mut out = VmImage {
        root: Some(Root::Disk {
            path: file,
            format: "qcow2".into(),
            read_only: false,
        }),
        owned_paths: vec![dir.clone()],
        extra_disks: Vec::new(),
        cmdline: img
            .manifest
            .init
            .as_ref()
            .map(|i| format!("init={i}"))
            .unwrap_or_default(),
    };
    if img.manifest.cloud_init || spec.cloud_init {
        if let Err(e) = attach_seed(&mut out, &dir, vm, spec) {
            out.discard();
            return Err(e);
        }
    }
    Ok(out)
}

fn attach_seed(out: &mut VmImage, dir: &Path, vm: &str, spec: &ImageSpec) -> Result<()> {
    let user_data = match &spec.user_data {
        Some(p) => Some(cloudinit::read_user_data(p)?),
        None => None,
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = cloudinit::SeedSpec {
        instance_id: format!("kobako-{vm}-{nanos:x}"),
        hostname: kobako_runtime::config::hostname_of(vm),
        user_data,
        nics: Vec::new(),
    };
    let path = dir.join("seed.iso");
    cloudinit::write_seed(&seed, &path, &StderrProgress)?;
    out.extra_disks.push(Disk {
        path,
        format: "raw".into(),
        read_only: true,
    });
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_options() {
        let s = parse_spec("web").unwrap();
        assert_eq!(s.image, "web");
        assert!(!s.cloud_init && s.user_data.is_none());
        let s = parse_spec("web,cloud-init").unwrap();
        assert!(s.cloud_init);
        let s = parse_spec("web,user-data=/tmp/u.yaml").unwrap();
        assert!(s.cloud_init);
        assert_eq!(s.user_data.unwrap(), PathBuf::from("/tmp/u.yaml"));
        let e = parse_spec("web,bogus").err().unwrap().to_string();
        assert!(e.contains("unknown option 'bogus'"), "{e}");
        assert!(parse_spec("web,user-data=").is_err());
    }
}
