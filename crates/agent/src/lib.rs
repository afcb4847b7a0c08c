//! kobako-agent: the program inside every guest, and the protocol the host speaks to it.
//!
//! - [`proto`]: the framed, multiplexed wire protocol (shared with the host client in
//!   `kobako-runtime`).
//! - The binary (`src/main.rs` and its modules) is PID 1 on tiny images (mounts, hostname,
//!   loopback, reaping, console shell, clean power-off) and a plain service on distro images; in
//!   both cases it serves the protocol on the virtio-serial port named [`proto::PORT_NAME`] (QEMU
//!   runtime) and, when the guest has AF_VSOCK, on vsock port [`proto::VSOCK_PORT`] (kobako's
//!   own VMM, which has no virtio-serial).
//! - [`probe`]: the readiness checks (TCP connect, HTTP GET) the agent runs for `up`.
//! - [`reaper`]: waiting for every child (PID 1 reaps orphans too) without racing `Command`.

pub mod probe;
pub mod proto;
pub mod reaper;
