//! kobako-runtime: what runs one VM, behind one trait.
//!
//! - [`Runtime`]: create, start, stop, kill, pause, resume, status, console of a VM. Implemented by
//!   [`qemu::QemuRuntime`] (QEMU `microvm`, KVM where the host runs standard guests, TCG otherwise)
//!   and [`vmm::VmmRuntime`] (kobako's own VMM; [`host::detect_runtime`] picks it where KVM runs
//!   standard guests; the same runtime runs Firecracker, [`vmm::flavor`]).
//! - [`supervisor`]: every VM process is started by a small supervisor process
//!   (`kobako vm supervise`), which outlives the CLI or server that started it: it waits for the VM
//!   process, records how it ended, removes the VM's runtime files, and owns the single host end of
//!   the agent channel, multiplexing it for any number of clients on `agent.sock`.
//! - [`agent`]: the async client for `agent.sock` (ready, exec, shutdown).
//! - [`qmp`]: a minimal QMP client (pause, resume, quit, status).
//! - [`vmdir`]: the per-VM runtime directory (`/run/kobako/vms/<name>`), the only state a running
//!   VM has on the host besides its process.
//! - [`host`]: what this host can do (accelerator, CPUs, memory).

pub mod agent;
pub mod config;
pub mod fcapi;
pub mod group;
pub mod host;
mod identity;
pub mod jail;
mod paths;
pub mod qcow2;
pub mod qemu;
pub mod qmp;
pub mod snapshot;
pub mod sock;
mod stdio_console;
mod supervised;
pub mod supervisor;
pub mod vmdir;
pub mod vmm;

use std::path::PathBuf;
use std::time::Duration;

pub use config::{Accel, VmConfig};
pub use vmdir::VmDir;

/// Errors of runtime operations. Messages name the VM and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid VM configuration: {0}")]
    Invalid(String),
    /// A file the configuration names (kernel, initramfs, disk image) is not there.
    #[error("invalid VM configuration: {what} {}: no such file", path.display())]
    NoSuchFile {
        what: &'static str,
        path: std::path::PathBuf,
    },
    /// A program the runtime runs is not there (Firecracker not installed, a `--vmm-bin` that
    /// is no executable): the message says where it looked and what to do.
    #[error("{0}")]
    MissingProgram(String),
    #[error("a VM named '{0}' already exists (stop it with `kobako vm stop {0}` or pick another --name)")]
    Exists(String),
    #[error("no VM named '{0}' (see `kobako vm ls`)")]
    NotFound(String),
    #[error("VM '{0}' is not running")]
    NotRunning(String),
    /// The message carries the cause (not a `source`, which error reporters would print a
    /// second time after it).
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error(
        "VM '{name}' exited before its agent was ready ({how}); last console lines:\n{console}"
    )]
    ExitedEarly {
        name: String,
        how: String,
        console: String,
    },
    #[error("VM '{name}' did not become ready within {secs} s; last console lines:\n{console}")]
    ReadyTimeout {
        name: String,
        secs: u64,
        console: String,
    },
    #[error("QMP: {0}")]
    Qmp(String),
    /// The guest's agent answered with an error, or spoke nonsense.
    #[error("agent: {0}")]
    Agent(String),
    /// The agent cannot be reached or its channel closed (the VM stopped or is stopping).
    #[error("agent: {0}")]
    AgentGone(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |err| RuntimeError::Io { what, err }
}

/// Observable state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Process started, agent not yet ready.
    Booting,
    /// Agent ready.
    Running,
    Paused,
    /// The process ended; the directory is kept because a client is attached or it crashed.
    Exited,
}

/// Status of a VM as `vm ls` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmStatus {
    pub name: String,
    pub state: VmState,
    pub pid: Option<i32>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    /// Milliseconds from process start to agent ready, when known.
    pub boot_ms: Option<u64>,
    /// Why an exited VM ended, when its supervisor kept the record (e.g. killed for going over
    /// its memory limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
}

/// Where a VM's serial console is.
#[derive(Debug, Clone)]
pub struct Console {
    /// Live console (bidirectional stream socket).
    pub socket: PathBuf,
    /// Everything the console printed since boot.
    pub log: PathBuf,
}

