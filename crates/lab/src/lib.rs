//! kobako labs.
//!
//! [`spec`] is the lab file model: the YAML a user writes (raw types), parsed with positions,
//! resolved once (defaults → template → node → VM) into a validated [`spec::Lab`] with every
//! name checked. It has no process or network side effects.
//!
//! [`controller`] brings a resolved lab up on this host (host network through kobako-net, VMs
//! through kobako-runtime, guest configuration through the agent) and takes it down.

pub mod controller;
pub mod functions;
pub mod scenario;
pub mod spec;
