//! The snapshot requests' wire types: `PUT /snapshot/create` ([`SnapshotCreateParams`]) and
//! `PUT /snapshot/load` ([`SnapshotLoadParams`], with its overrides and memory backend), and
//! the load's own checks of what kobako-vmm supports.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SerialConfig};

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
