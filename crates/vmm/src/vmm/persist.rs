//! Snapshot requests (Firecracker's `persist.rs`): `PUT /snapshot/create` collects the paused
//! VM's state and writes both files ([`write_snapshot`], called by the runtime controller once
//! the vCPUs have saved theirs), `PUT /snapshot/load` (or `--snapshot-load`) builds a new
//! microVM from them with the load's overrides ([`restore`], called by the pre-boot
//! controller, which hands the VM to a new runtime controller). The file format and the memory
//! mapping are [`crate::snapshot`]'s; this owns the rules for when a snapshot may be taken or
//! loaded and what the restored configuration is. It knows neither controller. Runs on the
//! event loop thread.

use std::path::PathBuf;
use std::time::Instant;

use super::{InstanceState, LoopIo};
use crate::builder::{self, BuiltVm};
use crate::config::ConfigError;
use crate::config::*;
use crate::devices::serial::SerialOut;
use crate::snapshot::SnapshotError;
use crate::vstate::vcpu::VcpuControlError;
use crate::vstate::vcpu_state::VcpuStateError;

/// Why `PUT /snapshot/create` failed (the VM stays as it was).
#[derive(Debug, thiserror::Error)]
pub enum CreateSnapshotError {
    #[error("Diff snapshots are not supported by kobako-vmm: use \"snapshot_type\": \"Full\".")]
    DiffNotSupported,
    #[error("The microVM has not started: there is nothing to snapshot yet.")]
    NotStarted,
    #[error(
        "The microVM must be paused to take a snapshot: PATCH /vm {{\"state\": \"Paused\"}} first."
    )]
    NotPaused,
    /// The vCPUs did not answer the save request.
    #[error("{0}")]
    Vcpus(VcpuControlError),
    #[error("Cannot read a vCPU's state: {0}")]
    VcpuState(VcpuStateError),
    #[error("A vCPU did not report its state.")]
    VcpuNoState,
    /// A device's pending I/O could not be written out.
    #[error("Cannot flush device {device}: {source}")]
    FlushDevice {
        device: String,
        source: std::io::Error,
    },
    /// KVM would not give the VM-wide state (the text is the full error chain).
    #[error("Cannot read the VM's state: {0}")]
    VmState(String),
    #[error("Cannot write the memory file {}: {source}; free space or choose another path (nothing was kept).", path.display())]
    MemoryFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot write the snapshot file {}: {source}; free space or choose another path (nothing was kept).", path.display())]
    StateFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why `PUT /snapshot/load` (or `--snapshot-load`) failed (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    #[error("Loading a snapshot is only allowed before the microVM is configured (logger, metrics and serial may be set): the snapshot brings its own configuration; use network_overrides, vsock_override and drive_overrides to change where it connects.")]
    AlreadyConfigured,
    #[error(
        "A snapshot can only be loaded into a new kobako-vmm process: this microVM has started."
    )]
    AlreadyStarted,
    /// The load parameters were refused.
    #[error("{0}")]
    Params(ConfigError),
    /// The state or memory file is unusable.
    #[error("{0}")]
    File(#[from] SnapshotError),
    #[error("network_overrides names interface {iface_id:?}, which the snapshot does not have (it has: {has})")]
    UnknownInterface { iface_id: String, has: String },
    #[error("drive_overrides names drive {drive_id:?}, which the snapshot does not have (it has: {has})")]
    UnknownDrive { drive_id: String, has: String },
    #[error("vsock_override given, but the snapshot's microVM has no vsock device.")]
    NoVsock,
    #[error("the snapshot is inconsistent: {config_mib} MiB configured, {state_mib} MiB of memory state")]
    Inconsistent { config_mib: u64, state_mib: u64 },
    #[error("the snapshot's configuration cannot be used here: {0}")]
    Config(ConfigError),
    #[error("Cannot open the serial console output: {0}")]
    Console(std::io::Error),
    /// Building the microVM from the state failed (the text is the full error chain).
    #[error("Cannot load snapshot {}: {chain}", path.display())]
    Restore { path: PathBuf, chain: String },
    /// Watching the new VM's fds or closing the process failed.
    #[error("{0}")]
    Install(#[from] super::InstallError),
}

/// A `Diff` snapshot is refused, before or after boot.
fn refuse_diff(p: &SnapshotCreateParams) -> Result<(), CreateSnapshotError> {
    if p.snapshot_type == SnapshotType::Diff {
        return Err(CreateSnapshotError::DiffNotSupported);
    }
    Ok(())
}

/// Why `PUT /snapshot/create` fails before boot.
pub(super) fn refuse_before_boot(p: &SnapshotCreateParams) -> CreateSnapshotError {
    match refuse_diff(p) {
        Err(e) => e,
        Ok(()) => CreateSnapshotError::NotStarted,
    }
}

/// Whether `PUT /snapshot/create` may go on: a `Full` snapshot of a paused VM.
pub(super) fn check_create(
    p: &SnapshotCreateParams,
    state: InstanceState,
) -> Result<(), CreateSnapshotError> {
    refuse_diff(p)?;
    if state != InstanceState::Paused {
        return Err(CreateSnapshotError::NotPaused);
    }
    Ok(())
}

/// `PUT /snapshot/create` once the paused vCPUs have saved their state (`t0`: when the request
/// was accepted): writes the memory file, then the state file (so a state file on disk always
/// has its memory beside it). On failure both are removed.
pub(super) fn write_snapshot(
    vm: &BuiltVm,
    res: &VmResources,
    p: &SnapshotCreateParams,
    t0: Instant,
) -> Result<(), CreateSnapshotError> {
    let st = collect_state(vm, res)?;
    let cleanup = || {
        let _ = std::fs::remove_file(&p.mem_file_path);
        let _ = std::fs::remove_file(&p.snapshot_path);
    };
    let written =
        crate::snapshot::write_memory(&vm.vm.memory, &p.mem_file_path).map_err(|source| {
            cleanup();
            CreateSnapshotError::MemoryFile {
                path: p.mem_file_path.clone(),
                source,
            }
        })?;
    crate::snapshot::write_state(&p.snapshot_path, &st).map_err(|source| {
        cleanup();
        CreateSnapshotError::StateFile {
            path: p.snapshot_path.clone(),
            source,
        }
    })?;
    crate::log_info!(
        "snapshot created: {} + {} ({} KiB of {} MiB RAM written) in {} ms",
        p.snapshot_path.display(),
        p.mem_file_path.display(),
        written >> 10,
        st.mem_bytes >> 20,
        t0.elapsed().as_millis()
    );
    Ok(())
}

/// Everything but RAM from the paused VM whose vCPUs have saved their state (devices flushed
/// first).
fn collect_state(
    vm: &BuiltVm,
    res: &VmResources,
) -> Result<crate::snapshot::MicrovmState, CreateSnapshotError> {
    let mut vcpus = Vec::with_capacity(vm.vcpus.len());
    for v in &vm.vcpus {
        match v.saved.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(Ok(s)) => vcpus.push(s),
            Some(Err(e)) => return Err(CreateSnapshotError::VcpuState(e)),
            None => return Err(CreateSnapshotError::VcpuNoState),
        }
    }
    let mut virtio = Vec::with_capacity(vm.virtio.len());
    for slot in &vm.virtio {
        let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        t.flush()
            .map_err(|source| CreateSnapshotError::FlushDevice {
                device: format!("{:?}", slot.id),
                source,
            })?;
        virtio.push((format!("{:?}", slot.id), t.save()));
    }
    let vm_state = vm
        .vm
        .save_state()
        .map_err(|e| CreateSnapshotError::VmState(crate::error_chain(&e)))?;
    let mut config = res.to_full();
    config.logger = None;
    config.metrics = None;
    config.serial = None;
    let created_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let serial = vm.serial.lock().unwrap_or_else(|e| e.into_inner()).save();
    let i8042 = vm.i8042.lock().unwrap_or_else(|e| e.into_inner()).save();
    Ok(crate::snapshot::MicrovmState {
        vmm_version: crate::VERSION.to_string(),
        created_unix_ms,
        cpu_vendor: crate::snapshot::cpu_vendor(),
        pvm: crate::arch::cpuid::host_is_pvm(),
        config,
        mem_bytes: res.machine.mem_size_mib << 20,
        vm: vm_state,
        vcpus,
        serial,
        i8042,
        virtio,
    })
}

