//! The pre-boot controller (Firecracker's `PrebootApiController`): owns the [`VmResources`]
//! being configured and answers the actions valid before boot; refuses the post-boot-only
//! ones. `InstanceStart` builds the microVM here (a snapshot load restores it with
//! `persist.rs`) and leaves a [`RuntimeApiController`] for the event loop to take.

use std::fs::OpenOptions;

use super::rpc::{InstanceInfo, VmmAction, VmmActionError, VmmData, VmmResult};
use super::{flush_metrics, persist, InstanceState, LoopIo, RuntimeApiController};
use crate::builder::{self, ExtraDevices};
use crate::config::*;
use crate::devices::serial::SerialOut;

/// Why `InstanceStart` failed (nothing was kept: a corrected one may succeed).
#[derive(Debug, thiserror::Error)]
pub enum StartMicrovmError {
    #[error("Cannot open the serial console output: {0}")]
    Console(std::io::Error),
    /// Building the microVM failed; the text is the whole error chain.
    #[error("{}", crate::error_chain(.0))]
    Build(builder::BuildError),
    /// Watching the VM's fds or closing the process failed.
    #[error("{0}")]
    Install(#[from] super::InstallError),
}

/// Answers API actions until a microVM is built.
pub struct PrebootApiController {
    pub(super) id: String,
    pub(super) res: VmResources,
    /// Devices a library user plugs in; taken by the first build attempt.
    extra: Option<ExtraDevices>,
    /// The microVM once `InstanceStart` or a snapshot load succeeded.
    pub(super) booted: Option<Box<RuntimeApiController>>,
}

impl std::fmt::Debug for PrebootApiController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrebootApiController")
            .field("id", &self.id)
            .field("res", &self.res)
            .finish_non_exhaustive()
    }
}

impl PrebootApiController {
    /// A controller for the instance `id`, starting from `res`.
    pub fn new(id: &str, res: VmResources, extra: ExtraDevices) -> Self {
        PrebootApiController {
            id: id.to_string(),
            res,
            extra: Some(extra),
            booted: None,
        }
    }

    /// The configuration so far.
    pub fn resources(&self) -> &VmResources {
        &self.res
    }

    /// The runtime controller, once an action booted the microVM.
    pub fn take_booted(&mut self) -> Option<Box<RuntimeApiController>> {
        self.booted.take()
    }

