//! The runtime controller (Firecracker's `RuntimeApiController`): owns the running microVM
//! ([`BuiltVm`], whether it is running or paused, and the configuration it was built from)
//! and answers the actions valid after boot: live device updates, pause/resume,
//! Ctrl+Alt+Del, metrics and snapshot creation (in `persist.rs`). Pre-boot-only actions are
//! refused.

use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use super::rpc::{InstanceInfo, VmmAction, VmmActionError, VmmData, VmmResult};
use super::{flush_metrics, stop_of, InstanceState};
use crate::builder::BuiltVm;
use crate::config::*;
use crate::timing::BootTime;
use crate::vstate::vcpu::{kick_signal, VcpuCommand, VcpuControlError, VcpuEvent};

use super::persist::{self, CreateSnapshotError, LoadSnapshotError};

/// Answers API actions once the microVM is built.
#[derive(Debug)]
pub struct RuntimeApiController {
    pub(super) id: String,
    /// The configuration the VM was built from, with the live updates applied.
    pub(super) res: VmResources,
    pub(super) vm: BuiltVm,
    /// `Running` or `Paused`.
    pub(super) state: InstanceState,
    /// Set when a vCPU stopped while a request waited for the vCPUs.
    pending_exit: Option<i32>,
}

impl RuntimeApiController {
    /// The controller of `vm`, built from `res`, in `state` (`Running` or `Paused`).
    pub(super) fn new(id: &str, res: VmResources, vm: BuiltVm, state: InstanceState) -> Self {
        RuntimeApiController {
            id: id.to_string(),
            res,
            vm,
            state,
            pending_exit: None,
        }
    }

    /// The running microVM.
    pub fn vm(&self) -> &BuiltVm {
        &self.vm
    }

    /// The configuration of the running microVM.
    pub fn resources(&self) -> &VmResources {
        &self.res
    }

