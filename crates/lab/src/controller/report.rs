//! What `up`, `restart`, `start_vms` and checkpoint restores report: one line per VM and the
//! lab's outcome (printed by the CLI, returned as JSON by the API).

use kobako_state::LabState;
use serde::Serialize;

/// One VM's outcome of `up`.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub name: String,
    pub state: String,
    /// What `up` did: `created`, `kept`, `replaced`.
    pub action: String,
    pub boot_ms: Option<u64>,
    pub addresses: Vec<String>,
    pub error: Option<String>,
    /// Restored from a warm snapshot instead of booted (see [`super::warm`]).
    pub warm: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub lab: String,
    pub state: LabState,
    pub vms: Vec<VmReport>,
    /// VMs removed because the lab file no longer declares them.
    pub removed: Vec<String>,
    pub total_ms: u64,
}

impl UpReport {
    pub fn ok(&self) -> bool {
        self.vms.iter().all(|v| v.error.is_none())
    }
}
