//! The jail around a VM process (issue 18): what the per-VM supervisor does between `fork` and
//! `exec` so that QEMU runs as nobody in particular, sees almost nothing of the host, and can
//! take no more than its share.
//!
//! ```text
//! supervisor (root)                      first child (root, host PID namespace)
//!   binds the VM's sockets, opens          PDEATHSIG, NO_NEW_PRIVS, rlimits, setns(lab netns),
//!   console.log, creates the cgroups  -->  the VM's descriptors at fixed numbers, taps owned by
//!   (kobako/<vm> in each controller)        the jail uid, joins the cgroups, unshare(PID) + fork:
//!                                          it stays as a tiny reaper that mirrors the VM's exit
//!                                                |
//!                                          the VM process (PID 1 of its own PID namespace)
//!                                            unshare(mount ns), a tmpfs root with /usr (ro),
//!                                            the kernel/initrd/base images (ro), its overlays
//!                                            (rw), /dev/{null,zero,full,random,urandom,kvm,
//!                                            net/tun}, a fresh /proc; pivot_root; root made
//!                                            read-only; bounding set emptied; setgroups([]),
//!                                            setresgid/setresuid(jail uid); exec QEMU
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

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Accel, Root, VmConfig};
use crate::vmdir::run_root;
use crate::{io, Result, RuntimeError};

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
/// Processes (threads) one VM process may have: QEMU's vCPU, I/O, RCU and thread-pool threads.
pub const PIDS_MAX: u32 = 512;

/// How VM processes are jailed; built once by the binary (see `kobako vm` and the server).
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// Jail every VM process (default). Off only for debugging (`KOBAKO_JAIL=off`).
    pub enabled: bool,
    pub uid_base: u32,
    pub uid_count: u32,
    /// Memory allowed above the guest's RAM; None: [`QEMU_OVERHEAD_MIB`] under KVM,
    /// [`QEMU_TCG_OVERHEAD_MIB`] under TCG.
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
    /// The cgroup (the same name in every controller): `kobako/<vm>.<uid>`.
    pub cgroup: String,
    /// The registry file that holds the uid.
    pub registry: PathBuf,
}

impl Jail {
    /// The jail for a QEMU VM: allocates its uid (released by [`release`]).
    pub fn for_qemu(cfg: &VmConfig, jc: &JailConfig, qemu: &Path, dir: &Path) -> Result<Jail> {
        let uid = allocate_uid(jc, &cfg.name, dir)?;
        let mut read_only = vec![PathBuf::from("/usr")];
        if !qemu.starts_with("/usr") {
            read_only.push(qemu.to_path_buf());
        }
        read_only.push(cfg.kernel.clone());
        let mut writable = Vec::new();
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
        let mut devices = Vec::new();
        if cfg.accel == Accel::Kvm {
            devices.push(Device::Kvm);
        }
        if !cfg.nics.is_empty() {
            devices.push(Device::Tun);
        }
        dedup(&mut read_only);
        dedup(&mut writable);
        Ok(Jail {
            uid,
            gid: uid,
            root: run_root().join("jail").join(&cfg.name),
            read_only,
            writable,
            devices,
            taps: cfg.nics.iter().map(|n| n.tap.clone()).collect(),
            limits: Limits {
                memory_mib: u64::from(cfg.memory_mib)
                    + jc.overhead_mib.unwrap_or(match cfg.accel {
                        Accel::Kvm => QEMU_OVERHEAD_MIB,
                        Accel::Tcg => QEMU_TCG_OVERHEAD_MIB,
                    }),
                cpu_percent: cfg.vcpus * 100 + 50,
                cpu_shares: cfg.vcpus.max(1) * 1024,
                pids: PIDS_MAX,
            },
            cgroup: format!("kobako/{}.{uid}", cfg.name),
            registry: jc.registry.join(uid.to_string()),
        })
    }
}

fn dedup(v: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
}

// ---------------------------------------------------------------------------------------------
// uids

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

// ---------------------------------------------------------------------------------------------
// cgroups

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 controllers kobako uses (mounted separately on these hosts).
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "blkio"];

/// Whether the host runs cgroup v2 only (unified hierarchy at /sys/fs/cgroup).
fn unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The directories of a VM's cgroup, one per controller (v1) or one (v2).
pub fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    if unified() {
        return vec![Path::new(CGROUP_ROOT).join(cgroup)];
    }
    V1_CONTROLLERS
        .iter()
        .map(|c| Path::new(CGROUP_ROOT).join(c))
        .filter(|c| c.is_dir())
        .map(|c| c.join(cgroup))
        .collect()
}

