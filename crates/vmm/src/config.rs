//! Firecracker-compatible configuration: the wire types of the API and `--config-file` (field
//! names from Firecracker's swagger spec), and [`VmResources`], the validated configuration the
//! builder consumes.
//!
//! Owned by the event-loop thread (the API thread only parses bodies into these wire types and
//! sends them over). Validation turns wire types into stored state and returns a
//! [`ConfigError`] whose message becomes the `fault_message` of a 400 response.
//!
//! Drives, network interfaces, vsock and entropy become virtio-mmio devices at InstanceStart
//! (`devices::virtio::setup`); all are returned by `GET /vm/config`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::arch::layout::MAX_VCPUS;

/// A configuration request that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    Kernel(String),
    #[error("The initrd file cannot be opened: {0}")]
    Initrd(String),
    #[error("The number of vCPUs must be greater than 0, less than {MAX_VCPUS} and must be 1 or an even number if SMT is enabled.")]
    VcpuCount,
    #[error("The memory size (MiB) is either 0, or not a multiple of the configured page size.")]
    MemSize,
    #[error("The memory size ({mib} MiB) is larger than this host's memory ({host_mib} MiB).")]
    MemTooLarge { mib: u64, host_mib: u64 },
    #[error("Enabling simultaneous multithreading is not supported on this host.")]
    Smt,
    #[error("Invalid huge_pages value {0:?}: expected \"None\" or \"2M\".")]
    HugePages(String),
    #[error("The id from the path [{path}] does not match the id from the body [{body}]!")]
    IdMismatch { path: String, body: String },
    #[error("Invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("{0}")]
    NotSupported(String),
}

/// The keys whose values are lists in the API's and the config file's documents; everywhere
/// else an object is expected where a structure is.
const LIST_KEYS: &[&str] = &[
    "drives",
    "network-interfaces",
    "network_interfaces",
    "network_overrides",
    "drive_overrides",
    // Sections kobako-vmm refuses as not supported: their lists must reach that refusal.
    "pmem",
    "kvm_capabilities",
    "cpuid_modifiers",
    "msr_modifiers",
    "reg_modifiers",
    "vcpu_features",
    "modifiers",
];

/// Refuses JSON arrays where the schema has objects (or scalars). serde's derived structures
/// also read a structure from an array, field by field in order (`PUT /machine-config [2, 256]`
/// would set 2 vCPUs and 256 MiB), which Firecracker's API description does not allow: a
/// document is checked with this before it is deserialized. `Err` names where the array is.
pub fn check_no_positional(v: &serde_json::Value) -> Result<(), String> {
    fn walk(v: &serde_json::Value, at: &str, list_ok: bool) -> Result<(), String> {
        match v {
            serde_json::Value::Array(items) => {
                if !list_ok {
                    return Err(format!(
                        "invalid type: sequence, expected a map or a value at `{}`",
                        if at.is_empty() { "(the body)" } else { at }
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}[{i}]"), false)?;
                }
                Ok(())
            }
            serde_json::Value::Object(o) => {
                for (k, item) in o {
                    let at = if at.is_empty() {
                        crate::api::http::clip(k, 64).into_owned()
                    } else {
                        format!("{at}.{}", crate::api::http::clip(k, 64))
                    };
                    walk(item, &at, LIST_KEYS.contains(&k.as_str()))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(v, "", false)
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// Huge page backing of guest memory: `None` (4 KiB pages) and `Transparent` (THP through
/// `madvise(MADV_HUGEPAGE)`) are implemented; `2M` (hugetlbfs) parses but is rejected at
/// validation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's CPU templates (its `CpuTemplate` enum). kobako-vmm applies none of them (it
/// normalises CPUID its own way, see `arch/cpuid.rs`): only `None` is accepted; any other name
/// is refused at `PUT`/`PATCH /machine-config` rather than stored and silently not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// `GET|PUT /machine-config` (the full, stored form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        // Firecracker's defaults.
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub cpu_template: Option<CpuTemplate>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<HugePages>,
}

/// Firecracker's token-bucket rate limiter (stored, not enforced yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// One bucket of a [`RateLimiter`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    pub is_root_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// kobako extension: `"raw"` or `"qcow2"`. Absent: probed from the file's magic (as qemu
    /// does without a format). Give it for images a guest can write: a raw disk whose guest
    /// wrote a qcow2 header must not be opened as qcow2 (its backing file could be any host
    /// file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_format: Option<String>,
}

/// `PATCH /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    pub path_on_host: Option<PathBuf>,
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    pub rx_rate_limiter: Option<RateLimiter>,
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /balloon` (and `balloon` of a config file); `GET /balloon` answers it with the
/// current target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    #[serde(default)]
    pub free_page_hinting: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon/hinting/start` (the body is optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    #[serde(default)]
    pub acknowledge_on_stop: bool,
}

/// Why a balloon request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonError {
    #[error("No balloon device is configured: PUT /balloon before InstanceStart.")]
    NotConfigured,
    #[error(
        "The balloon target ({amount_mib} MiB) is larger than the guest's memory ({mem_mib} MiB)."
    )]
    TooLarge { amount_mib: u32, mem_mib: u64 },
    #[error("Balloon statistics are not enabled: PUT /balloon with stats_polling_interval_s > 0 before InstanceStart.")]
    StatsNotEnabled,
    #[error("Balloon statistics cannot be turned on or off after boot: use a non-zero stats_polling_interval_s.")]
    StatsOnOff,
    #[error("Free page hinting is not enabled: PUT /balloon with \"free_page_hinting\": true before InstanceStart.")]
    HintingNotEnabled,
    #[error(
        "The balloon device is not running yet: this request is answered after InstanceStart."
    )]
    NotStarted,
}