    /// Applies one action to the configuration; `InstanceStart` and `PUT /snapshot/load`
    /// build the microVM with `io`'s console and seccomp filters.
    pub(crate) fn handle(&mut self, action: VmmAction, io: &mut LoopIo) -> VmmResult {
        use VmmAction as A;
        use VmmActionError as E;
        let empty = |r: Result<(), ConfigError>| r.map(|()| VmmData::Empty).map_err(E::Config);
        match action {
            A::GetInstanceInfo => Ok(VmmData::InstanceInformation(InstanceInfo::new(
                &self.id,
                InstanceState::NotStarted,
            ))),
            A::GetVersion => Ok(VmmData::VmmVersion(crate::VERSION)),
            A::GetMachineConfig => Ok(VmmData::MachineConfiguration(self.res.machine.clone())),
            A::GetFullConfig => Ok(VmmData::FullVmConfig(Box::new(self.res.to_full()))),
            A::GetBootTime => Err(E::BootNotSignalled),
            A::PutMmds(_) | A::PatchMmds(_) | A::GetMmds => super::mmds_action(&self.res, action),
            A::PutMmdsConfig(c) => empty(self.res.set_mmds_config(c)),
            A::PutCpuConfig(c) => {
                self.res.set_cpu_config(c)?;
                Ok(VmmData::Empty)
            }
            A::PutBalloon(b) => {
                self.res.set_balloon(b)?;
                Ok(VmmData::Empty)
            }
            A::PatchBalloon(u) => {
                self.res.update_balloon(Some(u.amount_mib), None)?;
                Ok(VmmData::Empty)
            }
            A::PatchBalloonStats(u) => {
                self.res
                    .update_balloon(None, Some(u.stats_polling_interval_s))?;
                Ok(VmmData::Empty)
            }
            A::GetBalloon => match &self.res.balloon {
                Some(b) => Ok(VmmData::Balloon(b.clone())),
                None => Err(BalloonError::NotConfigured.into()),
            },
            A::GetBalloonStats
            | A::StartBalloonHinting(_)
            | A::GetBalloonHinting
            | A::StopBalloonHinting => Err(match &self.res.balloon {
                None => BalloonError::NotConfigured,
                Some(_) => BalloonError::NotStarted,
            }
            .into()),
            A::PutBootSource(b) => empty(self.res.set_boot_source(b)),
            A::PutMachineConfig(m) => empty(self.res.set_machine_config(m)),
            A::PatchMachineConfig(m) => empty(self.res.update_machine_config(m)),
            A::PutDrive(id, d) => empty(self.res.put_drive(&id, d)),
            A::PutPmem(id, p) => empty(self.res.put_pmem(&id, p)),
            A::PutNet(id, n) => empty(self.res.put_net(&id, n)),
            A::PutVsock(v) => empty(self.res.set_vsock(v)),
            A::PutEntropy(e) => {
                self.res.entropy = Some(e);
                Ok(VmmData::Empty)
            }
            A::PutMetrics(m) => self.put_metrics(m),
            A::PutLogger(l) => self.put_logger(l),
            A::PutSerial(s) => {
                self.res.serial = Some(s);
                Ok(VmmData::Empty)
            }
            // Firecracker: PATCH of drives and interfaces is post-boot only (it updates the
            // live device). Without block/net devices there is nothing to update yet.
            A::PatchDrive(..) => Err(E::OperationNotSupportedPreBoot("PATCH /drives")),
            A::PatchNet(..) => Err(E::OperationNotSupportedPreBoot("PATCH /network-interfaces")),
            A::PatchPmem(..) => Err(E::OperationNotSupportedPreBoot("PATCH /pmem")),
            A::Action(ActionType::InstanceStart) => {
                self.start(io).map_err(E::StartMicrovm)?;
                Ok(VmmData::Empty)
            }
            A::Action(ActionType::FlushMetrics) => flush_metrics(&self.res, None, &self.id),
            A::Action(ActionType::SendCtrlAltDel) => {
                Err(E::OperationNotSupportedPreBoot("SendCtrlAltDel"))
            }
            A::PatchVm(_) => Err(E::VmNotStarted),
            A::SnapshotCreate(p) => Err(E::CreateSnapshot(persist::refuse_before_boot(&p))),
            A::SnapshotLoad(p) => {
                self.load_snapshot(p, io).map_err(E::LoadSnapshot)?;
                Ok(VmmData::Empty)
            }
        }
    }

