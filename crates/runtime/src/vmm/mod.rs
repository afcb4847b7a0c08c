//! The `vmm` runtime: kobako's own KVM VMM (crate kobako-vmm) as the VM process: the slim
//! `kobako-vmm` executable next to `kobako`, or `kobako vmm` when it is missing.
//!
//! The VMM is configured by a Firecracker-format `vmm.json` (`--config-file`, so it boots at once)
//! and keeps its API socket (`vmm/api.sock`) for control: pause/resume (`PATCH /vm`), Ctrl-Alt-Del,
//! state, and the guest's boot-complete signal (`GET /kobako/boot-time`). The serial console is
//! the VMM's `unix:` console socket (`vmm/console.sock`), which the supervisor copies into
//! `console.log`.
//!
//! Devices: the root disk (initramfs or a raw/qcow2 disk as `/dev/vda`), extra disks, NICs on
//! their taps (the supervisor starts the VMM inside the VM's network namespace, where the taps
//! are), virtio-rng, and vsock, whose host side is Firecracker's (`vmm/vsock.sock`, `CONNECT
//! 1024\n`): the supervisor reaches the agent through it, so `vm exec`/`cp`/`shell` and
//! readiness work as with QEMU. The command line also carries `kobako.bootmark=1`: the agent
//! writes 123 to port 0x3f0 first, the VMM records the boot time (`booted.json`), and a guest
//! without AF_VSOCK is still seen booting (readiness falls back to that signal).
//!
//! Snapshots: pause (`PATCH /vm`), `PUT /snapshot/create` into `vmstate.bin` + `memory.bin`
//! (the VMM flushes the disks first), copy the writable disks, resume; the manifest and the
//! refusals are [`crate::snapshot`]'s. A restored VM is started with `kobako vmm --snapshot-load
//! restore.json` ([`VmmRuntime::restore_file`]): the memory file mapped privately, the new VM's
//! taps, vsock socket, disks and console in place of the snapshot's. Its vsock connections do
//! not survive (the guest sees a transport reset); the supervisor connects again and the agent
//! answers on the same port. A guest reboot boots it afresh from `vmm.json`.
//!
//! Resets: guests get `reboot=k` (the i8042 reset, the VMM's exit status 80); the supervisor
//! starts a new VMM process then, like QEMU's reset button, unless `vm stop` is under way.
//! On PVM hosts (kvm_pvm) the command line also gets the PVM-tolerant kernel's workarounds
//! (crates/vmm/guest-pvm), since an unpatched kernel cannot boot there at all.
//!
//! This module is the runtime's lifecycle (create, start, stop, pause, status: the
//! [`Runtime`] impl) and the choice of the VMM program; [`documents`] writes `vmm.json` and the
//! restore document, [`api`] talks to the VMM's API socket, [`snapshot`] takes and checks
//! snapshots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::VmConfig;
use crate::jail::{Jail, JailConfig};
use crate::supervised::{finish, start_supervised, wait_gone};
use crate::vmdir::{write_json, GuestChannel, Launch, VmDir};
use crate::{io, Console, Result, Runtime, RuntimeError, VmState, VmStatus};

mod api;
pub mod documents;
pub mod snapshot;

use api::{instance_state, wait_restored};
pub use snapshot::load;

/// The guest's vsock CID (each VM has its own VMM and socket, so all can use the first free one).
pub const GUEST_CID: u32 = 3;
/// The VMM's work directory and sockets in a VM's directory (the layout is `vmdir`'s).
pub use crate::vmdir::vmm_files::{API_SOCKET, CONSOLE_SOCKET, VSOCK_SOCKET, WORK_DIR};

/// The slim VMM executable (crate kobako-vmm, profile `vmm`), installed next to `kobako` by
/// `scripts/build.sh`: the VM process when it is there, since it execs quicker and is smaller in
/// memory than `kobako vmm` (which runs the same code inside the whole of kobako).
pub const SLIM_VMM: &str = "kobako-vmm";

/// Exit status of the VMM when the guest reset itself.
pub use kobako_vmm::EXIT_GUEST_RESET;

