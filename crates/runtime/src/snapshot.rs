//! VM snapshots: memory + device state + writable disks of a running VM, restorable into a new
//! VM process (same or another name).
//!
//! A snapshot is a directory:
//! ```text
//! manifest.json   what it is and what it needs (runtime, versions, kernel, VM config, files)
//! memory.bin      QEMU: its migration stream (RAM with zero pages elided + device state);
//!                 vmm: the guest's RAM (sparse)
//! vmstate.bin     vmm only: kobako-vmm's vCPU/VM/device state and configuration
//! ram.bin         QEMU, a VM whose RAM was a shared file (a warm VM): its RAM, sparse; the
//!                 migration stream then holds device state only (`x-ignore-shared`)
//! root.<format>   the VM's writable root disk at that moment (absent for initramfs VMs)
//! disk<i>.<fmt>   extra disks that belong to the VM alone (e.g. its cloud-init seed)
//! ```
//! QEMU runtime: `stop`, then `migrate` to a file (`fd:`: the file opened here and handed to
//! QEMU over QMP, so its sandbox needs no spawning; bandwidth unlimited, one pass since the
//! guest is stopped; completion flushes and
//! inactivates the disks, so copying them afterwards is consistent), copy the writable disks,
//! then `cont` unless asked to leave the VM paused. Restore starts a new QEMU with the snapshot's
//! configuration and `-incoming` from the memory file, its root disk a new qcow2 overlay on the
//! snapshot's copy (so a snapshot can be restored any number of times and stays unchanged).
//! A snapshot with `ram.bin` is restored with its RAM mapped copy-on-write from that file
//! (see [`crate::config::MemoryFile`]): the restore reads a few kilobytes of device state, and
//! every VM restored from it shares the pages it has not written.
//! The vmm runtime ([`crate::vmm`]) does the same through kobako-vmm's Firecracker-compatible
//! `PATCH /vm`, `PUT /snapshot/create` and `kobako vmm --snapshot-load`, with the helpers here
//! (`begin`, `copy_disks`, `write_manifest`, `failed`, `load_for`,
//! `restore_config_with`): one manifest format, one set of refusals.
//!
//! Restores are refused with the reason when the manifest does not match this host: another
//! runtime, another QEMU version (the migration stream is version-bound) or, for the vmm
//! runtime, another kobako version, a kernel file that changed or vanished, a file of the
//! wrong size (truncated), or (when verifying) a checksum that does not match.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Root, VmConfig};
use crate::qmp::Qmp;
use crate::{io, Result, RuntimeError, VmDir};

pub const MANIFEST: &str = "manifest.json";
pub const KIND: &str = "kobako-vm-snapshot";

/// A file of a snapshot with its checksum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapFile {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// What a snapshot is and what restoring it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: String,
    pub format: u32,
    pub runtime: String,
    /// `qemu-system-x86_64 --version` for QEMU snapshots (its state format is version-bound);
    /// empty for the vmm runtime, whose state format goes with `kobako_version`.
    #[serde(default)]
    pub qemu_version: String,
    pub kobako_version: String,
    pub created_ms: i64,
    /// The VM it was taken from.
    pub vm: String,
    /// Its configuration then (disks point at the originals; restore replaces the root).
    pub config: VmConfig,
    pub kernel_size: u64,
    pub kernel_sha256: String,
    /// Guest memory (QEMU: the migration stream, device state included; vmm: all guest RAM,
    /// sparse).
    pub memory: SnapFile,
    /// The VMM's vCPU/VM/device state file (vmm runtime only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmstate: Option<SnapFile>,
    /// Guest RAM as a file (QEMU, a VM whose RAM was a shared file): `memory` is then device
    /// state only, and restores map this file copy-on-write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<SnapFile>,
    /// The writable root disk, copied.
    pub root: Option<SnapFile>,
    /// Extra disks that belonged to the VM alone (e.g. its cloud-init seed), copied, by index
    /// in `config.extra_disks`. Shared read-only disks are used where they are.
    #[serde(default)]
    pub extra: Vec<(usize, SnapFile)>,
    /// How long the guest was stopped for the snapshot.
    pub paused_ms: u64,
}