fn write_knob(dir: &Path, knob: &str, value: &str) -> Result<()> {
    let p = dir.join(knob);
    std::fs::write(&p, value).map_err(io(format!("write {value} to {}", p.display())))
}

/// Creates the VM's cgroups with its limits; returns each one's `cgroup.procs`, opened for the
/// child to write itself into. A group left by a killed supervisor is removed first.
pub fn create_cgroups(j: &Jail) -> Result<Vec<std::fs::File>> {
    remove_cgroups(&j.cgroup);
    let mut procs = Vec::new();
    let mem = (j.limits.memory_mib * 1024 * 1024).to_string();
    let period = 100_000u64;
    let quota = (u64::from(j.limits.cpu_percent) * period / 100).to_string();
    if unified() {
        let root = Path::new(CGROUP_ROOT);
        let dir = root.join(&j.cgroup);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        // Controllers must be enabled in every parent's subtree_control.
        let mut parent = root.to_path_buf();
        for part in Path::new(&j.cgroup)
            .parent()
            .into_iter()
            .flat_map(|p| p.iter())
        {
            let _ = std::fs::write(
                parent.join("cgroup.subtree_control"),
                "+memory +cpu +pids +io",
            );
            parent = parent.join(part);
        }
        let _ = std::fs::write(
            parent.join("cgroup.subtree_control"),
            "+memory +cpu +pids +io",
        );
        write_knob(&dir, "memory.max", &mem)?;
        let _ = write_knob(&dir, "memory.swap.max", "0");
        write_knob(&dir, "cpu.max", &format!("{quota} {period}"))?;
        write_knob(
            &dir,
            "cpu.weight",
            &(j.limits.cpu_shares * 100 / 1024)
                .clamp(1, 10_000)
                .to_string(),
        )?;
        write_knob(&dir, "pids.max", &j.limits.pids.to_string())?;
        procs.push(open_procs(&dir)?);
        return Ok(procs);
    }
    for dir in cgroup_dirs(&j.cgroup) {
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let controller = dir
            .strip_prefix(CGROUP_ROOT)
            .ok()
            .and_then(|p| p.iter().next())
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        match controller.as_str() {
            "memory" => {
                write_knob(&dir, "memory.limit_in_bytes", &mem)?;
                // No swapping the guest out to stay under the limit: over it, the VM is killed.
                let _ = write_knob(&dir, "memory.swappiness", "0");
            }
            "cpu" => {
                write_knob(&dir, "cpu.cfs_period_us", &period.to_string())?;
                write_knob(&dir, "cpu.cfs_quota_us", &quota)?;
                write_knob(&dir, "cpu.shares", &j.limits.cpu_shares.to_string())?;
            }
            "pids" => write_knob(&dir, "pids.max", &j.limits.pids.to_string())?,
            // blkio: the VM's I/O is accounted per VM (blkio.throttle.io_service_bytes);
            // throttles are per device and set when an operator asks for them.
            _ => {}
        }
        procs.push(open_procs(&dir)?);
    }
    Ok(procs)
}

fn open_procs(dir: &Path) -> Result<std::fs::File> {
    let p = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&p)
        .map_err(io(format!("open {}", p.display())))
}

/// Removes a VM's cgroups (they are empty once its processes are gone; a few retries cover
/// the kernel finishing the exit).
pub fn remove_cgroups(cgroup: &str) {
    for dir in cgroup_dirs(cgroup) {
        for _ in 0..50 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}

/// Whether the kernel's OOM killer killed a process of this cgroup (its memory limit).
pub fn oom_killed(cgroup: &str) -> bool {
    let (file, key) = if unified() {
        ("memory.events", "oom_kill")
    } else {
        ("memory.oom_control", "oom_kill")
    };
    cgroup_dirs(cgroup)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
        .any(|s| {
            s.lines().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(k, v)| k == key && v.trim().parse::<u64>().unwrap_or(0) > 0)
            })
        })
}

// ---------------------------------------------------------------------------------------------
// What the child does