/// A VM runtime. All methods take the VM's directory, which holds everything about it, so a new
/// process (a restarted server, another CLI) can manage a VM it did not start.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Short name ("qemu", "vmm", "firecracker").
    fn name(&self) -> &'static str;
    /// Validate `cfg` and create the VM's directory (nothing runs yet).
    async fn create(&self, cfg: &VmConfig) -> Result<VmDir>;
    /// Start the VM process under its supervisor; returns once the process runs (not ready).
    async fn start(&self, vm: &VmDir) -> Result<()>;
    /// Ask the guest to power off; after `grace` quit the process; after that kill it.
    async fn stop(&self, vm: &VmDir, grace: Duration) -> Result<()>;
    /// Kill the VM process at once.
    async fn kill(&self, vm: &VmDir) -> Result<()>;
    async fn pause(&self, vm: &VmDir) -> Result<()>;
    async fn resume(&self, vm: &VmDir) -> Result<()>;
    async fn status(&self, vm: &VmDir) -> Result<VmStatus>;
    fn console(&self, vm: &VmDir) -> Console;
    /// Snapshots a running VM (memory, devices, writable disks) into the new directory `dest`;
    /// the guest continues afterwards unless `leave_paused`. See [`snapshot`].
    async fn snapshot(
        &self,
        vm: &VmDir,
        _dest: &std::path::Path,
        _leave_paused: bool,
    ) -> Result<snapshot::Manifest> {
        Err(RuntimeError::Invalid(format!(
            "VM '{}': the {} runtime cannot take snapshots yet",
            vm.name,
            self.name()
        )))
    }
    /// The configuration restoring snapshot `dir` as VM `name` (refused with the reason when
    /// the snapshot does not fit this host); a disk-rooted VM gets its overlay in `overlay_dir`.
    fn restore_config(
        &self,
        dir: &std::path::Path,
        _name: &str,
        _overlay_dir: &std::path::Path,
        _verify: bool,
    ) -> Result<VmConfig> {
        Err(RuntimeError::Invalid(format!(
            "snapshot {}: the {} runtime cannot restore snapshots yet",
            dir.display(),
            self.name()
        )))
    }
}

/// Wait until the VM's agent is ready. Returns a connected client and the agent's report.
/// Fails with the console's last lines if the VM exits first or `timeout` passes.
pub async fn wait_ready(
    vm: &VmDir,
    timeout: Duration,
) -> Result<(agent::AgentClient, kobako_agent::proto::ReadyInfo)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let exited = |vm: &VmDir| {
        let how = vm
            .exit()
            .map(|e| e.describe())
            .unwrap_or_else(|| "VM process ended".into());
        let mut console = vm.console_tail(15);
        let log = vmdir::tail(&vm.file("vm.log"), 5);
        if !log.trim().is_empty() {
            console.push_str(&format!("\nVM process output:\n{log}"));
        }
        RuntimeError::ExitedEarly {
            name: vm.name.clone(),
            how,
            console,
        }
    };
    // The supervisor binds agent.sock before it starts the VM process.
    let client = loop {
        match agent::AgentClient::connect(&vm.file("agent.sock")).await {
            Ok(c) => break c,
            Err(e) => {
                if vm.supervisor_pid().is_none() {
                    return Err(exited(vm));
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match client.wait_ready(left).await {
        Ok(info) => Ok((client, info)),
        Err(_) if vm.vm_pid().is_some() => Err(RuntimeError::ReadyTimeout {
            name: vm.name.clone(),
            secs: timeout.as_secs(),
            console: vm.console_tail(15),
        }),
        Err(_) => {
            // Give the supervisor a moment to write exit.json.
            for _ in 0..100 {
                if vm.exit().is_some() || vm.supervisor_pid().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(exited(vm))
        }
    }
}

/// Wait for the guest's boot-complete signal on a VM without an agent channel (the `vmm`
/// runtime): the supervisor writes `booted.json` when the VMM reports it. Fails with the
/// console's last lines if the VM exits first or `timeout` passes.
pub async fn wait_booted(vm: &VmDir, timeout: Duration) -> Result<vmdir::BootRecord> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(rec) = vm.booted() {
            return Ok(rec);
        }
        if vm.supervisor_pid().is_none() || (vm.exit().is_some() && vm.vm_pid().is_none()) {
            let how = vm
                .exit()
                .map(|e| e.describe())
                .unwrap_or_else(|| "VM process ended".into());
            return Err(RuntimeError::ExitedEarly {
                name: vm.name.clone(),
                how,
                console: vm.console_tail(15),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RuntimeError::ReadyTimeout {
                name: vm.name.clone(),
                secs: timeout.as_secs(),
                console: vm.console_tail(15),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
