//! kobako-boot: what a VM boots.
//!
//! A user names a kernel (`default` or a path), an image (`tiny`, a stored image, a recipe
//! such as `debian-web`, or a file) and an accelerator (`auto`, `kvm`, `tcg`); a lab file names
//! the same for each of its VMs. This crate turns those words into a validated
//! [`VmConfig`], building what is missing (the default kernel, the tiny image, a recipe's
//! image) and creating what belongs to the VM alone (its qcow2 overlay, a cloud-init seed).
//!
//! It is the one place both callers go through: `kobako vm run` / `fn` / `bench` (the CLI
//! parses its flags into a [`BootSpec`]) and the lab controller (a lab VM becomes a
//! [`BootSpec`]), so the data path runs one way, lab file → resolved model → boot spec →
//! runtime config → runtime, and the binary hands no resolution closure to the libraries.
//!
//! - [`kernel`], `--kernel`.
//! - [`image`], `--image`, and the store queries it needs ([`image::store`], [`image::users`],
//!   [`image::agent_is_current`]).
//! - [`vm_config`], the whole spec, cheap checks first.

pub mod image;
pub mod kernel;

use kobako_image::Progress;
use kobako_runtime::config::{KernelKind, Root, VmConfig};
use kobako_runtime::{host, Accel, RuntimeError};

pub use image::{discard, unknown_image, VmImage};

/// Why a VM's kernel, image or settings could not become a bootable config. Each message names
/// the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel could not be built or inspected.
    #[error(transparent)]
    Kernel(#[from] kobako_image::kernel::KernelError),
    /// A kernel ELF without the PVH entry note.
    #[error("{path}: an ELF without a PVH entry note cannot be booted directly; build the kernel with CONFIG_PVH=y or give its bzImage")]
    KernelNotPvh { path: String },
    /// The tiny image (or the agent it carries) could not be found or built.
    #[error(transparent)]
    Tiny(#[from] kobako_image::tiny::TinyError),
    /// An unknown `,option` after the image name.
    #[error("--image {arg}: unknown option '{option}' (options: cloud-init, user-data=FILE)")]
    ImageOption { arg: String, option: String },
    /// `tiny,cloud-init`.
    #[error("--image tiny: the tiny image has no cloud-init (use a Debian image with cloud-init)")]
    TinyHasNoCloudInit,
    /// Neither a stored image nor a recipe.
    #[error("{}", image::unknown_image(name, known))]
    UnknownImage { name: String, known: String },
    /// A recipe's image could not be built.
    #[error("building image '{name}' from its recipe: {source}")]
    Recipe {
        name: String,
        source: kobako_image::debian::DebianError,
    },
    /// The image store failed (read, overlay creation).
    #[error(transparent)]
    Store(#[from] kobako_image::store::StoreError),
    /// An image path that does not exist.
    #[error("image file {path}: no such file")]
    NoSuchImageFile { path: String },
    /// An image path that could not be read.
    #[error("read {path}: {source}")]
    ReadImage {
        path: String,
        source: kobako_image::disk::DiskError,
    },
    /// A host package the image check needs could not be installed.
    #[error(transparent)]
    Deps(#[from] kobako_image::deps::DepsError),
    /// A qcow2 file `qemu-img` does not accept.
    #[error("{path}: not a usable qcow2 image: {source}")]
    BadQcow2 {
        path: String,
        source: kobako_image::disk::DiskError,
    },
    /// A qcow2 path with a backing file (it could make the VM read any host file).
    #[error("{path}: this qcow2 image names a backing file ({backing}); kobako boots a qcow2 file given by path only when it stands alone: flatten it (`qemu-img convert -O qcow2 {path} flat.qcow2`) or import it into the store (`kobako image import`)")]
    Qcow2Backing { path: String, backing: String },
    /// A file that is none of the bootable formats.
    #[error("{path}: not an image kobako can boot (expected an uncompressed newc cpio initramfs, an ext4 filesystem image or a qcow2 file; import root filesystem archives with `kobako image import`)")]
    NotBootable { path: String },
    /// A VM of that name runs (its overlay directory is in use).
    #[error("a VM named '{vm}' already exists: stop it with `kobako vm stop {vm}` or choose another --name")]
    VmExists { vm: String },
    /// Creating or removing the VM's overlay directory failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The cloud-init seed could not be written (or its user-data read).
    #[error(transparent)]
    Seed(#[from] kobako_image::cloudinit::SeedError),
    /// The resulting config is not one the runtime accepts (sizes, names, files).
    #[error(transparent)]
    Invalid(#[from] RuntimeError),
}

/// Which form of an image to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RootKind {
    /// The whole root filesystem in RAM (fastest boot).
    #[default]
    Initramfs,
    /// A virtio-blk disk (writable ext4).
    Disk,
}

/// The CPU accelerator asked for: `auto` (KVM where the host runs standard guests, else TCG),
/// `kvm` or `tcg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelMode {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// An accelerator word that is none of auto, kvm, tcg.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}': use auto, kvm or tcg")]
pub struct UnknownAccel(pub String);

impl std::str::FromStr for AccelMode {
    type Err = UnknownAccel;
    fn from_str(s: &str) -> Result<AccelMode, UnknownAccel> {
        match s {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            other => Err(UnknownAccel(other.into())),
        }
    }
}

impl std::fmt::Display for AccelMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccelMode::Auto => "auto",
            AccelMode::Kvm => "kvm",
            AccelMode::Tcg => "tcg",
        })
    }
}