    /// When the guest signalled boot completion (or the snapshot load completed).
    pub fn boot_time(&self) -> Option<BootTime> {
        *self.vm.boot_time.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit code of a vCPU that stopped while a request waited for the vCPUs.
    pub fn pending_exit(&self) -> Option<i32> {
        self.pending_exit
    }

    /// Applies one action to the running microVM.
    pub fn handle(&mut self, action: VmmAction) -> VmmResult {
        use VmmAction as A;
        use VmmActionError as E;
        match action {
            A::GetInstanceInfo => Ok(VmmData::InstanceInformation(InstanceInfo::new(
                &self.id, self.state,
            ))),
            A::GetVersion => Ok(VmmData::VmmVersion(crate::VERSION)),
            A::GetMachineConfig => Ok(VmmData::MachineConfiguration(self.res.machine.clone())),
            A::GetFullConfig => Ok(VmmData::FullVmConfig(Box::new(self.res.to_full()))),
            A::PutMmds(_) | A::PatchMmds(_) | A::GetMmds => super::mmds_action(&self.res, action),
            A::PatchBalloon(_)
            | A::GetBalloon
            | A::GetBalloonStats
            | A::PatchBalloonStats(_)
            | A::StartBalloonHinting(_)
            | A::GetBalloonHinting
            | A::StopBalloonHinting => self.balloon(action),
            A::GetBootTime => self
                .boot_time()
                .map(VmmData::BootTime)
                .ok_or(E::BootNotSignalled),
            A::PatchDrive(id, d) => self.patch_drive(&id, d),
            A::PatchNet(id, n) => self.patch_net(&id, n),
            A::PatchPmem(id, u) => self.patch_pmem(&id, u),
            A::Action(ActionType::InstanceStart) => Err(E::AlreadyStarted),
            A::Action(ActionType::FlushMetrics) => {
                flush_metrics(&self.res, self.boot_time(), &self.id)
            }
            A::Action(ActionType::SendCtrlAltDel) => self
                .vm
                .i8042
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .trigger_ctrl_alt_del()
                .map(|()| VmmData::Empty)
                .map_err(E::CtrlAltDel),
            A::PatchVm(target) => self.patch_vm(target),
            A::SnapshotCreate(p) => {
                self.create_snapshot(p).map_err(E::CreateSnapshot)?;
                Ok(VmmData::Empty)
            }
            A::SnapshotLoad(_) => Err(E::LoadSnapshot(LoadSnapshotError::AlreadyStarted)),
            pre_boot @ (A::PutBootSource(_)
            | A::PutMachineConfig(_)
            | A::PatchMachineConfig(_)
            | A::PutDrive(..)
            | A::PutPmem(..)
            | A::PutNet(..)
            | A::PutVsock(_)
            | A::PutEntropy(_)
            | A::PutMetrics(_)
            | A::PutLogger(_)
            | A::PutSerial(_)
            | A::PutMmdsConfig(_)
            | A::PutBalloon(_)
            | A::PutCpuConfig(_)) => Err(E::OperationNotSupportedPostBoot(
                pre_boot.preboot_only().unwrap_or_default(),
            )),
        }
    }

    /// Post-boot `PATCH /drives/{id}`: validated against the configuration, applied to the
    /// live block device, then recorded.
    fn patch_drive(&mut self, id: &str, d: DriveUpdate) -> VmmResult {
        let mut res = self.res.clone();
        res.patch_drive(id, d.clone())?;
        crate::devices::virtio::setup::patch_drive(&self.vm.virtio, id, &d)
            .map_err(VmmActionError::DeviceUpdate)?;
        self.res = res;
        Ok(VmmData::Empty)
    }

    /// The balloon requests after boot, on the configuration and the live device.
    fn balloon(&mut self, action: VmmAction) -> VmmResult {
        use crate::devices::virtio::balloon::{pages_to_mib, STAT_NAMES};
        let Some(cfg) = self.res.balloon.clone() else {
            return Err(BalloonError::NotConfigured.into());
        };
        let mut res = self.res.clone();
        let data = crate::devices::virtio::setup::with_balloon(&self.vm.virtio, |b, notify| {
            Ok(match action {
                VmmAction::GetBalloon => VmmData::Balloon(cfg.clone()),
                VmmAction::PatchBalloon(u) => {
                    res.update_balloon(Some(u.amount_mib), None)?;
                    b.set_target_mib(u.amount_mib);
                    *notify = true;
                    VmmData::Empty
                }
                VmmAction::GetBalloonStats | VmmAction::PatchBalloonStats(_)
                    if !b.stats_enabled() =>
                {
                    return Err(BalloonError::StatsNotEnabled)
                }
                VmmAction::GetBalloonStats => {
                    let mut o = serde_json::Map::new();
                    let (target, actual) = (b.target_pages(), b.actual_pages());
                    o.insert("target_pages".into(), target.into());
                    o.insert("actual_pages".into(), actual.into());
                    o.insert("target_mib".into(), pages_to_mib(target).into());
                    o.insert("actual_mib".into(), pages_to_mib(actual).into());
                    for (name, v) in STAT_NAMES.iter().zip(b.stats().values) {
                        if let Some(v) = v {
                            o.insert((*name).into(), v.into());
                        }
                    }
                    VmmData::BalloonStats(serde_json::Value::Object(o))
                }
                VmmAction::PatchBalloonStats(u) => {
                    if u.stats_polling_interval_s == 0 {
                        return Err(BalloonError::StatsOnOff);
                    }
                    res.update_balloon(None, Some(u.stats_polling_interval_s))?;
                    b.set_stats_interval(u.stats_polling_interval_s);
                    VmmData::Empty
                }
                _ if !b.hinting_enabled() => return Err(BalloonError::HintingNotEnabled),
                VmmAction::StartBalloonHinting(c) => {
                    b.start_hinting(c.acknowledge_on_stop);
                    *notify = true;
                    VmmData::Empty
                }
                VmmAction::StopBalloonHinting => {
                    b.stop_hinting();
                    *notify = true;
                    VmmData::Empty
                }
                _ => VmmData::BalloonHinting(b.hinting_status()),
            })
        })
        .unwrap_or(Err(BalloonError::NotConfigured))?;
        self.res = res;
        Ok(data)
    }

    /// Post-boot `PATCH /pmem/{id}` (rate limiter): validated against the configuration,
    /// applied to the live device, then recorded.
    fn patch_pmem(&mut self, id: &str, u: PmemUpdate) -> VmmResult {
        let mut res = self.res.clone();
        res.patch_pmem(id, u.clone())?;
        crate::devices::virtio::setup::patch_pmem(&self.vm.virtio, id, &u)
            .map_err(VmmActionError::DeviceUpdate)?;
        self.res = res;
        Ok(VmmData::Empty)
    }

    /// Post-boot `PATCH /network-interfaces/{id}` (rate limiters).
    fn patch_net(&mut self, id: &str, n: NetworkInterfaceUpdate) -> VmmResult {
        let mut res = self.res.clone();
        res.patch_net(id, n.clone())?;
        crate::devices::virtio::setup::patch_net(&self.vm.virtio, id, &n)
            .map_err(VmmActionError::DeviceUpdate)?;
        self.res = res;
        Ok(VmmData::Empty)
    }

    /// `PATCH /vm`: pause or resume every vCPU (a no-op when already there).
    fn patch_vm(&mut self, target: VmStateName) -> VmmResult {
        let (cmd, to, what) = match (self.state, target) {
            (InstanceState::Running, VmStateName::Paused) => {
                (VcpuCommand::Pause, InstanceState::Paused, "paused")
            }
            (InstanceState::Paused, VmStateName::Resumed) => {
                (VcpuCommand::Resume, InstanceState::Running, "resumed")
            }
            _ => return Ok(VmmData::Empty),
        };
        self.vcpus_do(cmd).map_err(VmmActionError::VmState)?;
        self.state = to;
        crate::log_info!("microVM {what}");
        Ok(VmmData::Empty)
    }

    /// `PUT /snapshot/create`: the VM must be paused; the vCPUs save their state, then
    /// [`persist::write_snapshot`] writes both files. On failure the VM stays paused, unchanged.
    fn create_snapshot(&mut self, p: SnapshotCreateParams) -> Result<(), CreateSnapshotError> {
        persist::check_create(&p, self.state)?;
        let t0 = Instant::now();
        self.vcpus_do(VcpuCommand::Save)
            .map_err(CreateSnapshotError::Vcpus)?;
        persist::write_snapshot(&self.vm, &self.res, &p, t0)
    }

    /// Lets every (parked) vCPU thread run.
    pub(super) fn resume_all(&self) {
        for v in &self.vm.vcpus {
            let _ = v.commands.send(VcpuCommand::Resume);
        }
    }

    /// Sends `cmd` to every vCPU, kicks them out of KVM_RUN, and waits for each to confirm.
    pub(super) fn vcpus_do(&mut self, cmd: VcpuCommand) -> Result<(), VcpuControlError> {
        let r = self.vcpus_do_inner(cmd);
        match &r {
            Err((_, Some(code))) => self.pending_exit = Some(*code),
            Err((_, None)) if cmd == VcpuCommand::Pause => {
                // Some vCPUs may pause later (e.g. one blocked writing console output nobody
                // reads): queue a Resume behind the Pause so every vCPU ends up running, as the
                // unchanged state says.
                self.resume_all();
            }
            _ => {}
        }
        r.map_err(|(m, _)| m)
    }

    fn vcpus_do_inner(&self, cmd: VcpuCommand) -> Result<(), (VcpuControlError, Option<i32>)> {
        let vm = &self.vm;
        for v in &vm.vcpus {
            if v.commands.send(cmd).is_err() {
                return Err((VcpuControlError::ThreadExited, None));
            }
            // SAFETY: the pthread_t comes from a JoinHandle we still own, so the thread has not
            // been joined (detached or not, the id stays valid until join).
            unsafe { libc::pthread_kill(v.thread.as_pthread_t(), kick_signal()) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut acked = 0;
        while acked < vm.vcpus.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match vm.vcpu_events.recv_timeout(left) {
                Ok(VcpuEvent::Paused(_)) if cmd == VcpuCommand::Pause => acked += 1,
                Ok(VcpuEvent::Resumed(_)) if cmd == VcpuCommand::Resume => acked += 1,
                Ok(VcpuEvent::Saved(_)) if cmd == VcpuCommand::Save => acked += 1,
                Ok(ev @ VcpuEvent::Stopped(..)) => {
                    return Err((VcpuControlError::Stopped, stop_of(&ev)));
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Err((VcpuControlError::Timeout, None)),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err((VcpuControlError::ThreadsExited, None))
                }
            }
        }
        Ok(())
    }
}
