//! The virtio-pmem wire types (`PUT /pmem/{id}`, `PATCH /pmem/{id}`, the config file's `pmem`
//! list; Firecracker's `Pmem` and `PartialPmem`) and [`PmemError`], why a pmem device was
//! refused. The checks themselves are in `resources.rs` (at PUT) and in
//! `devices::virtio::pmem` (when the file is mapped at InstanceStart).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::RateLimiter;

/// A pmem backing file's size must be a multiple of this (and not 0): Linux maps the region
/// in 2 MiB pages, as Firecracker's pmem device requires.
pub const PMEM_SIZE_ALIGN: u64 = 2 << 20;

/// `PUT /pmem/{id}` (and one entry of a config file's `pmem` list); `GET /vm/config` answers
/// it as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pmem {
    pub id: String,
    pub path_on_host: PathBuf,
    /// The guest's root file system is on this device (`root=/dev/pmem0` on the command line).
    #[serde(default)]
    pub root_device: bool,
    /// The file is mapped read-only and the guest's memory slot is `KVM_MEM_READONLY`.
    #[serde(default)]
    pub read_only: bool,
    /// Limits FLUSH requests: each `fdatasync` (shared by the requests available together)
    /// costs one op and the file's size in bytes, as Firecracker charges its `msync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PATCH /pmem/{id}` (post-boot): a new rate limiter for the live device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemUpdate {
    pub id: String,
    pub rate_limiter: Option<RateLimiter>,
}

/// Why a pmem device was refused; each text names the file or device and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PmemError {
    #[error("The pmem backing file {path} cannot be used: {why}; create it (e.g. `truncate -s 2M {path}`) or fix path_on_host.")]
    Missing { path: String, why: String },
    #[error("The pmem backing file {path} is not a regular file (it is {kind}): give path_on_host of a regular file, whose pages are mapped into the guest.")]
    NotRegular { path: String, kind: &'static str },
    #[error("The pmem backing file {path} is empty: its size must be a non-zero multiple of 2 MiB; grow it with `truncate -s 2M {path}`.")]
    Empty { path: String },
    #[error("The pmem backing file {path} is {size} bytes, not a multiple of 2 MiB (2097152 bytes): the guest maps pmem in 2 MiB pages; grow it with `truncate -s {next_mib}M {path}`.")]
    Unaligned {
        path: String,
        size: u64,
        next_mib: u64,
    },
    #[error("The pmem backing file {path} cannot be opened for {mode}: {why}; fix its permissions{hint}.")]
    Open {
        path: String,
        mode: &'static str,
        why: String,
        hint: &'static str,
    },
    #[error("The pmem backing file {path} is already used by {other}: one file backs one device (the guest would see the same memory twice, unsynchronised).")]
    SameFile { path: String, other: String },
    #[error("pmem device {id:?} appears more than once in the config file's \"pmem\" list: give each device its own id.")]
    DuplicateId { id: String },
    #[error("Too many pmem devices: at most {max} (each takes a KVM memory slot, a virtio IRQ and guest physical address space); remove one first.")]
    TooMany { max: usize },
    #[error("A root device already exists: {other} is the root device; at most one pmem device or drive can be the root device (set root_device to false, or make that one not root first).")]
    SecondRoot { other: String },
    #[error("No pmem device {id:?} is configured: PUT /pmem/{{id}} before InstanceStart.")]
    NoSuchDevice { id: String },
}
