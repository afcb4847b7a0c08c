//! The jail around a VM process (issue 18): what the per-VM supervisor does between `fork` and
//! `exec` so that QEMU or the own VMM (`kobako-vmm`, else `kobako vmm`) runs as nobody in
//! particular, sees almost nothing of the host, and can take no more than its share.
//!
//! ```text
//! supervisor (root)                      first child (root, host PID namespace)
//!   binds the VM's sockets, opens          PDEATHSIG, NO_NEW_PRIVS, rlimits, setns(lab netns),
//!   console.log, creates the cgroups  -->  the VM's descriptors at fixed numbers, taps owned by
//!   (kobako/[user.*/lab.*/]<vm>.<uid>)     the jail uid, unshare(PID) + fork: it stays as a
//!   a Joiner thread puts the VM process    tiny reaper that mirrors the VM's exit
//!   into them once the reaper reports            |
//!   its pid                                the VM process (PID 1 of its own PID namespace)
//!                                            unshare(mount ns), a tmpfs root with /usr (ro),
//!                                            the kernel/initrd/base images (ro), its overlays
//!                                            (rw), /dev/{null,zero,full,random,urandom,kvm,
//!                                            net/tun}, a fresh /proc; pivot_root; root made
//!                                            read-only; bounding set emptied; setgroups([]),
//!                                            setresgid/setresuid(jail uid); exec QEMU or
//!                                            kobako-vmm (which also sees its config files
//!                                            and writes only its work directory, vmm/),
//!                                            once the Joiner says it is in its cgroups
//! ```
//!
//! Every path, string and file the child needs is prepared before the fork ([`Prepared`]):
//! after a fork in a multi-threaded process only async-signal-safe calls are allowed, so the
//! child runs a list of plain system calls and allocates nothing.
//!
//! The uid is allocated per VM from a range (default 900000..965536) in a host-wide registry
//! (`/run/kobako/jail-uids/<uid>`, holding the VM directory's path: uids are a host resource,
//! whatever `KOBAKO_RUN` a process uses) and released when the VM's directory is removed; a uid
//! whose VM directory is gone is free again (a supervisor killed with -9 leaves no uid taken).
//! The mount and PID namespaces die with the VM process; the cgroups (`kobako/<vm>.<uid>`,
//! unique on the host for the same reason) are removed when it ends and with its directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Accel, Root, VmConfig};
use crate::paths::run_root;
use crate::Result;

/// Where the uids held by VMs are recorded, host-wide.
pub const UID_REGISTRY: &str = "/run/kobako/jail-uids";
/// First uid (and gid) handed to jailed VM processes.
pub const DEFAULT_UID_BASE: u32 = 900_000;
/// How many uids the jail may hand out (one per running VM).
pub const DEFAULT_UID_COUNT: u32 = 65_536;
/// Memory a QEMU process may use beyond its guest's RAM under KVM (device state, I/O
/// buffers, libraries, page cache of its images).
pub const QEMU_OVERHEAD_MIB: u64 = 256;
/// The same under TCG, which adds its translation cache ([`crate::qemu::TCG_TB_MIB`]): with
/// QEMU's default cache (up to 1 GiB) Debian guests running Docker or 100 parallel execs went
/// 270-300 MiB over their RAM here; with the cache bounded, measured below this.
pub const QEMU_TCG_OVERHEAD_MIB: u64 = 384;
/// Memory the own VMM may use beyond its guest's RAM: its own few MiB (2 MiB resident as the
/// slim `kobako-vmm`, 6 MiB as `kobako vmm`), device queues and vsock buffers, the page cache of
/// the kernel and initramfs it loads.
pub const VMM_OVERHEAD_MIB: u64 = 128;
/// Present on hosts whose KVM is PVM (the VMM reads it).
const PVM_MODULE: &str = "/sys/module/kvm_pvm";
/// Processes (threads) one VM process may have: QEMU's vCPU, I/O, RCU and thread-pool threads.
pub const PIDS_MAX: u32 = 512;

/// How VM processes are jailed; built once by the binary (see `kobako vm` and the server).
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// Jail every VM process (default). Off only for debugging (`KOBAKO_JAIL=off`).
    pub enabled: bool,
    pub uid_base: u32,
    pub uid_count: u32,
    /// Memory allowed above the guest's RAM; None: for QEMU [`QEMU_OVERHEAD_MIB`] under KVM,
    /// [`QEMU_TCG_OVERHEAD_MIB`] under TCG; for `kobako vmm` [`VMM_OVERHEAD_MIB`].
    pub overhead_mib: Option<u64>,
    /// The host-wide uid registry.
    pub registry: PathBuf,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            enabled: true,
            uid_base: DEFAULT_UID_BASE,
            uid_count: DEFAULT_UID_COUNT,
            overhead_mib: None,
            registry: PathBuf::from(UID_REGISTRY),
        }
    }
}

