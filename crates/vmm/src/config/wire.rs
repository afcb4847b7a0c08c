//! The wire types of Firecracker's API and of the `--config-file` document (field names from
//! Firecracker's swagger spec): what the API thread parses request bodies into and what
//! `GET /vm/config` answers. No validation here beyond serde's (unknown fields are refused);
//! [`VmResources`](super::VmResources) checks the values.
//!
//! The balloon's types are in `wire/balloon.rs`, virtio-pmem's in `wire/pmem.rs`, the
//! snapshot requests' in `wire/snapshot.rs`; all are re-exported here.

mod balloon;
mod pmem;
mod snapshot;

pub use balloon::*;
pub use pmem::*;
pub use snapshot::*;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// virtio-pmem devices (`null` is read as none, as Firecracker's own output may have it).
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pmem: Vec<Pmem>,
    /// A Firecracker section kobako-vmm does not implement: accepted when absent or `null`
    /// (as in Firecracker's own `GET /vm/config` output), rejected otherwise.
    #[serde(rename = "memory-hotplug", default, skip_serializing)]
    pub memory_hotplug: Option<serde_json::Value>,
}

/// A list that may also be given as `null` (= empty).
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
