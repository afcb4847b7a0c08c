//! `--image`: what a VM boots from, and the image-store queries that needs.
//!
//! - `tiny` (built if missing): the initramfs, or with [`RootKind::Disk`] a qcow2 overlay on
//!   the stored tiny ext4;
//! - a named recipe (`debian-web`, `debian-router`; [`recipes`]): its stored image, built first
//!   when missing or outdated, then as below;
//! - the name of a stored image (`kobako image ls`): a fresh qcow2 overlay on its read-only
//!   base, under the overlays directory, owned by the VM; plus a cloud-init NoCloud seed when
//!   the image has cloud-init (or `,cloud-init` / `,user-data=FILE` is given);
//! - a path to an initramfs (newc cpio), a raw ext4 image or a qcow2 image: booted as it is.

use std::path::{Path, PathBuf};

use kobako_image::store::{self, Image, ImageKind, Store, StoreError};
use kobako_image::{cloudinit, debian, disk, recipes, tiny, Progress};
use kobako_runtime::config::{Disk, Root};
use kobako_runtime::VmDir;

use crate::{BootError, RootKind};

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
#[derive(Debug)]
struct ImageSpec {
    image: String,
    cloud_init: bool,
    user_data: Option<PathBuf>,
}

fn parse_spec(arg: &str) -> Result<ImageSpec, BootError> {
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
            _ => {
                return Err(BootError::ImageOption {
                    arg: arg.into(),
                    option: p.into(),
                })
            }
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

/// The tiny image, built when missing.
fn tiny_image(progress: &dyn Progress) -> Result<tiny::TinyImage, BootError> {
    let agent = tiny::find_agent()?;
    Ok(match tiny::cached(&agent) {
        Some(i) => i,
        None => tiny::build(&agent, progress)?,
    })
}

/// Resolve `--image` `arg` for the VM `vm` (see the module doc). A bare name that exists as a
/// file is read as a path only when `names_only` is false.
pub fn resolve(
    arg: &str,
    root: RootKind,
    vm: &str,
    names_only: bool,
    progress: &dyn Progress,
) -> Result<VmImage, BootError> {
    let spec = parse_spec(arg)?;
    let arg = spec.image.as_str();
    if arg == "tiny" && root == RootKind::Initramfs {
        if spec.cloud_init {
            return Err(BootError::TinyHasNoCloudInit);
        }
        let img = tiny_image(progress)?;
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
            let t = tiny_image(progress)?;
            let s = Store::default();
            s.register_tiny(&t)?;
            s
        } else {
            self::store()
        };
        let img = if let Some(r) = recipes::find(arg) {
            // A named recipe: built once when missing, rebuilt when outdated.
            let agent = tiny::find_agent()?;
            recipes::ensure(&store, r, &agent, &users, progress).map_err(|source| {
                BootError::Recipe {
                    name: arg.into(),
                    source,
                }
            })?
        } else {
            match store.get(arg) {
                Ok(i) => i,
                Err(StoreError::NotFound { known, .. }) => {
                    return Err(BootError::UnknownImage {
                        name: arg.into(),
                        known,
                    })
                }
                Err(e) => return Err(e.into()),
            }
        };
        if agent_is_current(&img) == Some(false) {
            progress.step(&format!(
                "kobako: warning: image '{arg}' holds an older kobako-agent than this kobako; if the VM does not become ready, rebuild the image"
            ));
        }
        return stored(&img, vm, &spec, progress);
    }
    let p = Path::new(arg);
    if !p.exists() {
        return Err(BootError::NoSuchImageFile { path: arg.into() });
    }
    let mut out = VmImage::default();
    let sniff = disk::sniff(p).map_err(|source| BootError::ReadImage {
        path: arg.into(),
        source,
    })?;
    match sniff {
        disk::Sniff::Cpio => {
            out.root = Some(Root::Initramfs {
                path: p.to_path_buf(),
            })
        }
        disk::Sniff::Qcow2 => {
            // A damaged qcow2 fails here, with qemu-img's words, instead of inside QEMU.
            kobako_image::deps::ensure(disk::PACKAGES, progress)?;
            let info = disk::info(p, Some("qcow2")).map_err(|source| BootError::BadQcow2 {
                path: arg.into(),
                source,
            })?;
            // The format of a path is read from its first bytes at every boot: a guest that
            // wrote a qcow2 header naming a backing file into its raw disk would make the
            // next boot read that host file. A qcow2 path boots only without a backing file.
            if let Some(backing) = info.backing {
                return Err(BootError::Qcow2Backing {
                    path: arg.into(),
                    backing,
                });
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
        _ => return Err(BootError::NotBootable { path: arg.into() }),
    }
    if spec.cloud_init {
        let dir = fresh_vm_dir(vm)?;
        out.owned_paths.push(dir.clone());
        if let Err(e) = attach_seed(&mut out, &dir, vm, &spec, progress) {
            out.discard();
            return Err(e);
        }
    }
    Ok(out)
}

/// A new overlay directory for `vm`, refusing while a VM of that name runs (its overlay is
/// there).
fn fresh_vm_dir(vm: &str) -> Result<PathBuf, BootError> {
    let d = VmDir::for_name(vm);
    if d.exists() && (d.supervisor_pid().is_some() || d.vm_pid().is_some()) {
        return Err(BootError::VmExists { vm: vm.into() });
    }
    let dir = store::overlays_root().join(vm);
    let io = |what: String| move |source| BootError::Io { what, source };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(format!("remove stale {}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    Ok(dir)
}

fn stored(
    img: &Image,
    vm: &str,
    spec: &ImageSpec,
    progress: &dyn Progress,
) -> Result<VmImage, BootError> {
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
        if let Err(e) = attach_seed(&mut out, &dir, vm, spec, progress) {
            out.discard();
            return Err(e);
        }
    }
    Ok(out)
}

fn attach_seed(
    out: &mut VmImage,
    dir: &Path,
    vm: &str,
    spec: &ImageSpec,
    progress: &dyn Progress,
) -> Result<(), BootError> {
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
    cloudinit::write_seed(&seed, &path, progress)?;
    out.extra_disks.push(Disk {
        path,
        format: "raw".into(),
        read_only: true,
    });
    Ok(())
}

/// The image store, with the tiny image registered in it when it is built (so `image ls`
/// lists it and `--root disk` can overlay it).
pub fn store() -> Store {
    let s = Store::default();
    if let Ok(agent) = tiny::find_agent() {
        if let Some(t) = tiny::cached(&agent) {
            if let Err(e) = s.register_tiny(&t) {
                tracing::warn!("cannot register the tiny image in the store: {e}");
            }
        }
    }
    s
}

/// VMs (name, disk files) known to the runtime, for "in use" checks.
pub fn vm_disks() -> Vec<(String, Vec<PathBuf>)> {
    kobako_runtime::vmdir::list()
        .into_iter()
        .filter_map(|vm| {
            let cfg = vm.config().ok()?;
            let mut disks: Vec<PathBuf> = cfg.extra_disks.iter().map(|d| d.path.clone()).collect();
            if let Root::Disk { path, .. } = &cfg.root {
                disks.push(path.clone());
            }
            Some((vm.name, disks))
        })
        .collect()
}

/// VMs using an image: those the runtime knows (root and extra disks), and any overlay under the
/// overlays directory whose backing chain reaches the image (VMs of another `KOBAKO_RUN`).
pub fn users(img: &Image) -> Vec<String> {
    let mut vms = vm_disks();
    if let Ok(rd) = std::fs::read_dir(store::overlays_root()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !vms.iter().any(|(n, _)| *n == name) {
                vms.push((name, vec![e.path().join("root.qcow2")]));
            }
        }
    }
    let mut u = img.used_by(vms.iter().map(|(n, d)| (n.as_str(), d.clone())));
    u.sort();
    u
}

/// Does the image carry the agent this kobako would install (and, for Debian images, the current
/// recipe; for images of a named recipe, that recipe as it is now)? (None: unknown.)
pub fn agent_is_current(img: &Image) -> Option<bool> {
    if img.manifest.kind == ImageKind::Debian && img.manifest.recipe != Some(debian::RECIPE) {
        return Some(false);
    }
    if let (Some(d), Some(r)) = (
        &img.manifest.recipe_digest,
        recipes::find(&img.manifest.name),
    ) {
        if *d != r.digest() {
            return Some(false);
        }
    }
    let recorded = img.manifest.agent_sha256.as_ref()?;
    let agent = tiny::find_agent().ok()?;
    let now = disk::sha256_file(&agent).ok()?;
    Some(&now == recorded)
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
        let e = parse_spec("web,bogus").unwrap_err().to_string();
        assert!(e.contains("unknown option 'bogus'"), "{e}");
        assert!(parse_spec("web,user-data=").is_err());
    }
}
