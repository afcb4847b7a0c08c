//! The lab controller: bring a resolved [`Lab`] up on this host, change it live, take it down.
//!
//! - `up` plans (diff of the lab file against what runs: VMs to create, keep, replace,
//!   remove) and applies: host network (namespace, bridges, taps, VLANs, uplink, published
//!   ports), VMs booted in parallel within the host's limits, then addresses, routes, hosts,
//!   files and services through each agent. It is idempotent and converges: a crash half-way
//!   (even `kill -9`) is repaired by the next `up`, which keeps VMs that already run.
//! - Live changes: [`impair`] and [`set_link_state`] (both ends of a link), [`restart`],
//!   [`stop_vms`] / [`start_vms`] of a node or VM ([`vmops`]).
//! - `down` removes every VM process, tap, bridge, namespace, overlay and the lab's state.
//!
//! State: the SQLite store of `kobako-state` (desired spec, per-VM and per-lab state with
//! reasons, link state and impairments, events). A lab is changed by one process at a time
//! ([`kobako_state::LabLock`], a `flock` that dies with its holder). What runs is always read
//! back from the host (VM runtime directories, namespaces), never trusted from the store.
//!
//! Impairments on a kernel without netem (these machines) need a process that outlives the
//! command: [`netd`], one small daemon per impaired lab holding kobako-net's userspace relays.

pub(crate) mod cgroups;
pub mod checkpoint;
mod configure;
mod impairments;
mod links;
pub mod netd;
pub mod netpolicy;
pub mod ready;
mod report;
mod settings;
mod start;
mod up;
pub mod vmops;
pub mod warm;

use std::path::PathBuf;

use kobako_net::IfName;
use kobako_state::{Db, LabState, VmRow, VmState};
use serde::Serialize;

use crate::spec::{Attachment, Lab, Vm};

pub use impairments::to_net_impairment;
pub use links::{capture, counters, impair, set_link_state, set_port_state, IfaceCounters};
pub use settings::{missing_artifacts, BootSettings};
pub use up::{down, plan, restart, up, Plan, UpReport, VmReport};
pub use vmops::{start_vms, stop_vms};