    /// `PUT /metrics`: the file must open for appending.
    fn put_metrics(&mut self, m: MetricsConfig) -> VmmResult {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.metrics_path)
        {
            Ok(_) => {
                self.res.metrics = Some(m);
                Ok(VmmData::Empty)
            }
            Err(source) => Err(VmmActionError::MetricsFile {
                path: m.metrics_path,
                source,
            }),
        }
    }

    /// `PUT /logger`: level and file apply at once.
    fn put_logger(&mut self, l: LoggerConfig) -> VmmResult {
        let level = match l.level.as_deref() {
            Some(s) => match crate::logger::Level::parse(s) {
                Some(v) => Some(v),
                None => return Err(VmmActionError::LogLevel(s.to_string())),
            },
            None => None,
        };
        if let Some(p) = &l.log_path {
            if let Err(e) = crate::logger::set_path(p) {
                return Err(VmmActionError::LogFile {
                    path: p.clone(),
                    source: e,
                });
            }
        }
        if let Some(v) = level {
            crate::logger::set_level(v);
        }
        self.res.logger = Some(l);
        Ok(VmmData::Empty)
    }

    /// `PUT /snapshot/load` (or `--snapshot-load`): [`persist::restore`], then the runtime
    /// controller of the restored VM, paused or resumed as asked.
    fn load_snapshot(
        &mut self,
        p: SnapshotLoadParams,
        io: &mut LoopIo,
    ) -> Result<(), persist::LoadSnapshotError> {
        let t0 = std::time::Instant::now();
        let restored = persist::restore(&mut self.res, &p, io)?;
        let state = if p.resume_vm {
            InstanceState::Running
        } else {
            InstanceState::Paused
        };
        let rt = RuntimeApiController::new(&self.id, restored.res, restored.vm, state);
        if p.resume_vm {
            rt.resume_all();
        }
        self.booted = Some(Box::new(rt));
        crate::log_info!(
            "snapshot loaded from {} in {} ms ({}; taken by kobako-vmm {})",
            p.snapshot_path.display(),
            t0.elapsed().as_millis(),
            if p.resume_vm { "running" } else { "paused" },
            restored.vmm_version
        );
        Ok(())
    }

    /// InstanceStart: build, register fds, seccomp, resume. On failure nothing is left
    /// behind, so that a corrected InstanceStart can succeed.
    fn start(&mut self, io: &mut LoopIo) -> Result<(), StartMicrovmError> {
        let res = self.res.clone();
        let out = io.serial_out(&res).map_err(StartMicrovmError::Console)?;
        let use_stdin = matches!(out, SerialOut::Stdout(_));
        let extra = self.extra.take().unwrap_or_default();
        let vm = match builder::build(&self.res, out, io.filters.as_ref(), extra) {
            Ok(vm) => vm,
            Err(e) => {
                io.drop_console();
                return Err(StartMicrovmError::Build(e));
            }
        };
        io.install(&vm, use_stdin)?;
        let rt = RuntimeApiController::new(&self.id, res, vm, InstanceState::Running);
        rt.resume_all();
        self.booted = Some(Box::new(rt));
        crate::log_info!("microVM started");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::epoll::Epoll;

    fn io() -> LoopIo {
        LoopIo {
            epoll: Epoll::new().unwrap(),
            console: None,
            stdin_open: false,
            filters: None,
        }
    }

    fn refusal(r: VmmResult) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn answers_before_boot_and_refuses_post_boot_actions() {
        let mut io = io();
        let mut p = PrebootApiController::new("vm1", VmResources::default(), Default::default());
        let Ok(VmmData::InstanceInformation(i)) = p.handle(VmmAction::GetInstanceInfo, &mut io)
        else {
            panic!()
        };
        assert_eq!((i.id.as_str(), i.state), ("vm1", InstanceState::NotStarted));
        assert!(matches!(
            p.handle(VmmAction::PutEntropy(EntropyConfig::default()), &mut io),
            Ok(VmmData::Empty)
        ));
        assert!(p.resources().entropy.is_some());
        let patch: DriveUpdate = serde_json::from_str(r#"{"drive_id":"d"}"#).unwrap();
        assert_eq!(
            refusal(p.handle(VmmAction::PatchDrive("d".into(), patch), &mut io)),
            "The requested operation is not supported before starting the microVM: PATCH /drives."
        );
        assert_eq!(
            refusal(p.handle(VmmAction::PatchVm(VmStateName::Paused), &mut io)),
            "The requested operation is not supported before starting the microVM."
        );
        assert_eq!(
            refusal(p.handle(VmmAction::Action(ActionType::FlushMetrics), &mut io)),
            "The metrics system is not configured: PUT /metrics first."
        );
        assert_eq!(
            refusal(p.handle(VmmAction::GetBootTime, &mut io)),
            "The guest has not signalled boot completion yet."
        );
        let create = |t: &str| -> SnapshotCreateParams {
            serde_json::from_str(&format!(
                r#"{{"snapshot_type":"{t}","snapshot_path":"/s","mem_file_path":"/m"}}"#
            ))
            .unwrap()
        };
        assert!(
            refusal(p.handle(VmmAction::SnapshotCreate(create("Diff")), &mut io))
                .starts_with("Diff snapshots are not supported")
        );
        assert_eq!(
            refusal(p.handle(VmmAction::SnapshotCreate(create("Full")), &mut io)),
            "The microVM has not started: there is nothing to snapshot yet."
        );
        assert!(p.take_booted().is_none());
    }
}