/// Exit status of `kobako vmm --snapshot-load` when it refused the snapshot (the reason is in
/// its log, `vm.log`): the VMM's "bad configuration".
pub use kobako_vmm::EXIT_BAD_CONFIGURATION as EXIT_SNAPSHOT_LOAD;

/// A vmm snapshot's files (named by `vmdir`, whose jail binds them).
pub use crate::vmdir::vmm_files::{MEMORY_FILE, RESTORE_FILE, STATE_FILE};

/// Command-line parameters the PVM-tolerant guest kernel needs on a kvm_pvm host (one
/// definition, in kobako-vmm, shared with its Linux tests).
pub use kobako_vmm::PVM_GUEST_CMDLINE as PVM_CMDLINE;

/// The own-VMM runtime.
pub struct VmmRuntime {
    /// The `kobako` executable: re-run as `kobako vm supervise DIR`, and as `kobako vmm ...` when
    /// the slim `kobako-vmm` is not next to it ([`VmmRuntime::vmm_program`]).
    pub kobako_exe: PathBuf,
    /// The jail around each VMM process ([`crate::jail`]).
    pub jail: JailConfig,
    /// The VMM's per-thread seccomp filters (on by default; off only for debugging).
    pub seccomp: bool,
}

impl VmmRuntime {
    pub fn new(kobako_exe: PathBuf) -> VmmRuntime {
        VmmRuntime {
            kobako_exe,
            jail: JailConfig::default(),
            seccomp: true,
        }
    }

    /// The VM process's program and the arguments before the VMM's own: `kobako-vmm` found
    /// next to the kobako executable ([`SLIM_VMM`]), else `kobako vmm` (said once per process).
    pub fn vmm_program(&self) -> (PathBuf, Vec<String>) {
        match slim_vmm_beside(&self.kobako_exe) {
            Some(slim) => (slim, Vec::new()),
            None => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        "{SLIM_VMM} is not next to {} (scripts/build.sh installs it there): VMs \
                         run as `kobako vmm`, heavier at every start",
                        self.kobako_exe.display()
                    )
                });
                (self.kobako_exe.clone(), vec!["vmm".into()])
            }
        }
    }
}

/// The slim VMM executable in the directory of `kobako_exe`, if there is one.
fn slim_vmm_beside(kobako_exe: &Path) -> Option<PathBuf> {
    let slim = kobako_exe.with_file_name(SLIM_VMM);
    slim.is_file().then_some(slim)
}

