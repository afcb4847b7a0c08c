//! Snapshot requests (Firecracker's `persist.rs`): `PUT /snapshot/create` collects the paused
//! VM's state and writes both files (the [`RuntimeApiController`]'s), `PUT /snapshot/load` (or
//! `--snapshot-load`) builds a new microVM from them with the load's overrides (the
//! [`PrebootApiController`]'s). The file format and the memory mapping are
//! [`crate::snapshot`]'s; this owns the rules for when a snapshot may be taken or loaded and
//! what the restored configuration is. Runs on the event loop thread.

use std::time::Instant;

use super::{InstanceState, LoopIo, PrebootApiController, RuntimeApiController};
use crate::builder;
use crate::config::*;
use crate::devices::serial::SerialOut;
use crate::vstate::vcpu::VcpuCommand;

/// A `Diff` snapshot is refused, before or after boot.
fn refuse_diff(p: &SnapshotCreateParams) -> Result<(), String> {
    if p.snapshot_type == SnapshotType::Diff {
        return Err(
            "Diff snapshots are not supported by kobako-vmm: use \"snapshot_type\": \"Full\"."
                .into(),
        );
    }
    Ok(())
}

/// Why `PUT /snapshot/create` fails before boot.
pub(super) fn refuse_before_boot(p: &SnapshotCreateParams) -> String {
    match refuse_diff(p) {
        Err(e) => e,
        Ok(()) => "The microVM has not started: there is nothing to snapshot yet.".into(),
    }
}

impl RuntimeApiController {
    /// `PUT /snapshot/create`: the VM must be paused; writes the memory file, then the state
    /// file (so a state file on disk always has its memory beside it). On failure both are
    /// removed and the VM stays paused, unchanged.
    pub(super) fn create_snapshot(&mut self, p: SnapshotCreateParams) -> Result<(), String> {
        refuse_diff(&p)?;
        if self.state != InstanceState::Paused {
            return Err("The microVM must be paused to take a snapshot: PATCH /vm {\"state\": \"Paused\"} first.".into());
        }
        let t0 = Instant::now();
        let st = self.collect_state()?;
        let vm = &self.vm;
        let cleanup = || {
            let _ = std::fs::remove_file(&p.mem_file_path);
            let _ = std::fs::remove_file(&p.snapshot_path);
        };
        let written = crate::snapshot::write_memory(&vm.vm.memory, &p.mem_file_path).map_err(|e| {
            cleanup();
            format!(
                "Cannot write the memory file {}: {e}; free space or choose another path (nothing was kept).",
                p.mem_file_path.display()
            )
        })?;
        crate::snapshot::write_state(&p.snapshot_path, &st).map_err(|e| {
            cleanup();
            format!(
                "Cannot write the snapshot file {}: {e}; free space or choose another path (nothing was kept).",
                p.snapshot_path.display()
            )
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

    /// Reads everything but RAM from the paused VM (devices flushed first).
    fn collect_state(&mut self) -> Result<crate::snapshot::MicrovmState, String> {
        self.vcpus_do(VcpuCommand::Save)?;
        let vm = &self.vm;
        let mut vcpus = Vec::with_capacity(vm.vcpus.len());
        for v in &vm.vcpus {
            match v.saved.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(Ok(s)) => vcpus.push(s),
                Some(Err(e)) => return Err(format!("Cannot read a vCPU's state: {e}")),
                None => return Err("A vCPU did not report its state.".into()),
            }
        }
        let mut virtio = Vec::with_capacity(vm.virtio.len());
        for slot in &vm.virtio {
            let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
            t.flush()
                .map_err(|e| format!("Cannot flush device {:?}: {e}", slot.id))?;
            virtio.push((format!("{:?}", slot.id), t.save()));
        }
        let vm_state = vm
            .vm
            .save_state()
            .map_err(|e| format!("Cannot read the VM's state: {}", crate::error_chain(&e)))?;
        let mut config = self.res.to_full();
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
            mem_bytes: self.res.machine.mem_size_mib << 20,
            vm: vm_state,
            vcpus,
            serial,
            i8042,
            virtio,
        })
    }
}