impl AccelMode {
    /// The accelerator this mode gives on this host, and why.
    pub fn choose(self) -> (Accel, String) {
        match self {
            AccelMode::Auto => {
                let c = host::detect_accel();
                (c.accel, c.reason)
            }
            AccelMode::Kvm => (Accel::Kvm, "forced with --accel kvm".into()),
            AccelMode::Tcg => (Accel::Tcg, "forced with --accel tcg".into()),
        }
    }
}

/// What to boot, in the words a user or a lab file gives.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The VM's name (its overlay directory and cloud-init hostname follow it).
    pub name: String,
    /// `default` or a path ([`kernel::resolve`]).
    pub kernel: String,
    /// `tiny`, a stored image or recipe, or a path, with `,options` ([`image::resolve`]).
    pub image: String,
    pub root: RootKind,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Kernel parameters after the image's own.
    pub cmdline: String,
    pub accel: AccelMode,
    /// Seconds the runtime waits for the agent.
    pub ready_timeout_secs: u64,
    /// `image` is read as a path only when it has a '/' (lab files and functions: a bare name
    /// is always a store name, never a file that happens to exist in the working directory).
    pub names_only: bool,
}

/// A validated runtime config for `spec` (kernel and image built when missing), and why the
/// accelerator was chosen. Sizes and the name are checked before anything is built; what was
/// created for the VM (overlay, seed) is removed again when the final check fails. The config
/// has no NICs, namespace, cgroups or shares: the caller adds what its VM needs.
pub fn vm_config(
    spec: &BootSpec,
    progress: &dyn Progress,
) -> Result<(VmConfig, String), BootError> {
    let (accel, why) = spec.accel.choose();
    // Check cheap things before building anything.
    let probe = VmConfig {
        name: spec.name.clone(),
        kernel: "/".into(),
        kernel_kind: KernelKind::ElfPvh,
        root: Root::Initramfs { path: "/".into() },
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        extra_cmdline: String::new(),
        accel,
        ready_timeout_secs: spec.ready_timeout_secs,
        owned_paths: Vec::new(),
        extra_disks: Vec::new(),
        nics: Vec::new(),
        netns: None,
        incoming: None,
        cgroups: Vec::new(),
        memory_file: None,
        named_ram: false,
        free_page_reporting: false,
        shares: Vec::new(),
    };
    // The probe's files are placeholders: only a missing file is expected here.
    match probe.validate() {
        Ok(()) | Err(RuntimeError::NoSuchFile { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let (kernel, kernel_kind) = kernel::resolve(&spec.kernel, progress)?;
    let img = image::resolve(
        &spec.image,
        spec.root,
        &spec.name,
        spec.names_only,
        progress,
    )?;
    let cfg = VmConfig {
        kernel,
        kernel_kind,
        root: img.root.clone().unwrap_or(probe.root.clone()),
        extra_cmdline: format!("{} {}", img.cmdline, spec.cmdline)
            .trim()
            .to_string(),
        owned_paths: img.owned_paths.clone(),
        extra_disks: img.extra_disks.clone(),
        ..probe
    };
    if let Err(e) = cfg.validate() {
        img.discard();
        return Err(e.into());
    }
    Ok((cfg, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_words() {
        assert_eq!("auto".parse::<AccelMode>(), Ok(AccelMode::Auto));
        assert_eq!("kvm".parse::<AccelMode>(), Ok(AccelMode::Kvm));
        assert_eq!("tcg".parse::<AccelMode>(), Ok(AccelMode::Tcg));
        let e = "hvf".parse::<AccelMode>().unwrap_err().to_string();
        assert!(e.contains("use auto, kvm or tcg"), "{e}");
        assert_eq!(AccelMode::Tcg.to_string(), "tcg");
        assert_eq!(AccelMode::Kvm.choose().0, Accel::Kvm);
    }

    #[test]
    fn bad_sizes_are_refused_before_anything_is_built() {
        let spec = BootSpec {
            name: "t".into(),
            // Would be built if the sizes were checked after.
            kernel: "default".into(),
            image: "no-such-image-anywhere".into(),
            root: RootKind::Initramfs,
            vcpus: 0,
            memory_mib: 128,
            cmdline: String::new(),
            accel: AccelMode::Tcg,
            ready_timeout_secs: 1,
            names_only: true,
        };
        let e = vm_config(&spec, &kobako_image::StderrProgress).unwrap_err();
        assert!(matches!(e, BootError::Invalid(_)), "{e}");
    }
}