/// `PUT /mmds/config` (and `mmds-config` of a config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: crate::mmds::MmdsVersion,
    pub network_interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub imds_compat: bool,
}

impl MmdsConfig {
    /// The address the guest reaches the MMDS on.
    pub fn ipv4(&self) -> [u8; 4] {
        self.ipv4_address
            .as_deref()
            .and_then(crate::mmds::parse_ipv4)
            .unwrap_or(crate::mmds::DEFAULT_IPV4)
    }
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// `PUT /entropy`: a virtio-rng device fed from the host's getrandom.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: PathBuf,
    /// Each metrics line gets a top-level `"id"`: the instance id (`--id`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emit_id: bool,
    /// Operator-defined pairs, written under a top-level `"properties"` on each line.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// `PUT /serial` (Firecracker ≥ 1.11): where the guest console goes. kobako extension: a path
/// prefixed with `unix:` makes the VMM listen on that Unix socket and copy the console to every
/// connected client (and take their input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Stored, not enforced yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub action_type: ActionType,
}

/// `PUT /snapshot/create`. Only full snapshots: the memory file holds all guest RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// The VM state file (vCPUs, interrupt controllers, devices, configuration).
    pub snapshot_path: PathBuf,
    /// The guest memory file.
    pub mem_file_path: PathBuf,
    /// Firecracker's deprecated field: accepted only as the current format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Firecracker's snapshot types; kobako-vmm takes only `Full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// Where a loaded snapshot's memory comes from (`backend_type` `File`; `Uffd` is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: String,
    pub backend_path: PathBuf,
}

/// `network_overrides[]`: the restored interface uses another tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `vsock_override`: the restored vsock device listens on another Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

/// `drive_overrides[]` (kobako extension): the restored drive uses another image file (a copy
/// or an overlay of the original, with the same contents at snapshot time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    pub drive_id: String,
    pub path_on_host: PathBuf,
}

/// `PUT /snapshot/load` (and the `--snapshot-load FILE` document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    /// Deprecated in Firecracker in favour of `mem_backend`; either one is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// Accepted (Firecracker deprecated it); dirty pages are not tracked, and `Diff` snapshots
    /// are refused at `PUT /snapshot/create`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// As `enable_diff_snapshots`.
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub resume_vm: bool,
    /// Only `false`: kvmclock resumes where it was at snapshot time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_realtime: bool,
    /// Memory of a loaded snapshot is a private mapping of its memory file with regular pages:
    /// `Snapshot` (default) and `None` are that; `Transparent` and `2M` are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<LoadHugePages>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// kobako extension.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drive_overrides: Vec<DriveOverride>,
    /// kobako extension: where the restored guest's console goes (default: as `PUT /serial`
    /// before the load set it, else stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
}

