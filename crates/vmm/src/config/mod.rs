//! Firecracker-compatible configuration: the wire types of the API and `--config-file` (field
//! names from Firecracker's swagger spec), and [`VmResources`], the validated configuration the
//! builder consumes.
//!
//! Owned by the event-loop thread (the API thread only parses bodies into these wire types and
//! sends them over). Validation turns wire types into stored state and returns a
//! [`ConfigError`] whose message becomes the `fault_message` of a 400 response.
//!
//! Drives, pmem devices, network interfaces, vsock, entropy and the balloon become virtio-mmio
//! devices at InstanceStart (`devices::virtio::setup`); all are returned by `GET /vm/config`.
//!
//! Files: this one holds [`ConfigError`] and [`check_no_positional`] (shared by every
//! document); `wire.rs` (with `wire/balloon.rs`, `wire/pmem.rs` and `wire/snapshot.rs`) the
//! wire types;
//! `resources.rs` [`VmResources`] and its validation. Everything is re-exported here, so
//! `crate::config::X` names each of them.

mod resources;
mod wire;

pub use resources::*;
pub use wire::*;

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
    /// A virtio-pmem device refused (`PUT /pmem/{id}`, the config file's `pmem` list).
    #[error("{0}")]
    Pmem(#[from] PmemError),
}

/// The keys whose values are lists in the API's and the config file's documents; everywhere
/// else an object is expected where a structure is.
const LIST_KEYS: &[&str] = &[
    "drives",
    "network-interfaces",
    "network_interfaces",
    "network_overrides",
    "drive_overrides",
    "pmem",
    // Sections kobako-vmm refuses as not supported: their lists must reach that refusal.
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
                        crate::text::clip(k, 64).into_owned()
                    } else {
                        format!("{at}.{}", crate::text::clip(k, 64))
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
