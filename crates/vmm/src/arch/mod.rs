//! x86_64 machine definition: memory layout, boot protocols, CPU state, CPUID, MP table.
//! Pure functions over guest memory and vCPU fds; no thread of its own.

pub mod boot;
pub mod cpu_template;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