/// Is `/dev/kvm` usable by this process? The vmm runtime needs it on every host.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[async_trait::async_trait]
impl Runtime for VmmRuntime {
    fn name(&self) -> &'static str {
        "vmm"
    }

    async fn create(&self, cfg: &VmConfig) -> Result<VmDir> {
        cfg.validate()?;
        if !cfg.shares.is_empty() {
            return Err(RuntimeError::Invalid(
                "shared directories (`shares:`, virtio-9p) need the QEMU runtime: the own VMM \
                 has no 9p device; use --runtime qemu, or copy the files in with `files:`"
                    .into(),
            ));
        }
        if !kvm_usable() {
            return Err(RuntimeError::Invalid(
                "the vmm runtime needs a usable /dev/kvm (load kvm_intel/kvm_amd and check the \
                 permissions), or use --runtime qemu"
                    .into(),
            ));
        }
        let vm = VmDir::for_name(&cfg.name);
        if vm.exists() {
            if vm.supervisor_pid().is_some() || vm.vm_pid().is_some() {
                return Err(RuntimeError::Exists(cfg.name.clone()));
            }
            vm.remove()?;
        }
        let pvm = crate::host::kvm_is_pvm();
        // vmm.json also serves a restored VM: a guest reboot boots it afresh from its disks.
        let fc = Self::config_file(cfg, &vm.path, pvm)?;
        let restore = match cfg.incoming {
            Some(_) => Some(Self::restore_file(cfg, &vm.path)?),
            None => None,
        };
        let work = vm.file(WORK_DIR);
        std::fs::create_dir_all(&work).map_err(io(format!("create {}", work.display())))?;
        let mut config_files = vec![vm.file("vmm.json")];
        if restore.is_some() {
            config_files.push(vm.file(RESTORE_FILE));
        }
        // A restore reads its snapshot's state and memory files.
        if let Some(state) = &cfg.incoming {
            config_files.push(state.clone());
            config_files.push(state.with_file_name(MEMORY_FILE));
        }
        let (program, program_args) = self.vmm_program();
        let jail = crate::jail::decide(&vm, &self.jail, || {
            Jail::for_vmm(cfg, &self.jail, &program, &vm.path, &config_files, &work)
        })?;
        let p = |f: &str| vm.file(f).display().to_string();
        let (how, what) = match restore {
            Some(_) => ("--snapshot-load", RESTORE_FILE),
            None => ("--config-file", "vmm.json"),
        };
        let launch = Launch {
            netns: cfg.netns.clone(),
            argv: std::iter::once(program.display().to_string())
                .chain(program_args)
                .chain([
                    "--id".into(),
                    cfg.name.clone(),
                    "--api-sock".into(),
                    p(API_SOCKET),
                    how.into(),
                    p(what),
                    "--level".into(),
                    "Info".into(),
                ])
                .chain((!self.seccomp).then(|| "--no-seccomp".to_string()))
                .collect(),
            channel: GuestChannel::Vsock {
                uds_path: vm.file(VSOCK_SOCKET),
                port: kobako_agent::proto::VSOCK_PORT,
                api_sock: vm.file(API_SOCKET),
            },
            runtime: "vmm".into(),
            reset_exit_code: Some(EXIT_GUEST_RESET),
            console_log_from: Some(vm.file(CONSOLE_SOCKET)),
            incoming_fd: None,
            // kobako-vmm binds its own sockets, in its work directory.
            pass: Vec::new(),
            jail: jail.clone(),
        };
        let r = write_json(&vm.file("vmm.json"), &fc)
            .and_then(|_| match &restore {
                Some(r) => write_json(&vm.file(RESTORE_FILE), r),
                None => Ok(()),
            })
            .and_then(|_| write_json(&vm.file("config.json"), cfg))
            .and_then(|_| write_json(&vm.file("launch.json"), &launch));
        if let Err(e) = r {
            crate::jail::release(&vm.path, jail.as_ref());
            let _ = vm.remove();
            return Err(e);
        }
        Ok(vm)
    }

    async fn start(&self, vm: &VmDir) -> Result<()> {
        // A restarted VM (same directory) must not inherit an old stop request.
        let _ = std::fs::remove_file(vm.file("stopping"));
        start_supervised(&self.kobako_exe, vm, API_SOCKET, "kobako vmm").await?;
        if vm.config()?.incoming.is_some() {
            wait_restored(vm).await?;
        }
        Ok(())
    }

    async fn snapshot(
        &self,
        vm: &VmDir,
        dest: &Path,
        leave_paused: bool,
    ) -> Result<crate::snapshot::Manifest> {
        let cfg = crate::snapshot::begin(vm, dest)?;
        match self.take(vm, &cfg, dest, leave_paused).await {
            Ok(m) => Ok(m),
            Err(e) => Err(crate::snapshot::failed(vm, &cfg, dest, e)),
        }
    }

    /// Refused (with the reason) when the snapshot is another runtime's, another kobako
    /// version's (the VMM's state format goes with it), the kernel changed, a file has the wrong
    /// size or (with `verify`) checksum. The configuration restores through
    /// `kobako vmm --snapshot-load` ([`Self::restore_file`]) with a new qcow2 overlay on the
    /// snapshot's root copy.
    fn restore_config(
        &self,
        dir: &Path,
        name: &str,
        overlay_dir: &Path,
        verify: bool,
    ) -> Result<VmConfig> {
        let m = load(dir, verify)?;
        crate::snapshot::restore_config_with(dir, &m, name, overlay_dir, dir.join(STATE_FILE), true)
    }

    async fn stop(&self, vm: &VmDir, grace: Duration) -> Result<()> {
        let _ = std::fs::write(vm.file("stopping"), b"");
        if let Some(pid) = vm.vm_pid() {
            // Ctrl-Alt-Del: the agent (PID 1) takes it as a shutdown request; the guest resets,
            // the VMM exits and `stopping` keeps the supervisor from starting it again.
            let asked = self
                .api(
                    vm,
                    "PUT",
                    "/actions",
                    Some(r#"{"action_type": "SendCtrlAltDel"}"#),
                )
                .is_ok();
            if !(asked && wait_gone(pid, grace).await) {
                // SAFETY: kill(2) on the VM process pid recorded by its supervisor.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                wait_gone(pid, Duration::from_secs(2)).await;
            }
        }
        finish(vm).await
    }

    async fn kill(&self, vm: &VmDir) -> Result<()> {
        let _ = std::fs::write(vm.file("stopping"), b"");
        if let Some(pid) = vm.vm_pid() {
            // SAFETY: kill(2) on the VM process pid recorded by its supervisor.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_gone(pid, Duration::from_secs(2)).await;
        }
        finish(vm).await
    }

    async fn pause(&self, vm: &VmDir) -> Result<()> {
        if vm.vm_pid().is_none() {
            return Err(RuntimeError::NotRunning(vm.name.clone()));
        }
        self.api(vm, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
    }

    async fn resume(&self, vm: &VmDir) -> Result<()> {
        if vm.vm_pid().is_none() {
            return Err(RuntimeError::NotRunning(vm.name.clone()));
        }
        self.api(vm, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
    }

    async fn status(&self, vm: &VmDir) -> Result<VmStatus> {
        let cfg = vm.config()?;
        let pid = vm.vm_pid();
        let booted = vm.booted();
        // A restored guest never signals boot again: its agent's Ready says it runs.
        let up = booted.is_some() || vm.ready().is_some();
        let state = match (pid, up) {
            (None, _) => VmState::Exited,
            (Some(_), false) => VmState::Booting,
            (Some(_), true) => {
                if instance_state(vm).as_deref() == Some("Paused") {
                    VmState::Paused
                } else {
                    VmState::Running
                }
            }
        };
        Ok(VmStatus {
            name: cfg.name,
            state,
            pid,
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            accel: cfg.accel,
            // A restored VM: the time to its agent's Ready, as for QEMU restores (the VMM's own
            // record is only its load).
            boot_ms: match cfg.incoming {
                Some(_) => vm.ready().map(|r| r.boot_ms),
                None => booted
                    .map(|b| b.boot_ms)
                    .or_else(|| vm.ready().map(|r| r.boot_ms)),
            },
            exit: pid
                .is_none()
                .then(|| vm.exit())
                .flatten()
                .map(|e| e.describe()),
        })
    }

    fn console(&self, vm: &VmDir) -> Console {
        Console {
            socket: vm.file(CONSOLE_SOCKET),
            log: vm.file("console.log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KernelKind, Root};
    use crate::Accel;

    #[test]
    fn the_slim_vmm_next_to_kobako_is_the_vm_program() {
        let d = tempfile::tempdir().unwrap();
        let kobako = d.path().join("kobako");
        std::fs::write(&kobako, b"").unwrap();
        let rt = VmmRuntime::new(kobako.clone());
        assert_eq!(rt.vmm_program(), (kobako.clone(), vec!["vmm".to_string()]));
        std::fs::create_dir(d.path().join(SLIM_VMM)).unwrap();
        assert_eq!(
            rt.vmm_program().0,
            kobako,
            "a directory of that name is not it"
        );
        std::fs::remove_dir(d.path().join(SLIM_VMM)).unwrap();
        std::fs::write(d.path().join(SLIM_VMM), b"").unwrap();
        assert_eq!(rt.vmm_program(), (d.path().join(SLIM_VMM), Vec::new()));
    }

    pub(super) fn cfg(root: Root) -> VmConfig {
        VmConfig {
            name: "t".into(),
            kernel: "/boot/vmlinux".into(),
            kernel_kind: KernelKind::ElfPvh,
            root,
            vcpus: 2,
            memory_mib: 96,
            extra_cmdline: "foo=bar".into(),
            accel: Accel::Kvm,
            ready_timeout_secs: 60,
            owned_paths: Vec::new(),
            extra_disks: Vec::new(),
            nics: Vec::new(),
            netns: None,
            incoming: None,
            cgroups: Vec::new(),
            memory_file: None,
            named_ram: false,
            shares: Vec::new(),
        }
    }
}