fn sha256_file(p: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(p).map_err(io(format!("read {}", p.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(io(format!("read {}", p.display())))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((n, hex::encode(h.finalize())))
}

/// The first line of `qemu-system-x86_64 --version`.
pub fn qemu_version(qemu: &Path) -> String {
    std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn qerr(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Qmp(e.to_string())
}

/// Pauses the guest (QMP `stop`). Used to take several VMs to one consistent instant.
pub async fn stop_guest(vm: &VmDir) -> Result<()> {
    Qmp::connect(&vm.file("qmp.sock"))
        .await?
        .execute("stop", None)
        .await
        .map(|_| ())
}

/// Snapshots the running VM `vm` into `dest` (created; must not exist). The guest is stopped for
/// the duration and continued afterwards unless `leave_paused`.
pub async fn snapshot(
    qemu: &Path,
    vm: &VmDir,
    dest: &Path,
    leave_paused: bool,
) -> Result<Manifest> {
    let cfg = begin(vm, dest)?;
    match take(qemu, vm, &cfg, dest, leave_paused).await {
        Ok(m) => Ok(m),
        Err(e) => Err(failed(vm, &cfg, dest, e)),
    }
}

/// The first step of every runtime's snapshot: the VM runs, `dest` does not exist yet (and is
/// created empty). Returns the VM's configuration.
pub(crate) fn begin(vm: &VmDir, dest: &Path) -> Result<VmConfig> {
    if vm.vm_pid().is_none() {
        return Err(RuntimeError::NotRunning(vm.name.clone()));
    }
    if dest.exists() {
        return Err(RuntimeError::Invalid(format!(
            "snapshot directory {} exists; choose a new one",
            dest.display()
        )));
    }
    let cfg = vm.config()?;
    std::fs::create_dir_all(dest).map_err(io(format!("create {}", dest.display())))?;
    // The guest's memory is in there: root only. (Its files are readable by others, so that
    // the jailed VM process of a restore, which sees them bind-mounted, can read them.)
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dest.display())))?;
    Ok(cfg)
}

/// A snapshot failed with `e`: removes `dest` (nothing half-written stays) and says why, naming
/// a full file system when that is the likely cause (a failed write somewhere: the runtime's,
/// a disk copy's).
pub(crate) fn failed(vm: &VmDir, cfg: &VmConfig, dest: &Path, e: RuntimeError) -> RuntimeError {
    let free = free_bytes(dest);
    let _ = std::fs::remove_dir_all(dest);
    let need = u64::from(cfg.memory_mib) << 20;
    if let Some(free) = free.filter(|f| *f < need) {
        return RuntimeError::Invalid(format!(
            "snapshot of VM '{}' failed: the file system of {} is full ({} MiB free; the snapshot needs up to {} MiB plus its disks): free space or choose another directory ({e})",
            vm.name,
            dest.display(),
            free >> 20,
            cfg.memory_mib
        ));
    }
    e
}

/// Bytes available to us on the file system holding `p` (or its nearest existing parent).
pub fn free_bytes(p: &Path) -> Option<u64> {
    let mut p = p.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// The writable disks of a stopped VM whose runtime flushed them, copied into `dest`: the root
/// (`root.<format>`, unless read-only: that one is used where it is) and the extra disks that
/// belong to this VM alone (`disk<i>.<format>`). Returns the root copy's file name and
/// `(index in extra_disks, file name)` of the others.
pub(crate) fn copy_disks(cfg: &VmConfig, dest: &Path) -> Result<DiskCopies> {
    let root = match &cfg.root {
        Root::Disk {
            path,
            format,
            read_only,
        } if !read_only => {
            let name = format!("root.{format}");
            let to = dest.join(&name);
            std::fs::copy(path, &to).map_err(io(format!(
                "copy {} to {}",
                path.display(),
                to.display()
            )))?;
            Some(name)
        }
        _ => None,
    };
    let mut extra = Vec::new();
    for (i, d) in cfg.extra_disks.iter().enumerate() {
        if cfg.owned_paths.iter().any(|o| d.path.starts_with(o)) {
            let name = format!("disk{i}.{}", d.format);
            std::fs::copy(&d.path, dest.join(&name))
                .map_err(io(format!("copy {}", d.path.display())))?;
            extra.push((i, name));
        }
    }
    Ok((root, extra))
}

/// The root copy's file name and `(index in extra_disks, file name)` of the other copies.
pub(crate) type DiskCopies = (Option<String>, Vec<(usize, String)>);

/// What a runtime saved for one snapshot, for [`write_manifest`].
pub(crate) struct Saved {
    pub runtime: &'static str,
    pub qemu_version: String,
    /// File names in the snapshot directory.
    pub memory: &'static str,
    pub vmstate: Option<&'static str>,
    pub ram: Option<&'static str>,
    pub root: Option<String>,
    pub extra: Vec<(usize, String)>,
    pub paused_ms: u64,
}

fn snap_file(dir: &Path, name: &str) -> Result<SnapFile> {
    let (size, sha256) = sha256_file(&dir.join(name))?;
    Ok(SnapFile {
        file: name.to_string(),
        size,
        sha256,
    })
}

/// Checksums what was saved into `dest` and writes its manifest (last: a directory without one
/// is no snapshot).
pub(crate) fn write_manifest(
    vm: &VmDir,
    cfg: &VmConfig,
    dest: &Path,
    s: Saved,
) -> Result<Manifest> {
    let mut extra = Vec::new();
    for (i, name) in &s.extra {
        extra.push((*i, snap_file(dest, name)?));
    }
    let root = match &s.root {
        Some(name) => Some(snap_file(dest, name)?),
        None => None,
    };
    let vmstate = match s.vmstate {
        Some(name) => Some(snap_file(dest, name)?),
        None => None,
    };
    let ram = match s.ram {
        Some(name) => Some(snap_file(dest, name)?),
        None => None,
    };
    let (kernel_size, kernel_sha256) = sha256_file(&cfg.kernel)?;
    let m = Manifest {
        kind: KIND.into(),
        format: 1,
        runtime: s.runtime.into(),
        qemu_version: s.qemu_version,
        kobako_version: env!("CARGO_PKG_VERSION").into(),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        vm: vm.name.clone(),
        config: cfg.clone(),
        kernel_size,
        kernel_sha256,
        memory: snap_file(dest, s.memory)?,
        vmstate,
        ram,
        root,
        extra,
        paused_ms: s.paused_ms,
    };
    crate::vmdir::write_json(&dest.join(MANIFEST), &m)?;
    Ok(m)
}

async fn take(
    qemu: &Path,
    vm: &VmDir,
    cfg: &VmConfig,
    dest: &Path,
    leave_paused: bool,
) -> Result<Manifest> {
    let mem = dest.join("memory.bin");
    if mem.to_string_lossy().contains('\'') {
        return Err(RuntimeError::Invalid(format!(
            "snapshot path {} contains a quote",
            dest.display()
        )));
    }
    let shared_ram = cfg.memory_file.as_ref().filter(|m| m.shared);
    if shared_ram.is_some() && !leave_paused {
        // Its RAM file goes into the snapshot: the VM must not write it afterwards.
        return Err(RuntimeError::Invalid(format!(
            "VM '{}' keeps its RAM in a shared file (a warm VM): it can only be snapshotted paused",
            vm.name
        )));
    }
    let mut q = Qmp::connect(&vm.file("qmp.sock")).await?;
    let status = q.execute("query-status", None).await?;
    let was_running = status["running"].as_bool().unwrap_or(false);
    let t0 = Instant::now();
    q.execute("stop", None).await?;
    let result = async {
        // Unlimited bandwidth: the default (32 MiB/s) would make a 128 MiB guest take seconds.
        q.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({"max-bandwidth": 1u64 << 40})),
        )
        .await?;
        // RAM in a shared file stays out of the stream (only its block's name and address
        // go in); every stream is saved with the capability on, and every restore sets it
        // before reading one, so the format is one.
        q.execute("migrate-set-capabilities", Some(ignore_shared()))
            .await?;
        // Straight into the file: QEMU gets the open file (`getfd`) and migrates to it, so it
        // needs to spawn nothing (its sandbox denies spawning).
        let file = std::fs::File::create(&mem)
            .map_err(|e| RuntimeError::Invalid(format!("create {}: {e}", mem.display())))?;
        q.send_fd("kobako-snapshot", file.as_raw_fd()).await?;
        drop(file);
        q.execute(
            "migrate",
            Some(serde_json::json!({"uri": "fd:kobako-snapshot"})),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let st = q.execute("query-migrate", None).await?;
            match st["status"].as_str().unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(qerr(format!(
                        "saving the VM state failed: {}",
                        st["error-desc"].as_str().unwrap_or("no reason given")
                    )))
                }
                _ if Instant::now() > deadline => {
                    let _ = q.execute("migrate_cancel", None).await;
                    return Err(qerr("saving the VM state took over 300 s; cancelled"));
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        // The RAM file, written by a (jailed) VM process: taken out without trusting its path.
        let ram = match shared_ram {
            Some(m) => {
                crate::jail::take_out(&m.path, &dest.join(RAM_FILE))?;
                Some(RAM_FILE)
            }
            None => None,
        };
        // Disks are flushed and inactive now: copy the writable ones.
        copy_disks(cfg, dest).map(|d| (d, ram))
    }
    .await;
    let paused_ms = t0.elapsed().as_millis() as u64;
    if was_running && !leave_paused {
        q.execute("cont", None).await?;
    }
    let ((root, extra), ram) = result?;
    write_manifest(
        vm,
        cfg,
        dest,
        Saved {
            runtime: "qemu",
            qemu_version: qemu_version(qemu),
            memory: "memory.bin",
            vmstate: None,
            ram,
            root,
            extra,
            paused_ms,
        },
    )
}

/// The snapshot file holding RAM that was a shared file.
pub const RAM_FILE: &str = "ram.bin";

/// QMP arguments that turn on `x-ignore-shared`: RAM in a shared file is not in the stream.
fn ignore_shared() -> serde_json::Value {
    serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
}

/// After a restore: starts reading the state, waits for QEMU to finish reading the state, then continues the guest (the
/// state carries the "stopped" run state of the moment it was saved). If QEMU ends on the way
/// (it refused the stream), the error carries its own words from `vm.log`.
pub async fn continue_restored(vm: &VmDir) -> Result<()> {
    let r = read_restored(vm).await;
    if r.is_err() {
        // Give a dying QEMU a moment to finish its last words and exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !vm.vm_pid().is_some_and(crate::vmdir::alive) {
            let said = crate::vmdir::tail(&vm.file("vm.log"), 5);
            if let (Err(e), false) = (&r, said.trim().is_empty()) {
                return Err(RuntimeError::ExitedEarly {
                    name: vm.name.clone(),
                    how: format!("QEMU ended while reading the snapshot: {e}"),
                    console: format!("VM process output:\n{said}"),
                });
            }
        }
    }
    r
}

