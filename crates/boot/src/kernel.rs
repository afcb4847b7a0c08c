//! `--kernel`: `default` (the cached guest kernel, built once from Debian's linux-source) or a
//! path to a vmlinux with a PVH entry note or a bzImage.

use std::path::{Path, PathBuf};

use kobako_image::{kernel, Progress};
use kobako_runtime::config::KernelKind;
use kobako_runtime::host;

use crate::BootError;

/// The kernel file `arg` names and how to boot it; `default` builds the kernel when missing.
pub fn resolve(arg: &str, progress: &dyn Progress) -> Result<(PathBuf, KernelKind), BootError> {
    if arg == "default" {
        let a = match kernel::cached() {
            Some(a) => a,
            None => {
                progress.step(
                    "kobako: the default guest kernel is not built yet; building it once (see `kobako image kernel`)",
                );
                kernel::build(progress, host::cpus() as usize)?
            }
        };
        return Ok((a.vmlinux, KernelKind::ElfPvh));
    }
    let k = kernel::inspect(Path::new(arg))?;
    let kind = match k.format {
        kernel::KernelFormat::ElfPvh => KernelKind::ElfPvh,
        kernel::KernelFormat::BzImage => KernelKind::BzImage,
        kernel::KernelFormat::Elf => return Err(BootError::KernelNotPvh { path: arg.into() }),
    };
    Ok((k.path, kind))
}