/// `huge_pages` of `PUT /snapshot/load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadHugePages {
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl SnapshotLoadParams {
    /// Refuses the load options kobako-vmm does not implement (before anything is read).
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        if self.clock_realtime {
            return Err(ConfigError::NotSupported(
                "clock_realtime is not supported by kobako-vmm: kvmclock resumes from where it was at snapshot time; load with clock_realtime false (or leave it out).".into(),
            ));
        }
        match self.huge_pages {
            None | Some(LoadHugePages::Snapshot | LoadHugePages::None) => Ok(()),
            Some(h) => Err(ConfigError::NotSupported(format!(
                "huge_pages {:?} on snapshot load is not supported by kobako-vmm: a loaded snapshot's memory is a private mapping of the memory file with regular pages; use \"None\" or \"Snapshot\" (or leave it out).",
                if h == LoadHugePages::Transparent { "Transparent" } else { "2M" }
            ))),
        }
    }

    /// The memory file, from `mem_backend` or `mem_file_path`.
    pub fn memory_file(&self) -> Result<&std::path::Path, ConfigError> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                what: "snapshot load",
                why: "give either mem_backend or mem_file_path, not both".into(),
            }),
            (Some(b), None) if b.backend_type == "File" => Ok(&b.backend_path),
            (Some(b), None) => Err(ConfigError::NotSupported(format!(
                "Memory backend type {:?} is not supported by kobako-vmm: use \"File\".",
                b.backend_type
            ))),
            (None, Some(p)) => Ok(p),
            (None, None) => Err(ConfigError::Invalid {
                what: "snapshot load",
                why: "the memory file is missing: set mem_backend {\"backend_type\": \"File\", \"backend_path\": ...}".into(),
            }),
        }
    }
}

/// The action types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateChange {
    pub state: VmStateName,
}

/// Target state of `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmStateName {
    Paused,
    Resumed,
}

/// The `--config-file` document, and the body of `GET /vm/config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// Firecracker sections kobako-vmm does not implement: accepted when absent or `null`
    /// (as in Firecracker's own `GET /vm/config` output), rejected otherwise.
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<crate::arch::cpu_template::CpuConfig>,
    #[serde(default, skip_serializing)]
    pub pmem: Option<serde_json::Value>,
    #[serde(rename = "memory-hotplug", default, skip_serializing)]
    pub memory_hotplug: Option<serde_json::Value>,
}

/// Host memory in MiB (MemTotal), the upper bound for `mem_size_mib`.
pub fn host_mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(u64::MAX)
}

fn validate_machine(mc: &MachineConfig) -> Result<(), ConfigError> {
    if mc.vcpu_count == 0
        || mc.vcpu_count > MAX_VCPUS
        || (mc.smt && mc.vcpu_count % 2 == 1 && mc.vcpu_count > 1)
    {
        return Err(ConfigError::VcpuCount);
    }
    if mc.smt {
        return Err(ConfigError::Smt);
    }
    if mc.mem_size_mib == 0 {
        return Err(ConfigError::MemSize);
    }
    let host_mib = host_mem_mib();
    if mc.mem_size_mib > host_mib {
        return Err(ConfigError::MemTooLarge {
            mib: mc.mem_size_mib,
            host_mib,
        });
    }
    if let Some(t) = mc.cpu_template.filter(|t| *t != CpuTemplate::None) {
        return Err(ConfigError::NotSupported(format!(
            "CPU template {t:?} is not supported by kobako-vmm (it applies its own CPUID normalisation, no templates): leave cpu_template out or set it to \"None\"."
        )));
    }
    if mc.huge_pages == HugePages::Hugetlbfs2M {
        return Err(ConfigError::NotSupported(
            "huge_pages \"2M\" (hugetlbfs) is not supported yet; use \"None\" or \"Transparent\""
                .into(),
        ));
    }
    Ok(())
}

fn check_file(what: &'static str, p: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(p)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            what,
            why: format!("{}: {e}", p.display()),
        })
}