async fn read_restored(vm: &VmDir) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut q = loop {
        match Qmp::connect(&vm.file("qmp.sock")).await {
            Ok(q) => break q,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    // QEMU waits (`-incoming defer`) for the capabilities the stream was saved with, then reads
    // it from the descriptor the supervisor opened.
    q.execute("migrate-set-capabilities", Some(ignore_shared()))
        .await?;
    q.execute(
        "migrate-incoming",
        Some(serde_json::json!({"uri": format!("fd:{}", crate::vmdir::INCOMING_FD)})),
    )
    .await?;
    loop {
        let st = q.execute("query-migrate", None).await?;
        match st["status"].as_str().unwrap_or("") {
            "completed" => break,
            "failed" | "cancelled" => {
                return Err(qerr(format!(
                    "VM '{}': reading the snapshot failed: {} (see {})",
                    vm.name,
                    st["error-desc"].as_str().unwrap_or("no reason given"),
                    vm.file("vm.log").display()
                )))
            }
            _ if Instant::now() > deadline => {
                return Err(qerr(format!(
                    "VM '{}': reading the snapshot took over 120 s",
                    vm.name
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let running = q.execute("query-status", None).await?["running"]
        .as_bool()
        .unwrap_or(false);
    if !running {
        q.execute("cont", None).await?;
    }
    Ok(())
}

/// Reads and checks a QEMU snapshot's manifest against this host. `verify` also checks the
/// memory and disk checksums (reads every byte).
pub fn load(qemu: &Path, dir: &Path, verify: bool) -> Result<Manifest> {
    let here = qemu_version(qemu);
    load_for(dir, "qemu", verify, |m| {
        (m.qemu_version != here).then(|| {
            format!(
                "made with '{}', this host has '{here}' (QEMU's state format is version-bound)",
                m.qemu_version
            )
        })
    })
}

/// The runtime that made the snapshot in `dir` ("qemu", "vmm"), to restore it with the same.
pub fn runtime_of(dir: &Path) -> Result<String> {
    read_manifest(dir).map(|m| m.runtime)
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    crate::vmdir::read_json(&dir.join(MANIFEST)).map_err(|e| {
        RuntimeError::Invalid(format!(
            "{} is not a kobako VM snapshot ({e})",
            dir.display()
        ))
    })
}

/// Reads and checks a snapshot's manifest for `runtime` on this host: kind, runtime, what
/// `engine` says (`Some(reason)` refuses: the runtime's own version rules), the kernel, every
/// file's size, and with `verify` every checksum (reads every byte).
pub(crate) fn load_for(
    dir: &Path,
    runtime: &str,
    verify: bool,
    engine: impl FnOnce(&Manifest) -> Option<String>,
) -> Result<Manifest> {
    let m = read_manifest(dir)?;
    let refuse = |why: String| {
        Err(RuntimeError::Invalid(format!(
            "snapshot {} cannot be restored here: {why}",
            dir.display()
        )))
    };
    if m.kind != KIND || m.format != 1 {
        return refuse(format!("unknown kind/format {} {}", m.kind, m.format));
    }
    if m.runtime != runtime {
        return refuse(format!(
            "it was made by the '{}' runtime, not '{runtime}' (restore it with --runtime {})",
            m.runtime, m.runtime
        ));
    }
    if let Some(why) = engine(&m) {
        return refuse(why);
    }
    match std::fs::metadata(&m.config.kernel) {
        Ok(md) if md.len() == m.kernel_size => {}
        Ok(_) => {
            return refuse(format!(
                "the kernel {} changed since the snapshot",
                m.config.kernel.display()
            ))
        }
        Err(e) => return refuse(format!("kernel {}: {e}", m.config.kernel.display())),
    }
    let mut files = vec![&m.memory];
    files.extend(m.vmstate.as_ref());
    files.extend(m.ram.as_ref());
    files.extend(m.root.as_ref());
    files.extend(m.extra.iter().map(|(_, f)| f));
    for f in files {
        let p = dir.join(&f.file);
        let size = match std::fs::metadata(&p) {
            Ok(md) => md.len(),
            Err(e) => return refuse(format!("{}: {e}", p.display())),
        };
        if size != f.size {
            return refuse(format!(
                "{} has {size} bytes, the manifest says {} (truncated or replaced)",
                f.file, f.size
            ));
        }
        if verify {
            let (_, sha) = sha256_file(&p)?;
            if sha != f.sha256 {
                return refuse(format!("{} does not match its checksum", f.file));
            }
        }
    }
    if verify {
        let (_, sha) = sha256_file(&m.config.kernel)?;
        if sha != m.kernel_sha256 {
            return refuse(format!(
                "the kernel {} changed since the snapshot",
                m.config.kernel.display()
            ));
        }
    }
    Ok(m)
}

/// The configuration that restores QEMU snapshot `dir` (manifest `m`) as VM `name`:
/// `-incoming` from its memory file, and (for disk-rooted VMs) a new qcow2 overlay on the
/// snapshot's root copy in `overlay_dir`, owned by the new VM. NICs, namespace and timeouts are
/// the caller's to adjust.
pub fn restore_config(
    dir: &Path,
    m: &Manifest,
    name: &str,
    overlay_dir: &Path,
) -> Result<VmConfig> {
    restore_config_with(dir, m, name, overlay_dir, dir.join(&m.memory.file), false)
}

/// [`restore_config`] for any runtime: `incoming` is what the runtime restores from (QEMU: the
/// memory file; vmm: the VM state file). With `same_formats` (the vmm runtime, whose restored
/// devices keep their image format and read-only flag) a raw root is copied rather than given
/// a qcow2 overlay, and a writable extra disk of the VM's own gets a private copy; otherwise
/// (QEMU) the root gets a qcow2 overlay whatever its format and private extra disks are used
/// read-only from the snapshot.
pub(crate) fn restore_config_with(
    dir: &Path,
    m: &Manifest,
    name: &str,
    overlay_dir: &Path,
    incoming: PathBuf,
    same_formats: bool,
) -> Result<VmConfig> {
    let mut cfg = m.config.clone();
    cfg.name = name.to_string();
    cfg.incoming = Some(incoming);
    cfg.owned_paths = Vec::new();
    // RAM saved as a file is mapped copy-on-write from it, never written; RAM in the stream
    // (every other snapshot, a clone's included) is plain memory again.
    cfg.memory_file = m.ram.as_ref().map(|r| crate::config::MemoryFile {
        path: dir.join(&r.file),
        shared: false,
    });
    // The stream names the RAM block after the backend the saved VM had: one whose RAM was a
    // file (a clone) is restored into a backend of the same name, anonymous this time.
    cfg.named_ram = m.ram.is_none() && (m.config.memory_file.is_some() || m.config.named_ram);
    // Whose and which lab's the restored VM is, is the restorer's to say.
    cfg.cgroups = Vec::new();
    let made = |cfg: &mut VmConfig| -> Result<()> {
        if !cfg.owned_paths.iter().any(|p| p == overlay_dir) {
            std::fs::create_dir_all(overlay_dir)
                .map_err(io(format!("create {}", overlay_dir.display())))?;
            cfg.owned_paths.push(overlay_dir.to_path_buf());
        }
        Ok(())
    };
    let result = (|| {
        for (i, f) in &m.extra {
            let Some(d) = cfg.extra_disks.get(*i).cloned() else {
                continue;
            };
            let copy = dir.join(&f.file);
            let path = if same_formats && !d.read_only {
                made(&mut cfg)?;
                let to = overlay_dir.join(&f.file);
                std::fs::copy(&copy, &to).map_err(io(format!(
                    "copy {} to {}",
                    copy.display(),
                    to.display()
                )))?;
                to
            } else {
                copy
            };
            let d = &mut cfg.extra_disks[*i];
            d.path = path;
            d.read_only = d.read_only || !same_formats;
        }
        let root_format = match &cfg.root {
            Root::Disk { format, .. } => Some(format.clone()),
            Root::Initramfs { .. } => None,
        };
        if let (Some(root), Some(format)) = (&m.root, root_format) {
            made(&mut cfg)?;
            let base: PathBuf = dir.join(&root.file);
            if same_formats && format != "qcow2" {
                let to = overlay_dir.join(format!("root.{format}"));
                std::fs::copy(&base, &to).map_err(io(format!(
                    "copy {} to {}",
                    base.display(),
                    to.display()
                )))?;
                cfg.root = Root::Disk {
                    path: to,
                    format,
                    read_only: false,
                };
            } else {
                let overlay = overlay_dir.join("root.qcow2");
                let out = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", &format, "-b"])
                    .arg(&base)
                    .arg(&overlay)
                    .output()
                    .map_err(io("run qemu-img (install qemu-utils)"))?;
                if !out.status.success() {
                    return Err(RuntimeError::Invalid(format!(
                        "qemu-img create {}: {}",
                        overlay.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                cfg.root = Root::Disk {
                    path: overlay,
                    format: "qcow2".into(),
                    read_only: false,
                };
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(cfg),
        Err(e) => {
            if cfg.owned_paths.iter().any(|p| p == overlay_dir) {
                let _ = std::fs::remove_dir_all(overlay_dir);
            }
            Err(e)
        }
    }
}

pub use crate::identity::{fresh_identity, host_random, NewIdentity};

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