/// A microVM restored by [`restore`], not yet given to a runtime controller.
pub(super) struct Restored {
    pub(super) res: VmResources,
    pub(super) vm: BuiltVm,
    /// The kobako-vmm version that took the snapshot.
    pub(super) vmm_version: String,
}

/// `PUT /snapshot/load` (or `--snapshot-load`): a new microVM from a snapshot, before anything
/// else was configured (`current`: the pre-boot configuration; it becomes the snapshot's once
/// the VM is built, before its fds are installed). Nothing changes when it fails before that.
pub(super) fn restore(
    current: &mut VmResources,
    p: &SnapshotLoadParams,
    io: &mut LoopIo,
) -> Result<Restored, LoadSnapshotError> {
    let r = &*current;
    if r.boot_source.is_some()
        || !r.drives.is_empty()
        || !r.pmem.is_empty()
        || !r.net.is_empty()
        || r.vsock.is_some()
        || r.mmds_config.is_some()
        || r.balloon.is_some()
        || r.entropy.is_some()
        || r.machine != MachineConfig::default()
    {
        return Err(LoadSnapshotError::AlreadyConfigured);
    }
    p.check_supported().map_err(LoadSnapshotError::Params)?;
    if p.enable_diff_snapshots || p.track_dirty_pages {
        crate::log_info!("snapshot load: dirty pages are not tracked (Diff snapshots are refused); enable_diff_snapshots/track_dirty_pages ignored");
    }
    let mem_path = p
        .memory_file()
        .map_err(LoadSnapshotError::Params)?
        .to_path_buf();
    let st = crate::snapshot::read_state(&p.snapshot_path)?;
    let mem = crate::snapshot::open_memory(&mem_path, st.mem_bytes)?;
    let res = restored_resources(current, &st, p)?;
    let out = io.serial_out(&res).map_err(LoadSnapshotError::Console)?;
    let use_stdin = matches!(out, SerialOut::Stdout(_));
    let vm = match builder::restore(&res, out, io.filters.as_ref(), &st, &mem) {
        Ok(vm) => vm,
        Err(e) => {
            io.drop_console();
            return Err(LoadSnapshotError::Restore {
                path: p.snapshot_path.clone(),
                chain: crate::error_chain(&e),
            });
        }
    };
    // The guest has booted already: "boot complete" is now, for whoever waits for it.
    *vm.boot_time.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::timing::BootTime::now());
    // Recorded before the install: the configuration is the snapshot's from here on.
    *current = res.clone();
    io.install(&vm, use_stdin)?;
    Ok(Restored {
        res,
        vm,
        vmm_version: st.vmm_version,
    })
}