fn check_id(what: &'static str, id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            what,
            why: format!("{id:?} must be 1-64 characters of [A-Za-z0-9_-]"),
        })
    }
}

/// The validated configuration of one microVM. Every setter either applies its change whole
/// or returns an error and leaves the configuration as it was.
#[derive(Debug, Clone, Default)]
pub struct VmResources {
    pub boot_source: Option<BootSource>,
    pub machine: MachineConfig,
    pub drives: BTreeMap<String, Drive>,
    pub net: BTreeMap<String, NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<EntropyConfig>,
    pub logger: Option<LoggerConfig>,
    pub metrics: Option<MetricsConfig>,
    pub serial: Option<SerialConfig>,
    /// `PUT /balloon`.
    pub balloon: Option<BalloonConfig>,
    /// `PUT /cpu-config`: a custom CPU template (checked when set).
    pub cpu_config: Option<crate::arch::cpu_template::CpuConfig>,
    /// `PUT /mmds/config`: which interfaces answer the guest's MMDS requests.
    pub mmds_config: Option<MmdsConfig>,
    /// The MMDS data store, one per process: clones of these resources share it.
    pub mmds: Arc<Mutex<crate::mmds::Mmds>>,
}

impl VmResources {
    /// `PUT /cpu-config` (pre-boot): every modifier is checked now.
    pub fn set_cpu_config(
        &mut self,
        c: crate::arch::cpu_template::CpuConfig,
    ) -> Result<(), crate::arch::cpu_template::CpuTemplateError> {
        c.compile()?;
        self.cpu_config = Some(c);
        Ok(())
    }

    /// `PUT /balloon` (pre-boot): the target must fit in the guest's memory.
    pub fn set_balloon(&mut self, b: BalloonConfig) -> Result<(), BalloonError> {
        self.check_balloon_amount(b.amount_mib)?;
        self.balloon = Some(b);
        Ok(())
    }

    /// A balloon target must not exceed the guest's memory.
    pub fn check_balloon_amount(&self, amount_mib: u32) -> Result<(), BalloonError> {
        if u64::from(amount_mib) > self.machine.mem_size_mib {
            return Err(BalloonError::TooLarge {
                amount_mib,
                mem_mib: self.machine.mem_size_mib,
            });
        }
        Ok(())
    }

    /// `PATCH /balloon` (a new target) and `PATCH /balloon/statistics` on the configuration.
    pub fn update_balloon(
        &mut self,
        amount_mib: Option<u32>,
        stats_s: Option<u16>,
    ) -> Result<(), BalloonError> {
        let Some(b) = self.balloon.clone() else {
            return Err(BalloonError::NotConfigured);
        };
        let mut b = b;
        if let Some(a) = amount_mib {
            self.check_balloon_amount(a)?;
            b.amount_mib = a;
        }
        if let Some(s) = stats_s {
            b.stats_polling_interval_s = s;
        }
        self.balloon = Some(b);
        Ok(())
    }

    /// `PUT /mmds/config`: the interfaces must be configured; the address link-local.
    pub fn set_mmds_config(&mut self, c: MmdsConfig) -> Result<(), ConfigError> {
        if c.network_interfaces.is_empty() {
            return Err(ConfigError::Invalid {
                what: "network_interfaces",
                why: "name at least one network interface (its iface_id) to reach the MMDS through"
                    .into(),
            });
        }
        for id in &c.network_interfaces {
            if !self.net.contains_key(id) {
                return Err(ConfigError::Invalid {
                    what: "network_interfaces",
                    why: format!(
                        "no network interface {:?} is configured (PUT /network-interfaces/{{iface_id}} first; configured: {})",
                        crate::api::http::clip(id, 64),
                        if self.net.is_empty() { "none".to_string() } else { self.net.keys().cloned().collect::<Vec<_>>().join(", ") }
                    ),
                });
            }
        }
        if let Some(a) = &c.ipv4_address {
            if crate::mmds::parse_ipv4(a).is_none() {
                return Err(ConfigError::Invalid {
                    what: "ipv4_address",
                    why: format!(
                        "{:?} is not a link-local address in 169.254.1.0-169.254.254.255",
                        crate::api::http::clip(a, 64)
                    ),
                });
            }
        }
        self.mmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .configure(c.version, c.imds_compat);
        self.mmds_config = Some(c);
        Ok(())
    }

