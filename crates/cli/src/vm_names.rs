//! The VM names users type: `node.vm`, `lab/node.vm`, `lab.node.vm` or a plain VM name, with
//! `--lab`/`KOBAKO_LAB` naming the lab meant when none is written. Shared by the VM, guest and
//! lab commands, so none of them depends on another for it.

use anyhow::Result;
use kobako_lab::controller;

/// The lab named by `--lab`/`KOBAKO_LAB`, if any.
pub(crate) fn lab_env() -> Option<String> {
    std::env::var("KOBAKO_LAB").ok().filter(|s| !s.is_empty())
}

/// The runtime name of a VM as a user types it (`node.vm`, `lab/node.vm`, `lab.node.vm`, or a
/// plain VM name).
pub fn vm_name(s: &str) -> Result<String> {
    Ok(controller::resolve_vm(s, lab_env().as_deref())?)
}