impl PrebootApiController {
    /// `PUT /snapshot/load` (or `--snapshot-load`): a new microVM from a snapshot, before
    /// anything else was configured. Nothing changes when it fails.
    pub(super) fn load_snapshot(
        &mut self,
        p: SnapshotLoadParams,
        io: &mut LoopIo,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        let r = &self.res;
        if r.boot_source.is_some()
            || !r.drives.is_empty()
            || !r.net.is_empty()
            || r.vsock.is_some()
            || r.entropy.is_some()
            || r.machine != MachineConfig::default()
        {
            return Err("Loading a snapshot is only allowed before the microVM is configured (logger, metrics and serial may be set): the snapshot brings its own configuration; use network_overrides, vsock_override and drive_overrides to change where it connects.".into());
        }
        p.check_supported().map_err(|e| e.to_string())?;
        if p.enable_diff_snapshots || p.track_dirty_pages {
            crate::log_info!("snapshot load: dirty pages are not tracked (Diff snapshots are refused); enable_diff_snapshots/track_dirty_pages ignored");
        }
        let mem_path = p.memory_file().map_err(|e| e.to_string())?.to_path_buf();
        let st = crate::snapshot::read_state(&p.snapshot_path)?;
        let mem = crate::snapshot::open_memory(&mem_path, st.mem_bytes)?;
        let res = self.restored_resources(&st, &p)?;
        let out = io
            .serial_out(&res)
            .map_err(|e| format!("Cannot open the serial console output: {e}"))?;
        let use_stdin = matches!(out, SerialOut::Stdout(_));
        let vm = match builder::restore(&res, out, io.filters.as_ref(), &st, &mem) {
            Ok(vm) => vm,
            Err(e) => {
                io.drop_console();
                return Err(format!(
                    "Cannot load snapshot {}: {}",
                    p.snapshot_path.display(),
                    crate::error_chain(&e)
                ));
            }
        };
        // The guest has booted already: "boot complete" is now, for whoever waits for it.
        *vm.boot_time.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::devices::boot_timer::BootTime::now());
        // Recorded before the install: the configuration is the snapshot's from here on.
        self.res = res.clone();
        io.install(&vm, use_stdin)?;
        let state = if p.resume_vm {
            InstanceState::Running
        } else {
            InstanceState::Paused
        };
        let rt = RuntimeApiController::new(&self.id, res, vm, state);
        if p.resume_vm {
            rt.resume_all();
        }
        self.booted = Some(Box::new(rt));
        crate::log_info!(
            "snapshot loaded from {} in {} ms ({}; taken by kobako-vmm {})",
            p.snapshot_path.display(),
            t0.elapsed().as_millis(),
            if p.resume_vm { "running" } else { "paused" },
            st.vmm_version
        );
        Ok(())
    }

    /// The snapshot's configuration with the load's overrides, validated; logger and metrics
    /// stay this process's, the console is the load's or this process's.
    fn restored_resources(
        &self,
        st: &crate::snapshot::MicrovmState,
        p: &SnapshotLoadParams,
    ) -> Result<VmResources, String> {
        let mut cfg = st.config.clone();
        for o in &p.network_overrides {
            let Some(n) = cfg
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
            else {
                return Err(format!(
                    "network_overrides names interface {:?}, which the snapshot does not have (it has: {})",
                    o.iface_id,
                    names(cfg.network_interfaces.iter().map(|n| n.iface_id.as_str()))
                ));
            };
            n.host_dev_name = o.host_dev_name.clone();
        }
        for o in &p.drive_overrides {
            let Some(d) = cfg.drives.iter_mut().find(|d| d.drive_id == o.drive_id) else {
                return Err(format!(
                    "drive_overrides names drive {:?}, which the snapshot does not have (it has: {})",
                    o.drive_id,
                    names(cfg.drives.iter().map(|d| d.drive_id.as_str()))
                ));
            };
            d.path_on_host = Some(o.path_on_host.clone());
        }
        if let Some(o) = &p.vsock_override {
            match &mut cfg.vsock {
                Some(v) => v.uds_path = o.uds_path.clone(),
                None => {
                    return Err(
                        "vsock_override given, but the snapshot's microVM has no vsock device."
                            .into(),
                    )
                }
            }
        }
        let mem_mib = cfg.machine_config.as_ref().map_or(0, |m| m.mem_size_mib);
        if mem_mib << 20 != st.mem_bytes {
            return Err(format!(
                "the snapshot is inconsistent: {} MiB configured, {} MiB of memory state",
                mem_mib,
                st.mem_bytes >> 20
            ));
        }
        let mut res = VmResources::from_snapshot(cfg)
            .map_err(|e| format!("the snapshot's configuration cannot be used here: {e}"))?;
        res.logger = self.res.logger.clone();
        res.metrics = self.res.metrics.clone();
        res.serial = p.serial.clone().or_else(|| self.res.serial.clone());
        Ok(res)
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
