//! The VMM's request interface (Firecracker's `rpc_interface.rs`): what the API thread may ask
//! ([`VmmAction`]), what the event loop answers when it succeeds ([`VmmData`], typed, turned
//! into JSON by [`crate::api`]) and why it refuses ([`VmmActionError`], whose text is the
//! `fault_message`). Which actions are valid before and after boot is decided by the two
//! controllers, [`super::preboot::PrebootApiController`] and
//! [`super::runtime::RuntimeApiController`].

use std::path::PathBuf;

use crate::config::*;
use crate::timing::BootTime;

use super::InstanceState;

/// A well-formed API request for the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    GetFullConfig,
    GetBootTime,
    PutBootSource(BootSource),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutDrive(String, Drive),
    PatchDrive(String, DriveUpdate),
    PutPmem(String, Pmem),
    PatchPmem(String, PmemUpdate),
    PutNet(String, NetworkInterface),
    PatchNet(String, NetworkInterfaceUpdate),
    PutVsock(Vsock),
    PutEntropy(EntropyConfig),
    PutMetrics(MetricsConfig),
    PutLogger(LoggerConfig),
    PutSerial(SerialConfig),
    Action(ActionType),
    PatchVm(VmStateName),
    SnapshotCreate(SnapshotCreateParams),
    SnapshotLoad(SnapshotLoadParams),
    PutMmds(serde_json::Value),
    PatchMmds(serde_json::Value),
    GetMmds,
    PutMmdsConfig(MmdsConfig),
    PutBalloon(BalloonConfig),
    PutCpuConfig(crate::arch::cpu_template::CpuConfig),
    PatchBalloon(BalloonUpdate),
    GetBalloon,
    GetBalloonStats,
    PatchBalloonStats(BalloonStatsUpdate),
    StartBalloonHinting(BalloonStartCmd),
    GetBalloonHinting,
    StopBalloonHinting,
}

impl VmmAction {
    /// The request as named in the refusal of a pre-boot-only request after boot (`None`:
    /// the request is not pre-boot only).
    pub fn preboot_only(&self) -> Option<&'static str> {
        Some(match self {
            VmmAction::PutBootSource(_) => "PUT /boot-source",
            VmmAction::PutMachineConfig(_) => "PUT /machine-config",
            VmmAction::PatchMachineConfig(_) => "PATCH /machine-config",
            VmmAction::PutDrive(..) => "PUT /drives",
            VmmAction::PutPmem(..) => "PUT /pmem",
            VmmAction::PutNet(..) => "PUT /network-interfaces",
            VmmAction::PutVsock(_) => "PUT /vsock",
            VmmAction::PutEntropy(_) => "PUT /entropy",
            VmmAction::PutMetrics(_) => "PUT /metrics",
            VmmAction::PutLogger(_) => "PUT /logger",
            VmmAction::PutSerial(_) => "PUT /serial",
            VmmAction::PutMmdsConfig(_) => "PUT /mmds/config",
            VmmAction::PutBalloon(_) => "PUT /balloon",
            VmmAction::PutCpuConfig(_) => "PUT /cpu-config",
            _ => return None,
        })
    }
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: &'static str,
    pub app_name: &'static str,
}

impl InstanceInfo {
    /// This process's answer for the instance `id` in `state`.
    pub fn new(id: &str, state: InstanceState) -> Self {
        InstanceInfo {
            id: id.to_string(),
            state,
            vmm_version: crate::VERSION,
            app_name: "kobako-vmm",
        }
    }
}