/// One step of building the jail's root, with every path ready as a C string.
enum Op {
    Mkdir(CString),
    /// An empty file to bind a file onto.
    Touch(CString),
    Bind {
        src: CString,
        dst: CString,
        read_only: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    Mknod {
        path: CString,
        dev: libc::dev_t,
        mode: libc::mode_t,
        owner: Option<u32>,
    },
}

/// Everything the child needs, prepared before the fork.
pub struct Prepared {
    uid: u32,
    gid: u32,
    root: CString,
    proc_dir: CString,
    ops: Vec<Op>,
    /// `cgroup.procs` of each of the VM's cgroups.
    procs: Vec<std::fs::File>,
    /// `struct ifreq` for each tap (name + IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
    taps: Vec<[u8; 40]>,
    /// Where the first child writes the VM process's pid (host namespace), for the supervisor:
    /// read end, write end (closed in the supervisor after the spawn).
    pid_read: OwnedFd,
    pid_write: Option<OwnedFd>,
    pid_write_raw: libc::c_int,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Invalid(format!("path with a NUL byte: {}", p.display())))
}

/// Inside-the-jail path of a host path (same path under the jail root).
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

impl Prepared {
    /// Prepares the child's work for `j`: creates the cgroups and the root directory, checks
    /// every bound path exists, and lays out the steps.
    pub fn new(j: &Jail) -> Result<Prepared> {
        std::fs::create_dir_all(&j.root).map_err(io(format!("create {}", j.root.display())))?;
        let mut ops = Vec::new();
        let mut made = std::collections::HashSet::new();
        let mut mkdirs = |ops: &mut Vec<Op>, dir: &Path| -> Result<()> {
            let mut cur = PathBuf::from("/");
            for c in dir.strip_prefix("/").unwrap_or(dir).iter() {
                cur.push(c);
                if made.insert(cur.clone()) {
                    ops.push(Op::Mkdir(cstr(&inside(&j.root, &cur))?));
                }
            }
            Ok(())
        };
        // /usr and what merged-/usr systems point into it (/lib -> usr/lib, ...).
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            if let Ok(target) = std::fs::read_link(&host) {
                ops.push(Op::Symlink {
                    target: cstr(&target)?,
                    link: cstr(&inside(&j.root, &host))?,
                });
            } else if host.is_dir() && top.starts_with("lib") {
                // A split-/usr system: its libraries are needed too.
                mkdirs(&mut ops, &host)?;
                ops.push(Op::Bind {
                    src: cstr(&host)?,
                    dst: cstr(&inside(&j.root, &host))?,
                    read_only: true,
                });
            }
        }
        let binds = j
            .read_only
            .iter()
            .map(|p| (p, true))
            .chain(j.writable.iter().map(|p| (p, false)));
        for (p, read_only) in binds {
            let md = std::fs::metadata(p).map_err(|e| {
                RuntimeError::Invalid(format!(
                    "the VM needs {} but it is missing: {e}",
                    p.display()
                ))
            })?;
            let dst = inside(&j.root, p);
            if md.is_dir() {
                mkdirs(&mut ops, p)?;
            } else {
                if let Some(parent) = p.parent() {
                    mkdirs(&mut ops, parent)?;
                }
                ops.push(Op::Touch(cstr(&dst)?));
            }
            ops.push(Op::Bind {
                src: cstr(p)?,
                dst: cstr(&dst)?,
                read_only,
            });
        }
        // /dev: the harmless nodes everyone needs, and the VM's own devices owned by its uid.
        mkdirs(&mut ops, Path::new("/dev/net"))?;
        let chr = |major: u32, minor: u32| libc::makedev(major, minor);
        for (name, dev) in [
            ("null", chr(1, 3)),
            ("zero", chr(1, 5)),
            ("full", chr(1, 7)),
            ("random", chr(1, 8)),
            ("urandom", chr(1, 9)),
        ] {
            ops.push(Op::Mknod {
                path: cstr(&j.root.join("dev").join(name))?,
                dev,
                mode: libc::S_IFCHR | 0o666,
                owner: None,
            });
        }
        for d in &j.devices {
            let host = Path::new(d.path());
            let md = std::fs::metadata(host).map_err(|e| {
                RuntimeError::Invalid(format!(
                    "the VM needs {} but it is missing: {e}",
                    host.display()
                ))
            })?;
            ops.push(Op::Mknod {
                path: cstr(&inside(&j.root, host))?,
                dev: md.rdev(),
                mode: libc::S_IFCHR | 0o600,
                owner: Some(j.uid),
            });
        }
        mkdirs(&mut ops, Path::new("/proc"))?;
        let mut taps = Vec::new();
        for t in &j.taps {
            if t.is_empty() || t.len() >= 16 || t.bytes().any(|b| b == 0 || b == b'/') {
                return Err(RuntimeError::Invalid(format!("bad tap name {t:?}")));
            }
            let mut ifr = [0u8; 40];
            ifr[..t.len()].copy_from_slice(t.as_bytes());
            // ifr_flags is a C short; the flag values fit.
            let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
            ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
            taps.push(ifr);
        }
        let (pid_read, pid_write) = pipe().map_err(io("create a pipe"))?;
        let procs = create_cgroups(j)?;
        Ok(Prepared {
            uid: j.uid,
            gid: j.gid,
            root: cstr(&j.root)?,
            proc_dir: cstr(&j.root.join("proc"))?,
            ops,
            procs,
            taps,
            pid_read,
            pid_write_raw: pid_write.as_raw_fd(),
            pid_write: Some(pid_write),
        })
    }

    /// After the spawn: the VM process's pid (in the host's PID namespace), sent by the first
    /// child. None if the child failed before forking it.
    pub fn vm_pid(&mut self) -> Option<i32> {
        // Close our copy of the write end, so a child that died early reads as end of file.
        self.pid_write = None;
        let mut buf = [0u8; 4];
        // SAFETY: reading into a live 4-byte buffer from a descriptor we own.
        let n = unsafe { libc::read(self.pid_read.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
        (n == 4).then(|| i32::from_ne_bytes(buf))
    }

    /// Runs in the first child, after fork and before exec (async-signal-safe calls only).
    /// Returns in the VM process (which then execs); the first child never returns from here:
    /// it waits for the VM process and exits the way it did.
    ///
    /// # Safety
    /// Only between fork and exec, in the child.
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        // SAFETY: the caller runs this only in the child between fork and exec; every call is a plain system call on data prepared before the fork
        unsafe {
            let fail = |what: &[u8]| {
                let e = std::io::Error::last_os_error();
                say(what);
                e
            };
            // Taps: owned by the jail uid, so QEMU attaches to them unprivileged (in the lab's
            // namespace, which the caller entered).
            for ifr in &self.taps {
                let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(fail(b"open /dev/net/tun"));
                }
                let mut req = *ifr;
                // A tap that does not exist yet is created here (the warm-snapshot build's taps,
                // in its private namespace, which is deleted with them) and made persistent, so
                // the unprivileged VM process can attach to it; a lab's taps already are.
                let ok = libc::ioctl(fd, libc::TUNSETIFF, req.as_mut_ptr()) == 0
                    && libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) == 0
                    && libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(self.uid)) == 0
                    && libc::ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(self.gid)) == 0;
                if !ok {
                    let err = fail(b"give the VM's tap to the jail uid");
                    libc::close(fd);
                    return Err(err);
                }
                libc::close(fd);
            }
            for f in &self.procs {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(fail(b"join the VM's cgroup"));
                }
            }
            if libc::unshare(libc::CLONE_NEWPID) != 0 {
                return Err(fail(b"unshare(CLONE_NEWPID)"));
            }
            // The lifeline: the reaper holds its write end while it lives.
            let mut life = [0 as libc::c_int; 2];
            if libc::pipe2(life.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(fail(b"create the lifeline pipe"));
            }
            let pid = libc::fork();
            if pid < 0 {
                return Err(fail(b"fork"));
            }
            if pid > 0 {
                libc::close(life[0]);
                self.reap(pid, life[1]);
            }
            // The VM process: PID 1 of its namespace.
            libc::close(life[1]);
            self.build_root().map_err(&fail)?;
            self.drop_privileges().map_err(fail)?;
            // Dying with the reaper (and so with the supervisor): set only now, since changing
            // credentials clears the parent-death signal. Then the lifeline tells whether the
            // reaper already went (getppid() cannot: the reaper is outside this namespace).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut p = libc::pollfd {
                fd: life[0],
                events: 0,
                revents: 0,
            };
            if libc::poll(&mut p, 1, 0) != 0 && p.revents & libc::POLLHUP != 0 {
                libc::_exit(1);
            }
            libc::close(life[0]);
            Ok(())
        }
    }

    /// The first child after the fork: report the VM's pid, hold nothing but the lifeline
    /// (whose closing the VM process can see), wait, mirror its end.
    unsafe fn reap(&self, pid: libc::pid_t, lifeline: libc::c_int) -> ! {
        // SAFETY: plain system calls in the first child after fork; nothing is allocated
        unsafe {
            let bytes = pid.to_ne_bytes();
            libc::write(self.pid_write_raw, bytes.as_ptr().cast(), 4);
            // Close every descriptor but stdio and the lifeline: the supervisor's spawn waits
            // for the exec-status pipe to close, which the VM process's exec does for its copy.
            let keep = lifeline as libc::c_uint;
            if keep > 3 {
                libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
            }
            libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
            let mut status = 0;
            loop {
                let r = libc::waitpid(pid, &mut status, 0);
                if r == pid {
                    break;
                }
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(1);
                }
            }
            if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                libc::signal(sig, libc::SIG_DFL);
                libc::kill(libc::getpid(), sig);
            }
            libc::_exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1
            })
        }
    }

    /// A private mount namespace whose root is a tmpfs holding only what the VM needs.
    unsafe fn build_root(&self) -> std::result::Result<(), &'static [u8]> {
        // SAFETY: plain system calls on C strings prepared before the fork, in the VM process before exec
        unsafe {
            let null = std::ptr::null::<libc::c_char>();
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(b"unshare(CLONE_NEWNS)");
            }
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                null.cast(),
            ) != 0
            {
                return Err(b"make / private");
            }
            if libc::mount(
                c"kobako-jail".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID,
                c"mode=0755,size=1m,nr_inodes=4096".as_ptr().cast(),
            ) != 0
            {
                return Err(b"mount the jail's tmpfs");
            }
            for op in &self.ops {
                match op {
                    Op::Mkdir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(b"mkdir in the jail");
                        }
                    }
                    Op::Touch(p) => {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o600,
                        );
                        if fd < 0 {
                            return Err(b"create a bind target in the jail");
                        }
                        libc::close(fd);
                    }
                    Op::Symlink { target, link } => {
                        if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
                            return Err(b"symlink in the jail");
                        }
                    }
                    Op::Bind {
                        src,
                        dst,
                        read_only,
                    } => {
                        if libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REC,
                            null.cast(),
                        ) != 0
                        {
                            return Err(b"bind a file into the jail");
                        }
                        let mut fl =
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                        if *read_only {
                            fl |= libc::MS_RDONLY;
                        } else {
                            fl |= libc::MS_NOEXEC;
                        }
                        if libc::mount(null, dst.as_ptr(), null, fl, null.cast()) != 0 {
                            return Err(b"remount a bind in the jail");
                        }
                    }
                    Op::Mknod {
                        path,
                        dev,
                        mode,
                        owner,
                    } => {
                        if libc::mknod(path.as_ptr(), *mode, *dev) != 0 {
                            return Err(b"mknod in the jail");
                        }
                        // mknod's mode is masked by the umask: set it exactly.
                        if libc::chmod(path.as_ptr(), *mode & 0o7777) != 0 {
                            return Err(b"chmod a device in the jail");
                        }
                        if let Some(uid) = owner {
                            if libc::chown(path.as_ptr(), *uid, self.gid) != 0 {
                                return Err(b"chown a device in the jail");
                            }
                        }
                    }
                }
            }
            if libc::mount(
                c"proc".as_ptr(),
                self.proc_dir.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                null.cast(),
            ) != 0
            {
                return Err(b"mount /proc in the jail");
            }
            // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the jail.
            if libc::chdir(self.root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return Err(b"pivot_root into the jail");
            }
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                null.cast(),
            ) != 0
            {
                return Err(b"make the jail's root read-only");
            }
            Ok(())
        }
    }

    /// No capabilities (bounding set emptied), no supplementary groups, the jail's uid and gid.
    unsafe fn drop_privileges(&self) -> std::result::Result<(), &'static [u8]> {
        // SAFETY: plain system calls in the VM process before exec
        unsafe {
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(b"drop the capability bounding set");
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(b"setgroups([])");
            }
            if libc::setresgid(self.gid, self.gid, self.gid) != 0 {
                return Err(b"setresgid to the jail gid");
            }
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return Err(b"setresuid to the jail uid");
            }
            Ok(())
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A line on the VM process's stderr (vm.log) naming the jail step that failed; allocation-free.
fn say(what: &[u8]) {
    let pre = b"kobako jail: cannot ";
    // SAFETY: write(2) of live buffers to stderr.
    unsafe {
        libc::write(2, pre.as_ptr().cast(), pre.len());
        libc::write(2, what.as_ptr().cast(), what.len());
        libc::write(2, b"\n".as_ptr().cast(), 1);
    }
}