/// The snapshot's configuration with the load's overrides, validated; logger and metrics stay
/// this process's (`current`), the console is the load's or this process's.
fn restored_resources(
    current: &VmResources,
    st: &crate::snapshot::MicrovmState,
    p: &SnapshotLoadParams,
) -> Result<VmResources, LoadSnapshotError> {
    let mut cfg = st.config.clone();
    for o in &p.network_overrides {
        let Some(n) = cfg
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
        else {
            return Err(LoadSnapshotError::UnknownInterface {
                iface_id: o.iface_id.clone(),
                has: names(cfg.network_interfaces.iter().map(|n| n.iface_id.as_str())),
            });
        };
        n.host_dev_name = o.host_dev_name.clone();
    }
    for o in &p.drive_overrides {
        let Some(d) = cfg.drives.iter_mut().find(|d| d.drive_id == o.drive_id) else {
            return Err(LoadSnapshotError::UnknownDrive {
                drive_id: o.drive_id.clone(),
                has: names(cfg.drives.iter().map(|d| d.drive_id.as_str())),
            });
        };
        d.path_on_host = Some(o.path_on_host.clone());
    }
    if let Some(o) = &p.vsock_override {
        match &mut cfg.vsock {
            Some(v) => v.uds_path = o.uds_path.clone(),
            None => return Err(LoadSnapshotError::NoVsock),
        }
    }
    let mem_mib = cfg.machine_config.as_ref().map_or(0, |m| m.mem_size_mib);
    if mem_mib << 20 != st.mem_bytes {
        return Err(LoadSnapshotError::Inconsistent {
            config_mib: mem_mib,
            state_mib: st.mem_bytes >> 20,
        });
    }
    let mut res = VmResources::from_snapshot(cfg).map_err(LoadSnapshotError::Config)?;
    res.logger = current.logger.clone();
    res.metrics = current.metrics.clone();
    res.serial = p.serial.clone().or_else(|| current.serial.clone());
    // The snapshot brings the MMDS configuration, not its data (as Firecracker): the process's
    // store (filled before the load, or after it) serves the restored guest.
    res.mmds = current.mmds.clone();
    if let Some(m) = &res.mmds_config {
        res.mmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .configure(m.version, m.imds_compat);
    }
    Ok(res)
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