/// A successful action's answer.
#[derive(Debug, Clone)]
pub enum VmmData {
    /// Done, nothing to tell (204).
    Empty,
    /// `GET /`.
    InstanceInformation(InstanceInfo),
    /// `GET /version`.
    VmmVersion(&'static str),
    /// `GET /machine-config`.
    MachineConfiguration(MachineConfig),
    /// `GET /vm/config`.
    FullVmConfig(Box<FullConfig>),
    /// `GET /kobako/boot-time`.
    BootTime(BootTime),
    /// `GET /mmds`.
    MmdsValue(serde_json::Value),
    /// `GET /balloon`.
    Balloon(BalloonConfig),
    /// `GET /balloon/statistics` (Firecracker's field names).
    BalloonStats(serde_json::Value),
    /// `GET /balloon/hinting/status`.
    BalloonHinting(crate::devices::virtio::balloon::HintingStatus),
}

/// Why an action was refused. Every case is a 400 whose `fault_message` is the `Display`
/// text.
#[derive(Debug, thiserror::Error)]
pub enum VmmActionError {
    /// A pre-boot-only request after `InstanceStart` (or a snapshot load).
    #[error("The requested operation is not supported after starting the microVM: {0}.")]
    OperationNotSupportedPostBoot(&'static str),
    /// A post-boot-only request before the microVM started.
    #[error("The requested operation is not supported before starting the microVM: {0}.")]
    OperationNotSupportedPreBoot(&'static str),
    /// `PATCH /vm` before the microVM started.
    #[error("The requested operation is not supported before starting the microVM.")]
    VmNotStarted,
    /// A second `InstanceStart`.
    #[error("The microVM is already running: InstanceStart is only allowed once.")]
    AlreadyStarted,
    /// The configuration refused a value.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// `GET /kobako/boot-time` before the guest wrote to the boot timer.
    #[error("The guest has not signalled boot completion yet.")]
    BootNotSignalled,
    /// `FlushMetrics` without `PUT /metrics`.
    #[error("The metrics system is not configured: PUT /metrics first.")]
    MetricsNotConfigured,
    /// `PUT /metrics` with a file that does not open.
    #[error("Cannot open the metrics file {}: {source}", path.display())]
    MetricsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `PUT /logger` with an unknown level.
    #[error("Invalid log level: {0}")]
    LogLevel(String),
    /// `PUT /logger` with a file that does not open.
    #[error("Cannot open the log file {}: {source}", path.display())]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The i8042 could not raise the key sequence.
    #[error("Cannot send Ctrl+Alt+Del: {0}")]
    CtrlAltDel(std::io::Error),
    /// `InstanceStart` failed: nothing was kept, a corrected one may succeed.
    #[error("{0}")]
    StartMicrovm(super::StartMicrovmError),
    /// The live device refused a `PATCH /drives` or `PATCH /network-interfaces`.
    #[error("{0}")]
    DeviceUpdate(crate::devices::virtio::setup::DeviceUpdateError),
    /// Pausing or resuming the vCPUs failed.
    #[error("{0}")]
    VmState(crate::vstate::vcpu::VcpuControlError),
    /// `PUT /snapshot/create` failed (the VM stays paused, unchanged).
    #[error("{0}")]
    CreateSnapshot(super::CreateSnapshotError),
    /// `PUT /snapshot/load` failed (nothing changed).
    #[error("{0}")]
    LoadSnapshot(super::LoadSnapshotError),
    /// The MMDS data store refused a `PUT`/`PATCH /mmds` (it is unchanged).
    #[error("{0}")]
    Mmds(#[from] crate::mmds::MmdsError),
    /// A balloon request the configuration or the device refused.
    #[error("{0}")]
    Balloon(#[from] BalloonError),
    /// `PUT /cpu-config` refused a modifier.
    #[error("{0}")]
    CpuTemplate(#[from] crate::arch::cpu_template::CpuTemplateError),
}

/// The event loop's answer to one action.
pub type VmmResult = Result<VmmData, VmmActionError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_text() {
        assert_eq!(
            VmmActionError::OperationNotSupportedPostBoot("PUT /vsock").to_string(),
            "The requested operation is not supported after starting the microVM: PUT /vsock."
        );
        assert_eq!(
            VmmActionError::OperationNotSupportedPreBoot("PATCH /drives").to_string(),
            "The requested operation is not supported before starting the microVM: PATCH /drives."
        );
        assert_eq!(
            VmmActionError::MetricsFile {
                path: "/x/m".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT)
            }
            .to_string(),
            format!(
                "Cannot open the metrics file /x/m: {}",
                std::io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
        assert_eq!(
            VmmAction::PutLogger(LoggerConfig::default()).preboot_only(),
            Some("PUT /logger")
        );
        assert_eq!(VmmAction::GetVersion.preboot_only(), None);
    }

    #[test]
    fn typed_causes_keep_the_fault_messages() {
        use crate::devices::virtio::setup::DeviceUpdateError;
        use crate::devices::virtio::{check_queue_count, ActivateError};
        use crate::vmm::{CreateSnapshotError, LoadSnapshotError};
        use crate::vstate::vcpu::VcpuControlError;
        let cases: [(VmmActionError, &str); 6] = [
            (
                VmmActionError::CreateSnapshot(CreateSnapshotError::NotPaused),
                "The microVM must be paused to take a snapshot: PATCH /vm {\"state\": \"Paused\"} first.",
            ),
            (
                VmmActionError::CreateSnapshot(CreateSnapshotError::DiffNotSupported),
                "Diff snapshots are not supported by kobako-vmm: use \"snapshot_type\": \"Full\".",
            ),
            (
                VmmActionError::LoadSnapshot(LoadSnapshotError::Inconsistent {
                    config_mib: 128,
                    state_mib: 256,
                }),
                "the snapshot is inconsistent: 128 MiB configured, 256 MiB of memory state",
            ),
            (
                VmmActionError::LoadSnapshot(LoadSnapshotError::UnknownDrive {
                    drive_id: "data".into(),
                    has: "rootfs".into(),
                }),
                "drive_overrides names drive \"data\", which the snapshot does not have (it has: rootfs)",
            ),
            (
                VmmActionError::VmState(VcpuControlError::Timeout),
                "Timed out waiting for the vCPUs.",
            ),
            (
                VmmActionError::DeviceUpdate(DeviceUpdateError::NoDrive("d1".into())),
                "No block device for drive \"d1\".",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
        let needs = |e: Result<(), ActivateError>| e.unwrap_err().to_string();
        assert_eq!(
            needs(check_queue_count("virtio-net", 2, 1)),
            "virtio-net needs 2 queues"
        );
        assert_eq!(
            needs(check_queue_count("virtio-rng", 1, 0)),
            "virtio-rng needs its queue"
        );
        assert!(check_queue_count("virtio-vsock", 3, 3).is_ok());
    }
}