/// A device node the jail's /dev gets besides null, zero, full, random and urandom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// /dev/kvm (KVM acceleration).
    Kvm,
    /// /dev/net/tun (the VM's taps).
    Tun,
}

impl Device {
    fn path(self) -> &'static str {
        match self {
            Device::Kvm => "/dev/kvm",
            Device::Tun => "/dev/net/tun",
        }
    }
}

/// Kernel-enforced limits of one VM process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Guest RAM plus [`JailConfig::overhead_mib`].
    pub memory_mib: u64,
    /// CPU time per 100 ms period, in percent of one core: 100 per vCPU plus 50 for the
    /// VMM's own threads (device emulation, I/O).
    pub cpu_percent: u32,
    /// Relative CPU weight (cgroup v1 `cpu.shares`): 1024 per vCPU.
    pub cpu_shares: u32,
    pub pids: u32,
}

/// A cgroup above a VM's own (a user's, a lab's) and its limits, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    /// `kobako/user.alice`, `kobako/user.alice/lab.net1`.
    pub path: String,
    pub memory_mib: Option<u64>,
    pub pids: Option<u32>,
}

/// The jail of one VM, decided at create and stored in `launch.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    /// The empty host directory the jail's root (a tmpfs in the VM's mount namespace) is
    /// mounted on: `$KOBAKO_RUN/jail/<vm>`.
    pub root: PathBuf,
    /// Host files and directories seen at the same path inside, read-only.
    pub read_only: Vec<PathBuf>,
    /// Host files seen at the same path inside, writable (the VM's overlays); owned by the
    /// jail uid while the VM runs.
    pub writable: Vec<PathBuf>,
    pub devices: Vec<Device>,
    /// Taps the VM opens by name: made owned by the jail uid (an unprivileged process can then
    /// attach to them, and only to them).
    pub taps: Vec<String>,
    pub limits: Limits,
    /// The cgroup (the same name in every controller): `kobako/[<levels>/]<vm>.<uid>`.
    pub cgroup: String,
    /// The groups above it (outermost first, paths from the cgroup root) and their limits.
    #[serde(default)]
    pub parents: Vec<Parent>,
    /// The registry file that holds the uid.
    pub registry: PathBuf,
}

impl Jail {
    /// The jail for a QEMU VM: allocates its uid (released by [`release`]). A RAM file
    /// ([`crate::config::MemoryFile`]) is seen writable when shared, read-only otherwise.
    pub fn for_qemu(cfg: &VmConfig, jc: &JailConfig, qemu: &Path, dir: &Path) -> Result<Jail> {
        let overhead = jc.overhead_mib.unwrap_or(match cfg.accel {
            Accel::Kvm => QEMU_OVERHEAD_MIB,
            Accel::Tcg => QEMU_TCG_OVERHEAD_MIB,
        });
        let mut devices = Vec::new();
        if cfg.accel == Accel::Kvm {
            devices.push(Device::Kvm);
        }
        // RAM in a file: a warm VM writes its own, a clone maps its snapshot's read-only.
        let (mut ro, mut rw) = (Vec::new(), Vec::new());
        if let Some(m) = &cfg.memory_file {
            if m.shared { &mut rw } else { &mut ro }.push(m.path.clone());
        }
        Self::build(cfg, jc, qemu, dir, overhead, devices, ro, rw)
    }

    /// The jail for an own-VMM VM, `exe` being the VMM's binary (the slim `kobako-vmm`, or
    /// `kobako` run as `kobako vmm`): as for QEMU, plus `files`, read-only (its `vmm.json`; a
    /// restore's `restore.json` and snapshot state and memory files: the caller names them), and
    /// `work`, the one directory it writes (its API, console and vsock sockets and a snapshot's
    /// files before kobako takes them out: the VMM binds its sockets itself, as Firecracker
    /// does in its jailer's chroot). `/sys/module/kvm_pvm` is visible when it exists (the VMM
    /// sets up the guest's CPU for PVM hosts by it).
    pub fn for_vmm(
        cfg: &VmConfig,
        jc: &JailConfig,
        exe: &Path,
        dir: &Path,
        files: &[PathBuf],
        work: &Path,
    ) -> Result<Jail> {
        let overhead = jc.overhead_mib.unwrap_or(VMM_OVERHEAD_MIB);
        let mut read_only: Vec<PathBuf> = files.to_vec();
        let pvm = Path::new(PVM_MODULE);
        if pvm.exists() {
            read_only.push(pvm.to_path_buf());
        }
        Self::build(
            cfg,
            jc,
            exe,
            dir,
            overhead,
            vec![Device::Kvm],
            read_only,
            vec![work.to_path_buf()],
        )
    }