/// Errors of the controller, each naming the lab object involved. Callers act on the variant
/// (the server picks its status from it); the text is what a user reads.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("host network of lab '{lab}': {source}")]
    Net {
        lab: String,
        #[source]
        source: kobako_net::NetError,
    },
    #[error("VM {vm}: {message}")]
    Vm { vm: String, message: String },
    /// The lab is not stored (not up).
    #[error("lab '{0}' is not up (see `kobako ls`)")]
    NotFound(String),
    #[error(transparent)]
    State(#[from] kobako_state::StateError),
    #[error("lab '{lab}': {source}")]
    Publish {
        lab: String,
        #[source]
        source: netpolicy::PublishDenied,
    },
    /// A stored lab this kobako cannot read (written by another version).
    #[error("stored lab '{lab}' cannot be read ({source}); `kobako down {lab}` removes it")]
    Unreadable {
        lab: String,
        #[source]
        source: serde_json::Error,
    },
    /// A link's stored impairment that no longer reads.
    #[error("stored impairment of link '{link}': {source}")]
    StoredImpairment {
        link: String,
        #[source]
        source: serde_json::Error,
    },
    /// A VM, node, link or checkpoint the caller named that does not exist; the text says
    /// what does.
    #[error("{0}")]
    NoSuch(String),
    /// A name several labs have: the caller must say which lab.
    #[error("{0}")]
    Ambiguous(String),
    /// A name that cannot be used (checkpoint names, lab names as directory names).
    #[error("{0}")]
    InvalidName(String),
    /// The lab is not in a state that allows the action, or the target exists already.
    #[error("{0}")]
    Conflict(String),
    /// What the lab asks for that this host cannot do (publishing to an IPv6 address).
    #[error("{0}")]
    Unsupported(String),
    /// A scenario whose names do not fit the lab.
    #[error(transparent)]
    Scenario(#[from] crate::spec::SpecErrors),
    /// A scenario step that cannot run (VM not running, nothing to reach, module not loaded).
    #[error("{0}")]
    Step(String),
    /// The lab's net daemon did not start, or refused a request (its own words).
    #[error("{0}")]
    Netd(String),
    /// Host I/O, naming what was being done.
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    /// Host I/O whose error names enough by itself.
    #[error(transparent)]
    HostIo(#[from] std::io::Error),
    /// A VM, agent or snapshot operation of the runtime.
    #[error(transparent)]
    Runtime(#[from] kobako_runtime::RuntimeError),
    /// A background task that panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// A lab or checkpoint that cannot be encoded for the store.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
}

/// A VM the caller named that is not in the lab: [`LabError::NoSuch`] (the server's 404).
impl From<crate::spec::FindVmError> for LabError {
    fn from(e: crate::spec::FindVmError) -> LabError {
        LabError::NoSuch(e.to_string())
    }
}

impl LabError {
    /// Host I/O that failed while doing `what` (a path, an action).
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        move |err| LabError::Io { what, err }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Where lab state lives (the directory of `kobako.db`).
pub fn state_dir() -> PathBuf {
    kobako_state::state_root()
}

/// Where a lab's runtime files live (`/run/kobako/labs/<lab>`: the net daemon's socket).
pub fn lab_run_dir(lab: &str) -> PathBuf {
    kobako_runtime::vmdir::run_root().join("labs").join(lab)
}

/// Opens the state store.
pub fn db() -> Result<Db> {
    Ok(Db::open()?)
}

/// What is stored about a lab, with its resolved model.
#[derive(Debug, Clone, Serialize)]
pub struct LabRecord {
    pub name: String,
    pub file: Option<String>,
    pub owner: Option<String>,
    pub state: LabState,
    pub reason: Option<String>,
    pub lab: Lab,
    /// Runtime names of its VMs (`<lab>.<node>.<vm>`).
    pub vms: Vec<String>,
}

impl LabRecord {
    /// The stored lab `name`, if any.
    pub fn load(name: &str) -> Option<LabRecord> {
        Self::load_from(&db().ok()?, name).ok().flatten()
    }

    /// The stored lab `name` from `db`.
    pub fn load_from(db: &Db, name: &str) -> Result<Option<LabRecord>> {
        let Some(row) = db.lab(name)? else {
            return Ok(None);
        };
        let lab: Lab = serde_json::from_value(row.spec).map_err(|source| LabError::Unreadable {
            lab: name.into(),
            source,
        })?;
        Ok(Some(LabRecord {
            name: row.name,
            file: row.file,
            owner: row.owner,
            state: row.state,
            reason: row.reason,
            vms: lab.vms().map(|v| vm_name(&lab, v)).collect(),
            lab,
        }))
    }

    /// All stored labs.
    pub fn list() -> Vec<LabRecord> {
        let Ok(db) = db() else { return Vec::new() };
        let names: Vec<String> = db
            .labs()
            .map(|v| v.into_iter().map(|r| r.name).collect())
            .unwrap_or_default();
        names
            .iter()
            .filter_map(|n| Self::load_from(&db, n).ok().flatten())
            .collect()
    }
}

/// A VM's state as stored, corrected by what runs: a VM stored as booting/agent up/ready whose process
/// is gone is `stopped` (crashed or stopped outside kobako).
pub fn observed(row: &VmRow) -> (VmState, Option<String>) {
    let running = kobako_runtime::VmDir::for_name(&row.name)
        .vm_pid()
        .is_some();
    match (row.state, running) {
        (VmState::Ready | VmState::AgentUp | VmState::Booting, false) => {
            let why = kobako_runtime::VmDir::for_name(&row.name)
                .exit()
                .map(|e| format!("VM process ended ({})", e.describe()))
                .unwrap_or_else(|| "VM process is not running".into());
            (VmState::Stopped, Some(why))
        }
        (s, _) => (s, row.reason.clone()),
    }
}

/// Runtime names of `target`: `None` every VM, `node` all VMs of a node, `node.vm` one.
pub fn targets(lab: &Lab, target: Option<&str>) -> Result<Vec<String>> {
    Ok(match target {
        None => lab.vms().map(|v| vm_name(lab, v)).collect(),
        Some(t) if t.contains('.') => {
            let vm = lab.find_vm(t)?;
            vec![vm_name(lab, vm)]
        }
        Some(t) => {
            let node = lab.node(t).ok_or_else(|| {
                LabError::NoSuch(format!(
                    "lab '{}' has no node '{t}'{}",
                    lab.name,
                    crate::spec::error::suggest(t, lab.nodes.iter().map(|n| n.name.as_str()))
                ))
            })?;
            node.vms.iter().map(|v| vm_name(lab, v)).collect()
        }
    })
}

/// The runtime name of a lab VM.
pub fn vm_name(lab: &Lab, vm: &Vm) -> String {
    format!(
        "{}.{}.{}",
        lab.name.as_str(),
        vm.id.node.as_str(),
        vm.id.vm.as_str()
    )
}

/// `kobako_net`'s error as lab `lab`'s.
pub(crate) fn net_err(lab: &str) -> impl Fn(kobako_net::NetError) -> LabError + '_ {
    move |source| LabError::Net {
        lab: lab.to_string(),
        source,
    }
}

/// The host network (namespace, bridges, taps) of lab `lab`; `NotFound` when it has none.
pub(crate) fn lab_net(lab: &str) -> Result<kobako_net::LabNet> {
    let e = net_err(lab);
    kobako_net::LabNet::open(&kobako_net::LabName::new(lab).map_err(&e)?)
        .map_err(&e)?
        .ok_or_else(|| LabError::NotFound(lab.into()))
}

pub(crate) fn tap_name(vm: &Vm, iface: &str) -> IfName {
    IfName::for_key(
        "t",
        &format!("{}.{}:{iface}", vm.id.node.as_str(), vm.id.vm.as_str()),
    )
}

pub(crate) fn bridge_for(vm: &Vm, att: &Attachment) -> IfName {
    match att {
        Attachment::NodeNetwork => IfName::for_key("bn", vm.id.node.as_str()),
        Attachment::Network(n) => IfName::for_key("bw", n.as_str()),
        Attachment::Link(l) => IfName::for_key("bl", l.as_str()),
    }
}

/// Progress reports for the CLI and the server (one line per event).
pub trait Progress: Send + Sync {
    fn event(&self, line: &str);
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: &str) {}
}

/// The runtime name of VM `s` of lab `lab`, and of no other lab: `node.vm`, or `lab/node.vm`
/// / `lab.node.vm` naming this same lab. Scenario steps (YAML and WASM) resolve their VMs
/// here: a name that points anywhere else (another lab's prefix, an extra `/` or `.`, `..`,
/// a bare runtime name) is an error and nothing is touched.
pub fn resolve_in_lab(lab: &str, s: &str) -> Result<String> {
    let db = db()?;
    let rec = LabRecord::load_from(&db, lab)?.ok_or_else(|| LabError::NotFound(lab.into()))?;
    let short = if rec.lab.find_vm(s).is_ok() {
        s
    } else if let Some(rest) = s
        .strip_prefix(&format!("{lab}/"))
        .or_else(|| s.strip_prefix(&format!("{lab}.")))
    {
        rest
    } else {
        s
    };
    match rec.lab.find_vm(short) {
        Ok(vm) => Ok(vm_name(&rec.lab, vm)),
        Err(why) => {
            let names: Vec<String> = rec
                .lab
                .vms()
                .map(|v| format!("{}.{}", v.id.node.as_str(), v.id.vm.as_str()))
                .collect();
            Err(LabError::NoSuch(format!(
                "VM '{s}' is not a VM of lab '{lab}' ({why}): a step reaches its own lab only; write NODE.VM, one of: {}",
                names.join(", ")
            )))
        }
    }
}

/// Finds the runtime name of a VM as a user types it: a runtime name (`lab.node.vm`, or any
/// single VM's name), `lab/node.vm`, or `node.vm` when exactly one lab has that VM (`lab`
/// narrows the search). The error says what exists.
pub fn resolve_vm(s: &str, lab: Option<&str>) -> Result<String> {
    if let Some((l, v)) = s.split_once('/') {
        return resolve_vm(v, Some(l));
    }
    if lab.is_none() && kobako_runtime::VmDir::for_name(s).exists() {
        return Ok(s.to_string());
    }
    let db = db()?;
    if let Some(l) = lab {
        let rec = LabRecord::load_from(&db, l)?.ok_or_else(|| LabError::NotFound(l.into()))?;
        let vm = rec.lab.find_vm(s)?;
        return Ok(vm_name(&rec.lab, vm));
    }
    let labs: Vec<LabRecord> = db
        .labs()?
        .iter()
        .filter_map(|r| LabRecord::load_from(&db, &r.name).ok().flatten())
        .collect();
    // `lab.node.vm` of a stored lab whose VM is not running (yet).
    for rec in &labs {
        if rec.vms.iter().any(|n| n == s) {
            return Ok(s.to_string());
        }
    }
    let hits: Vec<String> = labs
        .iter()
        .filter_map(|r| r.lab.find_vm(s).ok().map(|v| vm_name(&r.lab, v)))
        .collect();
    match hits.len() {
        1 => Ok(hits[0].clone()),
        0 => {
            let mut names: Vec<String> = kobako_runtime::vmdir::list()
                .into_iter()
                .map(|d| d.name)
                .collect();
            for r in &labs {
                for v in r.lab.vms() {
                    names.push(format!("{}.{}", v.id.node.as_str(), v.id.vm.as_str()));
                }
            }
            Err(LabError::NoSuch(format!(
                "no VM named '{s}'{} (see `kobako vm ls` and `kobako inspect LAB`)",
                crate::spec::error::suggest(s, names.iter().map(|s| s.as_str()))
            )))
        }
        _ => Err(LabError::Ambiguous(format!(
            "'{s}' is in several labs: say which one ({})",
            hits.join(", ")
        ))),
    }
}

/// Finds the lab that has link `link` (`lab/link` is also accepted); `lab` narrows the search.
pub fn resolve_link(s: &str, lab: Option<&str>) -> Result<(String, String)> {
    if let Some((l, k)) = s.split_once('/') {
        return resolve_link(k, Some(l));
    }
    let db = db()?;
    let labs: Vec<LabRecord> = match lab {
        Some(l) => vec![LabRecord::load_from(&db, l)?.ok_or_else(|| LabError::NotFound(l.into()))?],
        None => db
            .labs()?
            .iter()
            .filter_map(|r| LabRecord::load_from(&db, &r.name).ok().flatten())
            .collect(),
    };
    let hits: Vec<&LabRecord> = labs.iter().filter(|r| r.lab.link(s).is_some()).collect();
    match hits.len() {
        1 => Ok((hits[0].name.clone(), s.to_string())),
        0 => {
            let all: Vec<String> = labs
                .iter()
                .flat_map(|r| r.lab.links.iter().map(|l| l.name.as_str().to_string()))
                .collect();
            Err(LabError::NoSuch(format!(
                "no link '{s}'{}{} (links: {})",
                lab.map(|l| format!(" in lab '{l}'")).unwrap_or_default(),
                crate::spec::error::suggest(s, all.iter().map(|s| s.as_str())),
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.join(", ")
                }
            )))
        }
        _ => Err(LabError::Ambiguous(format!(
            "link '{s}' is in several labs: write LAB/{s} ({})",
            hits.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
