//! The jail's uids: one per VM, from a range, in a host-wide registry (`/run/kobako/jail-uids/
//! <uid>` holding the VM directory's path).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{remove_cgroups, Jail, JailConfig};
use crate::{io, Result, RuntimeError};

/// Takes a free uid for the VM whose directory is `dir`: a registry file `<uid>` holding that
/// path, created exclusively. A file whose VM directory is gone (its supervisor was killed and
/// nobody removed it) is taken back.
pub fn allocate_uid(jc: &JailConfig, vm: &str, dir: &Path) -> Result<u32> {
    let reg = &jc.registry;
    std::fs::create_dir_all(reg).map_err(io(format!("create {}", reg.display())))?;
    let count = jc.uid_count.max(1);
    let me = dir.as_os_str().as_bytes();
    // Start at a place derived from the name, so VMs spread over the range.
    let start = vm
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % count;
    for i in 0..count {
        let uid = jc.uid_base + (start + i) % count;
        let f = reg.join(uid.to_string());
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&f)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    file.write_all(me)
                        .map_err(io(format!("write {}", f.display())))?;
                    return Ok(uid);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read(&f).unwrap_or_default();
                    let stale = owner.is_empty()
                        || owner == me
                        || !Path::new(std::ffi::OsStr::from_bytes(&owner)).exists();
                    if stale {
                        let _ = std::fs::remove_file(&f);
                        continue;
                    }
                    break;
                }
                Err(e) => return Err(io(format!("create {}", f.display()))(e)),
            }
        }
    }
    Err(RuntimeError::Invalid(format!(
        "no free jail uid in {}..{}: every one is held by a VM (remove VMs, or widen the range)",
        jc.uid_base,
        u64::from(jc.uid_base) + u64::from(count)
    )))
}

/// Gives back what a VM's jail holds on the host: its uid, its cgroups, its (empty) root
/// directory. `dir` is the VM's directory. Safe to call more than once.
pub fn release(dir: &Path, jail: Option<&Jail>) {
    if let Some(j) = jail {
        if std::fs::read(&j.registry).is_ok_and(|o| o == dir.as_os_str().as_bytes()) {
            let _ = std::fs::remove_file(&j.registry);
        }
        remove_cgroups(&j.cgroup);
        let _ = std::fs::remove_dir(&j.root);
    }
}
