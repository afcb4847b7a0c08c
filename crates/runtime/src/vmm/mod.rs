//! The `vmm` runtime: kobako's own KVM VMM (crate kobako-vmm) as the VM process: the slim
//! `kobako-vmm` executable next to `kobako`, or `kobako vmm` when it is missing (or another
//! build, `--vmm-bin`). The same runtime runs Firecracker (`--runtime firecracker`): what
//! differs between the two is [`flavor`]'s.
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
use flavor::Boot;

mod api;
pub mod documents;
pub mod flavor;
pub mod snapshot;

pub use flavor::{find_firecracker, Flavor, FIRECRACKER};

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

/// The own-VMM runtime (and Firecracker's: [`VmmRuntime::firecracker`]).
pub struct VmmRuntime {
    /// The `kobako` executable: re-run as `kobako vm supervise DIR`, and as `kobako vmm ...` when
    /// the slim `kobako-vmm` is not next to it ([`VmmRuntime::vmm_program`]).
    pub kobako_exe: PathBuf,
    /// The jail around each VMM process ([`crate::jail`]).
    pub jail: JailConfig,
    /// The VMM's per-thread seccomp filters (on by default; off only for debugging).
    pub seccomp: bool,
    /// Which VMM this runtime runs: kobako-vmm or Firecracker.
    pub flavor: Flavor,
    /// The VMM program (`--vmm-bin`); None: kobako-vmm's usual one, or `firecracker` on `PATH`
    /// (looked up when a VM is created).
    pub program: Option<PathBuf>,
}

impl VmmRuntime {
    pub fn new(kobako_exe: PathBuf) -> VmmRuntime {
        VmmRuntime {
            kobako_exe,
            jail: JailConfig::default(),
            seccomp: true,
            flavor: Flavor::Kobako,
            program: None,
        }
    }

    /// The runtime that runs Firecracker: `program`, or `firecracker` on `PATH`.
    pub fn firecracker(kobako_exe: PathBuf, program: Option<PathBuf>) -> VmmRuntime {
        VmmRuntime {
            flavor: Flavor::Firecracker,
            program,
            ..VmmRuntime::new(kobako_exe)
        }
    }

    /// The VM process's program and the arguments before the VMM's own: the one this runtime
    /// was given; for Firecracker `firecracker` on `PATH` (an error naming where it looked when
    /// there is none); for kobako-vmm the slim `kobako-vmm` found next to the kobako executable
    /// ([`SLIM_VMM`]), else `kobako vmm` (said once per process).
    pub fn vmm_program(&self) -> Result<(PathBuf, Vec<String>)> {
        if let Some(p) = &self.program {
            return Ok((p.clone(), Vec::new()));
        }
        if self.flavor == Flavor::Firecracker {
            let path = std::env::var_os("PATH");
            return find_firecracker(path.as_deref()).map(|p| (p, Vec::new()));
        }
        Ok(match slim_vmm_beside(&self.kobako_exe) {
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
        })
    }