    /// What both runtimes' jails hold: the VM process's binary, the kernel and initramfs, the
    /// disks (writable overlays, read-only backing chains), /dev/net/tun when it has NICs.
    #[allow(clippy::too_many_arguments)]
    fn build(
        cfg: &VmConfig,
        jc: &JailConfig,
        exe: &Path,
        dir: &Path,
        overhead_mib: u64,
        mut devices: Vec<Device>,
        extra_read_only: Vec<PathBuf>,
        extra_writable: Vec<PathBuf>,
    ) -> Result<Jail> {
        let uid = allocate_uid(jc, &cfg.name, dir)?;
        let mut read_only = vec![PathBuf::from("/usr")];
        if !exe.starts_with("/usr") {
            read_only.push(exe.to_path_buf());
        }
        read_only.push(cfg.kernel.clone());
        let mut writable = extra_writable;
        let mut disks: Vec<(&Path, bool)> = Vec::new();
        match &cfg.root {
            Root::Initramfs { path } => read_only.push(path.clone()),
            Root::Disk {
                path, read_only, ..
            } => disks.push((path, *read_only)),
        }
        disks.extend(
            cfg.extra_disks
                .iter()
                .map(|d| (d.path.as_path(), d.read_only)),
        );
        for (path, ro) in disks {
            if ro {
                read_only.push(path.to_path_buf());
            } else {
                writable.push(path.to_path_buf());
            }
            // A qcow2 overlay's backing chain is read, never written.
            read_only.extend(crate::qcow2::backing_chain(path));
        }
        read_only.extend(extra_read_only);
        // Shared directories: seen read-only at their host paths.
        read_only.extend(cfg.shares.iter().map(|s| s.path.clone()));
        if !cfg.nics.is_empty() {
            devices.push(Device::Tun);
        }
        dedup(&mut read_only);
        dedup(&mut writable);
        let mut parents: Vec<Parent> = Vec::new();
        let mut at = String::from("kobako");
        for level in &cfg.cgroups {
            check_level(&level.name)?;
            at = format!("{at}/{}", level.name);
            parents.push(Parent {
                path: at.clone(),
                memory_mib: match (level.guest_memory_mib, level.vms) {
                    (Some(m), Some(n)) => Some(m + u64::from(n) * overhead_mib),
                    _ => None,
                },
                pids: level.vms.map(|n| n.saturating_mul(PIDS_MAX)),
            });
        }
        Ok(Jail {
            uid,
            gid: uid,
            root: run_root().join("jail").join(&cfg.name),
            read_only,
            writable,
            devices,
            taps: cfg.nics.iter().map(|n| n.tap.clone()).collect(),
            limits: Limits {
                memory_mib: u64::from(cfg.memory_mib) + overhead_mib,
                cpu_percent: cfg.vcpus * 100 + 50,
                cpu_shares: cfg.vcpus.max(1) * 1024,
                pids: PIDS_MAX,
            },
            cgroup: format!("{at}/{}.{uid}", cfg.name),
            parents,
            registry: jc.registry.join(uid.to_string()),
        })
    }
}

/// The jail of a VM being created (`make`), or None when jails are off; when it cannot be
/// made, the VM's directory is removed and the error returned.
pub(crate) fn decide(
    vm: &crate::VmDir,
    jc: &JailConfig,
    make: impl FnOnce() -> Result<Jail>,
) -> Result<Option<Jail>> {
    if !jc.enabled {
        return Ok(None);
    }
    make().map(Some).inspect_err(|_| {
        let _ = vm.remove();
    })
}

/// A cgroup level's name becomes a directory under /sys/fs/cgroup: nothing but a plain name.
fn check_level(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(crate::RuntimeError::Invalid(format!(
            "cgroup level {name:?}: use letters, digits, '.', '_' and '-' (at most 128, not \
             starting with '.')"
        )))
    }
}

fn dedup(v: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
}

mod cgroups;
mod child;
mod takeout;
mod uids;

pub use cgroups::{
    cgroup_dirs, create_cgroups, oom_killed, raise_memory, remove_cgroups, warm_up_moves,
};
pub use child::{JoinError, Joiner, Prepared};
pub use takeout::take_out;
pub use uids::{allocate_uid, release};