    /// `PUT /boot-source`: the kernel must exist and look like a vmlinux or bzImage.
    pub fn set_boot_source(&mut self, b: BootSource) -> Result<(), ConfigError> {
        crate::arch::boot::check_kernel(&b.kernel_image_path).map_err(|e| {
            ConfigError::Kernel(match e {
                crate::arch::boot::BootError::Open { source, .. } => {
                    format!("The kernel file cannot be opened: {source}")
                }
                other => format!("Invalid kernel image: {other}"),
            })
        })?;
        if let Some(rd) = &b.initrd_path {
            std::fs::File::open(rd).map_err(|e| ConfigError::Initrd(e.to_string()))?;
        }
        if let Some(args) = &b.boot_args {
            if args.len() >= crate::arch::layout::CMDLINE_MAX_SIZE {
                return Err(ConfigError::Invalid {
                    what: "boot_args",
                    why: format!(
                        "longer than {} bytes",
                        crate::arch::layout::CMDLINE_MAX_SIZE - 1
                    ),
                });
            }
        }
        self.boot_source = Some(b);
        Ok(())
    }

    /// `PUT /machine-config`.
    pub fn set_machine_config(&mut self, mut mc: MachineConfig) -> Result<(), ConfigError> {
        validate_machine(&mc)?;
        // "None" is the same as no template.
        mc.cpu_template = None;
        self.machine = mc;
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn update_machine_config(&mut self, u: MachineConfigUpdate) -> Result<(), ConfigError> {
        let mut mc = self.machine.clone();
        if let Some(v) = u.vcpu_count {
            mc.vcpu_count = v;
        }
        if let Some(v) = u.mem_size_mib {
            mc.mem_size_mib = v;
        }
        if let Some(v) = u.smt {
            mc.smt = v;
        }
        if let Some(v) = u.cpu_template {
            mc.cpu_template = Some(v);
        }
        if let Some(v) = u.track_dirty_pages {
            mc.track_dirty_pages = v;
        }
        if let Some(v) = u.huge_pages {
            mc.huge_pages = v;
        }
        self.set_machine_config(mc)
    }

    /// `PUT /drives/{id}`: at most one root device.
    pub fn put_drive(&mut self, path_id: &str, d: Drive) -> Result<(), ConfigError> {
        if path_id != d.drive_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: d.drive_id,
            });
        }
        check_id("drive_id", &d.drive_id)?;
        if let Some(f) = &d.image_format {
            if f != "raw" && f != "qcow2" {
                return Err(ConfigError::Invalid {
                    what: "image_format",
                    why: format!("{f:?}: use \"raw\" or \"qcow2\" (or leave it out to probe)"),
                });
            }
        }
        for (what, v, ok) in [
            ("cache_type", &d.cache_type, &["Unsafe", "Writeback"]),
            ("io_engine", &d.io_engine, &["Sync", "Async"]),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !ok.contains(v)) {
                return Err(ConfigError::Invalid {
                    what,
                    why: format!("{v:?}: use {:?} or {:?}", ok[0], ok[1]),
                });
            }
        }
        match (&d.path_on_host, &d.socket) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    what: "drive",
                    why: "give path_on_host (a virtio-blk drive) or socket (vhost-user), not both".into(),
                })
            }
            (Some(p), None) => check_file("path_on_host", p)?,
            (None, Some(_)) => {
                return Err(ConfigError::NotSupported(
                    "vhost-user block devices (socket) are not supported by kobako-vmm: give path_on_host, the image file of a virtio-blk drive, instead of socket.".into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid {
                    what: "drive",
                    why: "one of path_on_host or socket is required".into(),
                })
            }
        }
        if d.is_root_device
            && self
                .drives
                .values()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err(ConfigError::Invalid {
                what: "drive",
                why: "a root block device already exists".into(),
            });
        }
        self.drives.insert(d.drive_id.clone(), d);
        Ok(())
    }

    /// `PATCH /drives/{id}` before boot: updates the stored drive.
    pub fn patch_drive(&mut self, path_id: &str, u: DriveUpdate) -> Result<(), ConfigError> {
        if path_id != u.drive_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: u.drive_id,
            });
        }
        let Some(d) = self.drives.get(&u.drive_id) else {
            return Err(ConfigError::Invalid {
                what: "drive_id",
                why: format!("no drive {:?}", u.drive_id),
            });
        };
        let mut d = d.clone();
        if let Some(p) = u.path_on_host {
            check_file("path_on_host", &p)?;
            d.path_on_host = Some(p);
        }
        if let Some(r) = u.rate_limiter {
            d.rate_limiter = Some(r);
        }
        self.drives.insert(d.drive_id.clone(), d);
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`.
    pub fn put_net(&mut self, path_id: &str, n: NetworkInterface) -> Result<(), ConfigError> {
        if path_id != n.iface_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: n.iface_id,
            });
        }
        check_id("iface_id", &n.iface_id)?;
        if n.host_dev_name.is_empty() || n.host_dev_name.len() >= 16 {
            return Err(ConfigError::Invalid {
                what: "host_dev_name",
                why: "must be 1-15 bytes (IFNAMSIZ)".into(),
            });
        }
        if let Some(mtu) = n.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(ConfigError::Invalid {
                    what: "mtu",
                    why: format!("{mtu} is outside 68..=65535"),
                });
            }
        }
        if let Some(mac) = &n.guest_mac {
            let parts: Vec<_> = mac.split(':').collect();
            if parts.len() != 6
                || !parts
                    .iter()
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
            {
                return Err(ConfigError::Invalid {
                    what: "guest_mac",
                    why: format!("{mac:?} is not a MAC address like 06:00:AC:10:00:02"),
                });
            }
        }
        if self
            .net
            .values()
            .any(|o| o.iface_id != n.iface_id && o.host_dev_name == n.host_dev_name)
        {
            return Err(ConfigError::Invalid {
                what: "host_dev_name",
                why: format!("{} is already used by another interface", n.host_dev_name),
            });
        }
        self.net.insert(n.iface_id.clone(), n);
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}` before boot.
    pub fn patch_net(
        &mut self,
        path_id: &str,
        u: NetworkInterfaceUpdate,
    ) -> Result<(), ConfigError> {
        if path_id != u.iface_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: u.iface_id,
            });
        }
        let Some(n) = self.net.get_mut(&u.iface_id) else {
            return Err(ConfigError::Invalid {
                what: "iface_id",
                why: format!("no network interface {:?}", u.iface_id),
            });
        };
        if let Some(r) = u.rx_rate_limiter {
            n.rx_rate_limiter = Some(r);
        }
        if let Some(r) = u.tx_rate_limiter {
            n.tx_rate_limiter = Some(r);
        }
        Ok(())
    }

    /// `PUT /vsock`: guest CIDs 0-2 are reserved (VMADDR_CID_HYPERVISOR, _LOCAL, _HOST).
    pub fn set_vsock(&mut self, v: Vsock) -> Result<(), ConfigError> {
        if v.guest_cid < 3 {
            return Err(ConfigError::Invalid {
                what: "guest_cid",
                why: format!("{} is reserved; use 3 or more", v.guest_cid),
            });
        }
        if v.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                what: "uds_path",
                why: "must not be empty".into(),
            });
        }
        self.vsock = Some(v);
        Ok(())
    }

    /// Applies a whole `--config-file` document.
    pub fn from_full(mut cfg: FullConfig) -> Result<VmResources, ConfigError> {
        for (name, v) in [("pmem", &cfg.pmem), ("memory-hotplug", &cfg.memory_hotplug)] {
            if v.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ConfigError::NotSupported(format!(
                    "The \"{name}\" section is not supported by kobako-vmm."
                )));
            }
        }
        let mut r = VmResources::default();
        if let Some(mc) = cfg.machine_config.take() {
            r.set_machine_config(mc)?;
        }
        if let Some(b) = cfg.boot_source.take() {
            r.set_boot_source(b)?;
        }
        r.apply_devices(cfg)?;
        Ok(r)
    }

    /// The configuration stored in a snapshot: as [`VmResources::from_full`], except that the
    /// kernel is not checked (it is in the memory file; its path is kept for `GET /vm/config`).
    pub fn from_snapshot(mut cfg: FullConfig) -> Result<VmResources, ConfigError> {
        let mut r = VmResources::default();
        r.set_machine_config(cfg.machine_config.take().unwrap_or_default())?;
        r.boot_source = cfg.boot_source.take();
        r.apply_devices(cfg)?;
        Ok(r)
    }

    /// Drives, interfaces, vsock, entropy, logger, metrics and serial of a document.
    fn apply_devices(&mut self, cfg: FullConfig) -> Result<(), ConfigError> {
        let r = self;
        for d in cfg.drives {
            let id = d.drive_id.clone();
            r.put_drive(&id, d)?;
        }
        for n in cfg.network_interfaces {
            let id = n.iface_id.clone();
            r.put_net(&id, n)?;
        }
        if let Some(v) = cfg.vsock {
            r.set_vsock(v)?;
        }
        if let Some(m) = cfg.mmds_config {
            r.set_mmds_config(m)?;
        }
        if let Some(c) = cfg.cpu_config {
            r.set_cpu_config(c)
                .map_err(|e| ConfigError::NotSupported(e.to_string()))?;
        }
        if let Some(b) = cfg.balloon {
            r.set_balloon(b)
                .map_err(|e| ConfigError::NotSupported(e.to_string()))?;
        }
        r.entropy = cfg.entropy;
        r.logger = cfg.logger;
        r.metrics = cfg.metrics;
        r.serial = cfg.serial;
        Ok(())
    }

    /// `GET /vm/config`.
    pub fn to_full(&self) -> FullConfig {
        FullConfig {
            boot_source: self.boot_source.clone(),
            machine_config: Some(self.machine.clone()),
            drives: self.drives.values().cloned().collect(),
            network_interfaces: self.net.values().cloned().collect(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            logger: self.logger.clone(),
            metrics: self.metrics.clone(),
            serial: self.serial.clone(),
            mmds_config: self.mmds_config.clone(),
            balloon: self.balloon.clone(),
            cpu_config: self.cpu_config.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_validation() {
        let mut r = VmResources::default();
        let mc = |v, m| MachineConfig {
            vcpu_count: v,
            mem_size_mib: m,
            ..Default::default()
        };
        assert_eq!(
            r.set_machine_config(mc(0, 128)),
            Err(ConfigError::VcpuCount)
        );
        assert_eq!(
            r.set_machine_config(mc(33, 128)),
            Err(ConfigError::VcpuCount)
        );
        assert_eq!(r.set_machine_config(mc(1, 0)), Err(ConfigError::MemSize));
        assert!(matches!(
            r.set_machine_config(mc(1, 1 << 40)),
            Err(ConfigError::MemTooLarge { .. })
        ));
        assert_eq!(
            r.machine,
            MachineConfig::default(),
            "unchanged after errors"
        );
        r.set_machine_config(mc(32, 256)).unwrap();
        r.update_machine_config(MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((r.machine.vcpu_count, r.machine.mem_size_mib), (32, 512));
    }

    #[test]
    fn unknown_fields_rejected() {
        let e = serde_json::from_str::<MachineConfig>(
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "bogus": 1}"#,
        );
        assert!(e.is_err());
        let f: FullConfig = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}}"#,
        )
        .unwrap();
        assert_eq!(f.machine_config.unwrap().vcpu_count, 2);
    }

    #[test]
    fn ids_and_vsock() {
        let mut r = VmResources::default();
        let n = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:AC:10:00:02".into()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(matches!(
            r.put_net("eth1", n.clone()),
            Err(ConfigError::IdMismatch { .. })
        ));
        r.put_net("eth0", n.clone()).unwrap();
        let mut bad = n;
        bad.guest_mac = Some("zz".into());
        assert!(r.put_net("eth0", bad).is_err());
        assert!(r
            .set_vsock(Vsock {
                vsock_id: None,
                guest_cid: 2,
                uds_path: "/tmp/v".into()
            })
            .is_err());
    }
}