    /// How the supervisor runs the VMM of `cfg` in VM directory `vm` (`program` and
    /// `program_args` from [`Self::vmm_program`]): its command line, the agent channel over
    /// vsock, what its exit status means, where its console is.
    pub fn launch(
        &self,
        cfg: &VmConfig,
        vm: &VmDir,
        (program, program_args): (&Path, &[String]),
        jail: Option<crate::jail::Jail>,
    ) -> Result<Launch> {
        let fl = self.flavor;
        let (boot_file, restore_file) = (vm.file("vmm.json"), vm.file(RESTORE_FILE));
        let boot = match cfg.incoming {
            Some(_) => Boot::SnapshotLoad(&restore_file),
            None => Boot::ConfigFile(&boot_file),
        };
        let api_sock = vm.file(API_SOCKET);
        let argv = flavor::argv(
            fl,
            program,
            program_args,
            &cfg.name,
            &api_sock,
            boot,
            self.seccomp,
        )?;
        let kobako = fl.kobako_extensions();
        Ok(Launch {
            netns: cfg.netns.clone(),
            argv,
            channel: GuestChannel::Vsock {
                uds_path: vm.file(VSOCK_SOCKET),
                port: kobako_agent::proto::VSOCK_PORT,
                api_sock: api_sock.clone(),
                boot_signal: kobako,
            },
            runtime: fl.runtime_name().into(),
            reset_exit_code: Some(fl.reset_exit_code()),
            // kobako-vmm serves its console on a socket of its own; Firecracker's is its
            // standard input and output, which the supervisor serves.
            console_log_from: kobako.then(|| vm.file(CONSOLE_SOCKET)),
            console_stdio: !kobako,
            stale_sockets: vec![api_sock, vm.file(VSOCK_SOCKET)],
            incoming_fd: None,
            // The VMM binds its own sockets, in its work directory.
            pass: Vec::new(),
            jail,
        })
    }
}

