//! VM snapshots: memory + device state + writable disks of a running VM, restorable into a new
//! VM process (same or another name).
//!
//! A snapshot is a directory:
//! ```text
//! manifest.json   what it is and what it needs (runtime, versions, kernel, VM config, files)
//! memory.bin      QEMU's migration stream (RAM with zero pages elided + device state)
//! root.qcow2      the VM's writable root disk at that moment (absent for initramfs VMs)
//! ```
//! QEMU runtime: `stop`, then `migrate` to a file (QEMU 7.2's fastest form here: `exec:cat >
//! FILE`, bandwidth unlimited, one pass since the guest is stopped; completion flushes and
//! inactivates the disks, so copying them afterwards is consistent), copy the writable disks,
//! then `cont` unless asked to leave the VM paused. Restore starts a new QEMU with the snapshot's
//! configuration and `-incoming` from the memory file, its root disk a new qcow2 overlay on the
//! snapshot's copy (so a snapshot can be restored any number of times and stays unchanged).
//!
//! Restores are refused with the reason when the manifest does not match this host: another
//! runtime, another QEMU version (the migration stream is version-bound), a kernel file that
//! changed or vanished, a memory file of the wrong size.

use std::io::Read;
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
    pub qemu_version: String,
    pub kobako_version: String,
    pub created_ms: i64,
    /// The VM it was taken from.
    pub vm: String,
    /// Its configuration then (disks point at the originals; restore replaces the root).
    pub config: VmConfig,
    pub kernel_size: u64,
    pub kernel_sha256: String,
    pub memory: SnapFile,
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
    match take(qemu, vm, &cfg, dest, leave_paused).await {
        Ok(m) => Ok(m),
        Err(e) => {
            // A full disk shows up as a failed write somewhere (QEMU's, a copy's): say so.
            let free = free_bytes(dest);
            let _ = std::fs::remove_dir_all(dest);
            let need = u64::from(cfg.memory_mib) << 20;
            if let Some(free) = free.filter(|f| *f < need) {
                return Err(RuntimeError::Invalid(format!(
                "snapshot of VM '{}' failed: the file system of {} is full ({} MiB free; the snapshot needs up to {} MiB plus its disks): free space or choose another directory ({e})",
                vm.name,
                dest.display(),
                free >> 20,
                cfg.memory_mib
            )));
            }
            Err(e)
        }
    }
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
        q.execute(
            "migrate",
            Some(serde_json::json!({"uri": format!("exec:cat > '{}'", mem.display())})),
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
        // Disks are flushed and inactive now: copy the writable root.
        let root = match &cfg.root {
            Root::Disk {
                path, read_only, ..
            } if !read_only => {
                let to = dest.join("root.qcow2");
                std::fs::copy(path, &to).map_err(io(format!(
                    "copy {} to {}",
                    path.display(),
                    to.display()
                )))?;
                Some(to)
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
    .await;
    let paused_ms = t0.elapsed().as_millis() as u64;
    if was_running && !leave_paused {
        q.execute("cont", None).await?;
    }
    let (root, extra_files) = result?;
    let mut extra = Vec::new();
    for (i, name) in extra_files {
        let (size, sha256) = sha256_file(&dest.join(&name))?;
        extra.push((
            i,
            SnapFile {
                file: name,
                size,
                sha256,
            },
        ));
    }
    let (msize, msha) = sha256_file(&mem)?;
    let root = match root {
        Some(p) => {
            let (size, sha256) = sha256_file(&p)?;
            Some(SnapFile {
                file: "root.qcow2".into(),
                size,
                sha256,
            })
        }
        None => None,
    };
    let (kernel_size, kernel_sha256) = sha256_file(&cfg.kernel)?;
    let m = Manifest {
        kind: KIND.into(),
        format: 1,
        runtime: "qemu".into(),
        qemu_version: qemu_version(qemu),
        kobako_version: env!("CARGO_PKG_VERSION").into(),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        vm: vm.name.clone(),
        config: cfg.clone(),
        kernel_size,
        kernel_sha256,
        memory: SnapFile {
            file: "memory.bin".into(),
            size: msize,
            sha256: msha,
        },
        root,
        extra,
        paused_ms,
    };
    crate::vmdir::write_json(&dest.join(MANIFEST), &m)?;
    Ok(m)
}

/// After a restore: waits for QEMU to finish reading the state, then continues the guest (the
/// state carries the "stopped" run state of the moment it was saved).
pub async fn continue_restored(vm: &VmDir) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut q = loop {
        match Qmp::connect(&vm.file("qmp.sock")).await {
            Ok(q) => break q,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
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

/// Reads and checks a snapshot's manifest against this host. `verify` also checks the memory and
/// disk checksums (reads every byte).
pub fn load(qemu: &Path, dir: &Path, verify: bool) -> Result<Manifest> {
    let m: Manifest = crate::vmdir::read_json(&dir.join(MANIFEST)).map_err(|e| {
        RuntimeError::Invalid(format!(
            "{} is not a kobako VM snapshot ({e})",
            dir.display()
        ))
    })?;
    let refuse = |why: String| {
        Err(RuntimeError::Invalid(format!(
            "snapshot {} cannot be restored here: {why}",
            dir.display()
        )))
    };
    if m.kind != KIND || m.format != 1 {
        return refuse(format!("unknown kind/format {} {}", m.kind, m.format));
    }
    if m.runtime != "qemu" {
        return refuse(format!("it was made by the '{}' runtime", m.runtime));
    }
    let here = qemu_version(qemu);
    if m.qemu_version != here {
        return refuse(format!(
            "made with '{}', this host has '{here}' (QEMU's state format is version-bound)",
            m.qemu_version
        ));
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
    files.extend(m.root.as_ref());
    files.extend(m.extra.iter().map(|(_, f)| f));
    for f in files {
        let p = dir.join(&f.file);
        let size = std::fs::metadata(&p)
            .map(|md| md.len())
            .map_err(io(format!("snapshot file {}", p.display())))?;
        if size != f.size {
            return refuse(format!(
                "{} has {size} bytes, the manifest says {}",
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

/// The configuration that restores snapshot `dir` (manifest `m`) as VM `name`: `-incoming` from
/// its memory file, and (for disk-rooted VMs) a new qcow2 overlay on the snapshot's root copy in
/// `overlay_dir`, owned by the new VM. NICs, namespace and timeouts are the caller's to adjust.
pub fn restore_config(
    dir: &Path,
    m: &Manifest,
    name: &str,
    overlay_dir: &Path,
) -> Result<VmConfig> {
    let mut cfg = m.config.clone();
    cfg.name = name.to_string();
    cfg.incoming = Some(dir.join(&m.memory.file));
    cfg.owned_paths = Vec::new();
    for (i, f) in &m.extra {
        if let Some(d) = cfg.extra_disks.get_mut(*i) {
            d.path = dir.join(&f.file);
            d.read_only = true;
        }
    }
    let disk_rooted = matches!(cfg.root, Root::Disk { .. });
    if let (Some(root), true) = (&m.root, disk_rooted) {
        std::fs::create_dir_all(overlay_dir)
            .map_err(io(format!("create {}", overlay_dir.display())))?;
        let overlay = overlay_dir.join("root.qcow2");
        let base: PathBuf = dir.join(&root.file);
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay)
            .output()
            .map_err(io("run qemu-img (install qemu-utils)"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(overlay_dir);
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
        cfg.owned_paths.push(overlay_dir.to_path_buf());
    }
    Ok(cfg)
}

/// `n` bytes from the host's CSPRNG.
pub fn host_random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    if let Ok(mut r) = std::fs::File::open("/dev/urandom") {
        let _ = r.read_exact(&mut b);
    }
    b
}

/// What a restored guest is given by [`fresh_identity`].
#[derive(Debug, Clone, Default)]
pub struct NewIdentity {
    pub hostname: Option<String>,
    /// `(MAC in the snapshot, MAC of this VM)` per NIC.
    pub macs: Vec<(String, String)>,
    /// A new random machine-id (clones); a restored checkpoint keeps its own.
    pub machine_id: bool,
}

/// Gives a guest restored from a snapshot its own identity through the agent: the kernel RNG
/// reseeded from 64 bytes of the host's randomness, the host's clock (ns), and what `id` asks
/// (MACs, hostname, a new machine-id). Returns the machine-id given, if any.
///
/// Agents older than the `identity` message get the same through a shell (RNG: the bytes are
/// mixed into the pool without a forced reseed; MACs cannot be changed that way).
pub async fn fresh_identity(
    client: &crate::agent::AgentClient,
    id: &NewIdentity,
) -> Result<Option<String>> {
    let machine_id = id.machine_id.then(|| hex::encode(host_random(16)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let req = kobako_agent::proto::Identity {
        seed: hex::encode(host_random(64)),
        realtime_ns: Some(now.as_nanos() as u64),
        macs: id.macs.clone(),
        hostname: id.hostname.clone(),
        machine_id: machine_id.clone(),
    };
    match client.identity(req).await {
        Ok(()) => return Ok(machine_id),
        Err(RuntimeError::Agent(m)) if m.contains("unknown variant") => {}
        Err(e) => return Err(e),
    }
    if id.macs.iter().any(|(a, b)| !a.eq_ignore_ascii_case(b)) {
        return Err(RuntimeError::Agent(
            "the guest's kobako-agent is too old to change MAC addresses (rebuild the image)"
                .into(),
        ));
    }
    let mut script = format!(
        "echo {} > /dev/urandom; date -u -s @{} > /dev/null",
        hex::encode(host_random(64)),
        now.as_secs()
    );
    if let Some(h) = &id.hostname {
        script.push_str(&format!(
            "; hostname '{h}'; echo '{h}' > /etc/hostname 2>/dev/null"
        ));
    }
    if let Some(m) = &machine_id {
        script.push_str(&format!("; echo {m} > /etc/machine-id"));
    }
    let out = client
        .exec(kobako_agent::proto::ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script],
            env: Vec::new(),
            cwd: None,
            timeout_ms: Some(10_000),
            stdin: false,
            tty: None,
            user: None,
        })
        .await?;
    if out.code != Some(0) {
        return Err(RuntimeError::Agent(format!(
            "giving the restored guest its identity failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(machine_id)
}
