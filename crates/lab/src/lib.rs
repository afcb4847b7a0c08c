//! kobako labs.
//!
//! [`spec`] is the lab file model: the YAML a user writes (raw types), parsed with positions,
//! resolved once (defaults → template → node → VM) into a validated [`spec::Lab`] with every
//! name checked. It has no process or network side effects.

pub mod spec;