impl VmmRuntime {
    /// Snapshots need kobako-vmm: a restore gives the new VM its own disks, taps, vsock socket
    /// and console (`--snapshot-load` with drive overrides), which Firecracker cannot (its
    /// snapshot load has no drive overrides, nor a way to boot from it at process start).
    fn snapshots_supported(&self, what: &str) -> Result<()> {
        match self.flavor {
            Flavor::Kobako => Ok(()),
            Flavor::Firecracker => Err(RuntimeError::Invalid(format!(
                "{what}: the firecracker runtime does not take or restore snapshots (a restore \
                 gives the new VM its own disks, which Firecracker's snapshot load cannot); use \
                 --runtime vmm or --runtime qemu"
            ))),
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
        self.flavor.runtime_name()
    }

    async fn create(&self, cfg: &VmConfig) -> Result<VmDir> {
        cfg.validate()?;
        if !cfg.shares.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "shared directories (`shares:`, virtio-9p) need the QEMU runtime: the {} \
                 runtime has no 9p device; use --runtime qemu, or copy the files in with \
                 `files:`",
                self.name()
            )));
        }
        self.flavor.check(cfg)?;
        // The program first: a missing Firecracker is said before anything else.
        let (program, program_args) = self.vmm_program()?;
        if !kvm_usable() {
            return Err(RuntimeError::Invalid(format!(
                "the {} runtime needs a usable /dev/kvm (load kvm_intel/kvm_amd and check the \
                 permissions), or use --runtime qemu",
                self.name()
            )));
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
        let fc = Self::config_file_for(self.flavor, cfg, &vm.path, pvm)?;
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
        let jail = crate::jail::decide(&vm, &self.jail, || {
            Jail::for_vmm(cfg, &self.jail, &program, &vm.path, &config_files, &work)
        })?;
        let launch = match self.launch(cfg, &vm, (&program, &program_args), jail.clone()) {
            Ok(l) => l,
            Err(e) => {
                crate::jail::release(&vm.path, jail.as_ref());
                let _ = vm.remove();
                return Err(e);
            }
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
        start_supervised(&self.kobako_exe, vm, API_SOCKET, self.flavor.program_name()).await?;
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
        self.snapshots_supported(&vm.name)?;
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
        self.snapshots_supported(&dir.display().to_string())?;
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
            socket: match self.flavor {
                Flavor::Kobako => vm.file(CONSOLE_SOCKET),
                // The supervisor's, serving Firecracker's standard input and output.
                Flavor::Firecracker => vm.file("console.sock"),
            },
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
        let mut rt = VmmRuntime::new(kobako.clone());
        assert_eq!(
            rt.vmm_program().unwrap(),
            (kobako.clone(), vec!["vmm".to_string()])
        );
        std::fs::create_dir(d.path().join(SLIM_VMM)).unwrap();
        assert_eq!(
            rt.vmm_program().unwrap().0,
            kobako,
            "a directory of that name is not it"
        );
        std::fs::remove_dir(d.path().join(SLIM_VMM)).unwrap();
        std::fs::write(d.path().join(SLIM_VMM), b"").unwrap();
        assert_eq!(
            rt.vmm_program().unwrap(),
            (d.path().join(SLIM_VMM), Vec::new())
        );
        // --vmm-bin: that program, as it is.
        rt.program = Some("/opt/vmm/kobako-vmm".into());
        assert_eq!(
            rt.vmm_program().unwrap(),
            ("/opt/vmm/kobako-vmm".into(), Vec::new())
        );
        let fc = VmmRuntime::firecracker(kobako, Some("/opt/fc/firecracker".into()));
        assert_eq!(
            fc.vmm_program().unwrap().0,
            Path::new("/opt/fc/firecracker")
        );
        assert_eq!(fc.name(), "firecracker");
    }

    /// What the supervisor is told for each VMM: the command line, the exit status of a reset,
    /// where the console is, whether the boot signal is polled.
    #[test]
    fn each_flavor_is_launched_its_way() {
        let c = cfg(Root::Initramfs {
            path: "/i.cpio".into(),
        });
        let vm = VmDir {
            name: "t".into(),
            path: "/run/kobako/vms/t".into(),
        };
        let fc = VmmRuntime::firecracker("/usr/bin/kobako".into(), None);
        let l = fc
            .launch(&c, &vm, (Path::new("/opt/firecracker"), &[]), None)
            .unwrap();
        assert_eq!(l.runtime, "firecracker");
        assert_eq!(l.reset_exit_code, Some(0));
        assert!(l.console_stdio && l.console_log_from.is_none());
        assert_eq!(l.argv[0], "/opt/firecracker");
        assert!(l.argv.contains(&"--config-file".to_string()));
        let GuestChannel::Vsock {
            boot_signal,
            uds_path,
            ..
        } = &l.channel
        else {
            panic!("{:?}", l.channel)
        };
        assert!(!boot_signal, "Firecracker has no GET /kobako/boot-time");
        assert_eq!(uds_path, Path::new("/run/kobako/vms/t/vmm/vsock.sock"));
        assert_eq!(
            l.stale_sockets,
            [
                PathBuf::from("/run/kobako/vms/t/vmm/api.sock"),
                PathBuf::from("/run/kobako/vms/t/vmm/vsock.sock")
            ]
        );

        let k = VmmRuntime::new("/usr/bin/kobako".into());
        let l = k
            .launch(
                &c,
                &vm,
                (Path::new("/usr/bin/kobako"), &["vmm".into()]),
                None,
            )
            .unwrap();
        assert_eq!(l.runtime, "vmm");
        assert_eq!(l.reset_exit_code, Some(EXIT_GUEST_RESET));
        assert!(!l.console_stdio);
        assert_eq!(
            l.console_log_from.as_deref(),
            Some(Path::new("/run/kobako/vms/t/vmm/console.sock"))
        );
        assert!(matches!(
            l.channel,
            GuestChannel::Vsock {
                boot_signal: true,
                ..
            }
        ));
        // A restore boots with --snapshot-load on kobako-vmm; Firecracker refuses it.
        let mut r = c.clone();
        r.incoming = Some("/snap/vmstate.bin".into());
        let l = k
            .launch(&r, &vm, (Path::new("/usr/bin/kobako-vmm"), &[]), None)
            .unwrap();
        assert!(l.argv.contains(&"--snapshot-load".to_string()));
        assert!(fc
            .launch(&r, &vm, (Path::new("/opt/firecracker"), &[]), None)
            .is_err());
        let e = fc
            .restore_config(Path::new("/snap"), "x", Path::new("/ov"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not take or restore snapshots") && e.contains("--runtime vmm"),
            "{e}"
        );
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
            free_page_reporting: false,
            shares: Vec::new(),
        }
    }
}
