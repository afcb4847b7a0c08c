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

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Root, VmConfig};
use crate::jail::{Jail, JailConfig};
use crate::supervised::{finish, start_supervised, wait_gone};
use crate::vmdir::{write_json, GuestChannel, Launch, VmDir};
use crate::{io, Console, Result, Runtime, RuntimeError, VmState, VmStatus};

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

    /// The guest command line: the common one, then what this runtime needs last (later
    /// `reboot=` wins).
    pub fn cmdline(cfg: &VmConfig, pvm: bool) -> String {
        let mut c = cfg.cmdline();
        if pvm {
            c.push(' ');
            c.push_str(PVM_CMDLINE);
        }
        c.push_str(" reboot=k kobako.bootmark=1");
        c
    }

    /// The Firecracker-format configuration file of a VM: kernel and initramfs or root disk,
    /// extra disks (raw or qcow2: the VMM reads the format from the file), NICs on their taps
    /// (opened in the VM's network namespace, which the supervisor enters), the vsock device
    /// for the agent channel, an entropy device, and the console socket.
    pub fn config_file(cfg: &VmConfig, dir: &Path, pvm: bool) -> Result<serde_json::Value> {
        let check_format = |what: &str, format: &str| -> Result<()> {
            if format == "raw" || format == "qcow2" {
                Ok(())
            } else {
                Err(RuntimeError::Invalid(format!(
                    "{what}: format {format:?} is not supported by the vmm runtime (raw or \
                     qcow2), or use --runtime qemu"
                )))
            }
        };
        let mut boot = serde_json::json!({
            "kernel_image_path": cfg.kernel,
            "boot_args": Self::cmdline(cfg, pvm),
        });
        let mut drives = Vec::new();
        match &cfg.root {
            Root::Initramfs { path } => boot["initrd_path"] = serde_json::json!(path),
            Root::Disk {
                path,
                format,
                read_only,
            } => {
                check_format("root disk", format)?;
                drives.push(serde_json::json!({
                    "drive_id": "root",
                    "path_on_host": path,
                    "is_root_device": true,
                    "is_read_only": read_only,
                    // Never probed: a guest-written raw disk must stay raw.
                    "image_format": format,
                }));
            }
        }
        // Drive and interface ids sort in the guest's order (the VMM keeps them by id).
        for (i, d) in cfg.extra_disks.iter().enumerate() {
            check_format(&format!("disk {}", d.path.display()), &d.format)?;
            drives.push(serde_json::json!({
                "drive_id": format!("disk{:02}", i + 1),
                "path_on_host": d.path,
                "is_root_device": false,
                "is_read_only": d.read_only,
                "image_format": d.format,
            }));
        }
        let nics: Vec<_> = cfg
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({
                    "iface_id": format!("net{i:02}"),
                    "host_dev_name": n.tap,
                    "guest_mac": n.mac,
                })
            })
            .collect();
        Ok(serde_json::json!({
            "boot-source": boot,
            "machine-config": {
                "vcpu_count": cfg.vcpus,
                "mem_size_mib": cfg.memory_mib,
            },
            "drives": drives,
            "network-interfaces": nics,
            "vsock": {
                "guest_cid": GUEST_CID,
                "uds_path": dir.join(VSOCK_SOCKET),
            },
            "entropy": {},
            "serial": { "serial_out_path": format!("unix:{}", dir.join(CONSOLE_SOCKET).display()) },
        }))
    }

    fn api(&self, vm: &VmDir, method: &str, path: &str, body: Option<&str>) -> Result<()> {
        api_call(vm, method, path, body, Duration::from_secs(5)).map(|_| ())
    }

    /// The `--snapshot-load` document restoring `cfg` (made by [`Runtime::restore_config`]:
    /// `incoming` is the snapshot's VM state file, `memory.bin` beside it) in VM directory
    /// `dir`: the memory file mapped privately, the guest resumed at once, and the new VM's own
    /// host resources in place of the snapshot's: its taps (interface ids `net00`.. as
    /// [`Self::config_file`] names them), its vsock socket, its disks (the root overlay,
    /// private copies) and its console socket.
    pub fn restore_file(cfg: &VmConfig, dir: &Path) -> Result<serde_json::Value> {
        let Some(state) = &cfg.incoming else {
            return Err(RuntimeError::Invalid(format!(
                "VM '{}' is not a restore (no snapshot state file)",
                cfg.name
            )));
        };
        let memory = state.with_file_name(MEMORY_FILE);
        let mut drives = Vec::new();
        if let Root::Disk { path, .. } = &cfg.root {
            drives.push(serde_json::json!({"drive_id": "root", "path_on_host": path}));
        }
        for (i, d) in cfg.extra_disks.iter().enumerate() {
            drives.push(serde_json::json!({
                "drive_id": format!("disk{:02}", i + 1),
                "path_on_host": d.path,
            }));
        }
        let nics: Vec<_> = cfg
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| serde_json::json!({"iface_id": format!("net{i:02}"), "host_dev_name": n.tap}))
            .collect();
        let mut v = serde_json::json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": memory},
            "resume_vm": true,
            "vsock_override": {"uds_path": dir.join(VSOCK_SOCKET)},
            "serial": { "serial_out_path": format!("unix:{}", dir.join(CONSOLE_SOCKET).display()) },
        });
        if !nics.is_empty() {
            v["network_overrides"] = serde_json::Value::Array(nics);
        }
        if !drives.is_empty() {
            v["drive_overrides"] = serde_json::Value::Array(drives);
        }
        Ok(v)
    }

    /// Pause, `PUT /snapshot/create`, copy the writable disks, resume (unless `leave_paused`),
    /// then the manifest.
    async fn take(
        &self,
        vm: &VmDir,
        cfg: &VmConfig,
        dest: &Path,
        leave_paused: bool,
    ) -> Result<crate::snapshot::Manifest> {
        let was_running = instance_state(vm).as_deref() == Some("Running");
        let t0 = std::time::Instant::now();
        if was_running {
            self.api(vm, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#))?;
        }
        // The VMM writes its files where its jail lets it, its work directory (the same path
        // inside and out); kobako takes them out into `dest` without trusting that directory.
        let staged = |f: &str| vm.file(WORK_DIR).join(format!("snapshot.{f}"));
        let body = serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": staged(STATE_FILE),
            "mem_file_path": staged(MEMORY_FILE),
        })
        .to_string();
        let jail = vm.launch().ok().and_then(|l| l.jail);
        let result = {
            let (vm, dest, cfg) = (vm.clone(), dest.to_path_buf(), cfg.clone());
            let staged = [staged(STATE_FILE), staged(MEMORY_FILE)];
            // Writing the memory file takes a while for large guests: off the async threads.
            tokio::task::spawn_blocking(move || {
                for f in &staged {
                    let _ = std::fs::remove_file(f);
                }
                // The staged memory counts against the VM's own memory limit while it exists.
                let _raised = jail
                    .as_ref()
                    .map(|j| crate::jail::raise_memory(&j.cgroup, u64::from(cfg.memory_mib)));
                let made = api_call(
                    &vm,
                    "PUT",
                    "/snapshot/create",
                    Some(&body),
                    Duration::from_secs(300),
                )
                .and_then(|_| {
                    crate::jail::take_out(&staged[0], &dest.join(STATE_FILE))?;
                    crate::jail::take_out(&staged[1], &dest.join(MEMORY_FILE))
                });
                for f in &staged {
                    let _ = std::fs::remove_file(f);
                }
                made?;
                // The VMM flushed the block devices first: the copies are consistent.
                crate::snapshot::copy_disks(&cfg, &dest)
            })
            .await
            .unwrap_or_else(|e| Err(RuntimeError::Invalid(format!("snapshot task: {e}"))))
        };
        let paused_ms = t0.elapsed().as_millis() as u64;
        if was_running && !leave_paused {
            self.api(vm, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))?;
        }
        let (root, extra) = result?;
        crate::snapshot::write_manifest(
            vm,
            cfg,
            dest,
            crate::snapshot::Saved {
                runtime: "vmm",
                qemu_version: String::new(),
                memory: MEMORY_FILE,
                vmstate: Some(STATE_FILE),
                ram: None,
                root,
                extra,
                paused_ms,
            },
        )
    }
}

/// One request to a VM's VMM API; a refusal becomes an error with the VMM's reason.
fn api_call(
    vm: &VmDir,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let r = crate::fcapi::request(&vm.file(API_SOCKET), method, path, body, timeout)
        .map_err(io(format!("VMM API of '{}'", vm.name)))?;
    if r.status / 100 == 2 {
        Ok(r.body)
    } else {
        let why = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or(r.body);
        Err(RuntimeError::Invalid(format!(
            "VM '{}': {method} {path} refused by the VMM ({}): {why}",
            vm.name, r.status
        )))
    }
}

/// The VMM's instance state ("Not started", "Running", "Paused"), when it answers.
fn instance_state(vm: &VmDir) -> Option<String> {
    let r = crate::fcapi::request(
        &vm.file(API_SOCKET),
        "GET",
        "/",
        None,
        Duration::from_secs(2),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v["state"].as_str().map(str::to_string)
}

/// After `kobako vmm --snapshot-load`: waits until the VMM has restored and resumed the guest,
/// or fails with the VMM's reason (it exits with [`EXIT_SNAPSHOT_LOAD`] and logs why).
async fn wait_restored(vm: &VmDir) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if vm.vm_pid().is_none() {
            // Give the supervisor a moment to record the exit.
            for _ in 0..100 {
                if vm.exit().is_some() || vm.supervisor_pid().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let how = vm
                .exit()
                .map(|e| match e.code {
                    Some(EXIT_SNAPSHOT_LOAD) => "the VMM refused the snapshot".to_string(),
                    _ => e.describe(),
                })
                .unwrap_or_else(|| "the VMM ended".into());
            return Err(RuntimeError::ExitedEarly {
                name: vm.name.clone(),
                how,
                console: crate::vmdir::tail(&vm.file("vm.log"), 8),
            });
        }
        match instance_state(vm).as_deref() {
            Some("Running") | Some("Paused") => return Ok(()),
            _ if std::time::Instant::now() > deadline => {
                return Err(RuntimeError::ReadyTimeout {
                    name: vm.name.clone(),
                    secs: 120,
                    console: crate::vmdir::tail(&vm.file("vm.log"), 8),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Reads and checks a vmm snapshot against this host (see [`VmmRuntime::restore_config`]).
pub fn load(dir: &Path, verify: bool) -> Result<crate::snapshot::Manifest> {
    let ours = env!("CARGO_PKG_VERSION");
    crate::snapshot::load_for(dir, "vmm", verify, |m| {
        if m.kobako_version != ours {
            Some(format!(
                "made by kobako {}, this is kobako {ours} (the VMM's state format goes with the \
                 version): take a new snapshot",
                m.kobako_version
            ))
        } else if m.vmstate.is_none() {
            Some(format!(
                "its VM state file ({STATE_FILE}) is not in the manifest"
            ))
        } else {
            None
        }
    })
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
    use crate::config::KernelKind;
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

    fn cfg(root: Root) -> VmConfig {
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
        }
    }

    #[test]
    fn config_file_is_firecracker_format_with_bootmark_last() {
        let c = cfg(Root::Initramfs {
            path: "/i.cpio".into(),
        });
        let v = VmmRuntime::config_file(&c, Path::new("/run/x"), false).unwrap();
        assert_eq!(v["machine-config"]["vcpu_count"], 2);
        assert_eq!(v["machine-config"]["mem_size_mib"], 96);
        assert_eq!(v["boot-source"]["initrd_path"], "/i.cpio");
        assert_eq!(
            v["serial"]["serial_out_path"],
            "unix:/run/x/vmm/console.sock"
        );
        let args = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(
            args.ends_with("foo=bar reboot=k kobako.bootmark=1"),
            "{args}"
        );
        assert!(!args.contains("kobako_pvm"));
        let pvm = VmmRuntime::cmdline(&c, true);
        assert!(pvm.contains("kobako_pvm noxsave"), "{pvm}");
    }

    #[test]
    fn disks_nics_and_vsock_are_wired() {
        let mut c = cfg(Root::Disk {
            path: "/d.qcow2".into(),
            format: "qcow2".into(),
            read_only: false,
        });
        c.extra_disks = vec![crate::config::Disk {
            path: "/seed.raw".into(),
            format: "raw".into(),
            read_only: true,
        }];
        c.nics = vec![
            crate::config::Nic {
                tap: "tap-a".into(),
                mac: "52:54:00:00:00:01".into(),
            },
            crate::config::Nic {
                tap: "tap-b".into(),
                mac: "52:54:00:00:00:02".into(),
            },
        ];
        let v = VmmRuntime::config_file(&c, Path::new("/run/x"), false).unwrap();
        assert!(v["boot-source"].get("initrd_path").is_none());
        let d = &v["drives"];
        assert_eq!(d[0]["drive_id"], "root");
        assert_eq!(d[0]["path_on_host"], "/d.qcow2");
        assert_eq!(d[0]["is_root_device"], true);
        assert_eq!(d[0]["is_read_only"], false);
        assert_eq!(d[1]["path_on_host"], "/seed.raw");
        assert_eq!(d[1]["is_read_only"], true);
        assert_eq!(
            (d[0]["image_format"].as_str(), d[1]["image_format"].as_str()),
            (Some("qcow2"), Some("raw"))
        );
        assert!(d[0]["drive_id"].as_str() > Some("") && d[1]["drive_id"] == "disk01");
        let n = &v["network-interfaces"];
        assert_eq!(n[0]["host_dev_name"], "tap-a");
        assert_eq!(n[1]["guest_mac"], "52:54:00:00:00:02");
        assert!(n[0]["iface_id"].as_str() < n[1]["iface_id"].as_str());
        assert_eq!(v["vsock"]["uds_path"], "/run/x/vmm/vsock.sock");
        assert_eq!(v["vsock"]["guest_cid"], 3);
        // The VMM's own parser takes the whole document (Firecracker's schema, no unknown field).
        let full: kobako_vmm::config::FullConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!((full.drives.len(), full.network_interfaces.len()), (2, 2));
        let args = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(args.contains("root=/dev/vda"), "{args}");

        c.extra_disks[0].format = "vmdk".into();
        let e = VmmRuntime::config_file(&c, Path::new("/x"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("raw or qcow2") && e.contains("--runtime qemu"),
            "{e}"
        );
    }

    /// A VM of the vmm runtime as the snapshot code sees it: a kernel, a qcow2 root and a
    /// private writable raw disk in `vm/`, one NIC.
    fn vm_files(d: &Path) -> VmConfig {
        std::fs::create_dir_all(d.join("vm")).unwrap();
        std::fs::write(d.join("vmlinux"), b"not really a kernel").unwrap();
        let root = d.join("vm/root.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&root)
            .arg("16M")
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::write(d.join("vm/data.raw"), vec![7u8; 4096]).unwrap();
        let mut c = cfg(Root::Disk {
            path: root,
            format: "qcow2".into(),
            read_only: false,
        });
        c.name = "orig".into();
        c.kernel = d.join("vmlinux");
        c.owned_paths = vec![d.join("vm")];
        c.extra_disks = vec![crate::config::Disk {
            path: d.join("vm/data.raw"),
            format: "raw".into(),
            read_only: false,
        }];
        c.nics = vec![crate::config::Nic {
            tap: "tap-orig".into(),
            mac: "52:54:00:00:00:01".into(),
        }];
        c
    }

    /// What `VmmRuntime::snapshot` writes after the VMM saved its two files: the disk copies
    /// and the manifest (through the shared snapshot code).
    fn fake_snapshot(d: &Path, c: &VmConfig) -> (PathBuf, crate::snapshot::Manifest) {
        let snap = d.join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join(STATE_FILE), b"KOBAKO-VMSTATE...").unwrap();
        let mem = std::fs::File::create(snap.join(MEMORY_FILE)).unwrap();
        mem.set_len(u64::from(c.memory_mib) << 20).unwrap();
        let (root, extra) = crate::snapshot::copy_disks(c, &snap).unwrap();
        let vm = VmDir {
            name: c.name.clone(),
            path: d.join("run/orig"),
        };
        let m = crate::snapshot::write_manifest(
            &vm,
            c,
            &snap,
            crate::snapshot::Saved {
                runtime: "vmm",
                qemu_version: String::new(),
                memory: MEMORY_FILE,
                vmstate: Some(STATE_FILE),
                ram: None,
                root,
                extra,
                paused_ms: 3,
            },
        )
        .unwrap();
        (snap, m)
    }

    #[test]
    fn vmm_snapshot_manifest_and_restore_document() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let c = vm_files(d);
        let (snap, m) = fake_snapshot(d, &c);
        assert_eq!((m.runtime.as_str(), m.qemu_version.as_str()), ("vmm", ""));
        assert_eq!(m.memory.size, 96 << 20);
        assert_eq!(m.vmstate.as_ref().unwrap().file, STATE_FILE);
        assert_eq!(m.root.as_ref().unwrap().file, "root.qcow2");
        assert_eq!(m.extra.len(), 1);
        assert_eq!((m.extra[0].0, m.extra[0].1.file.as_str()), (0, "disk0.raw"));
        assert_eq!(m.kernel_size, 19);
        // The manifest on disk reads back, and older manifests (QEMU's, before vmstate) too.
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(snap.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(on_disk["vmstate"]["file"], STATE_FILE);
        let mut old = on_disk.clone();
        old.as_object_mut().unwrap().remove("vmstate");
        old["qemu_version"] = "QEMU emulator version 7.2.19".into();
        let old: crate::snapshot::Manifest = serde_json::from_value(old).unwrap();
        assert!(old.vmstate.is_none());
        let mut no_qemu = on_disk;
        no_qemu.as_object_mut().unwrap().remove("qemu_version");
        assert!(serde_json::from_value::<crate::snapshot::Manifest>(no_qemu).is_ok());

        let rt = VmmRuntime::new("/usr/bin/kobako".into());
        let overlay = d.join("overlays/copy");
        let r = rt.restore_config(&snap, "copy", &overlay, true).unwrap();
        assert_eq!(r.name, "copy");
        assert_eq!(r.incoming.as_deref(), Some(snap.join(STATE_FILE).as_path()));
        assert_eq!(r.owned_paths, vec![overlay.clone()]);
        let Root::Disk {
            path,
            format,
            read_only,
        } = &r.root
        else {
            panic!("{:?}", r.root)
        };
        assert_eq!(
            (path, format.as_str(), read_only),
            (&overlay.join("root.qcow2"), "qcow2", &false)
        );
        // A new overlay on the snapshot's copy: the snapshot itself is never written.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output", "json"])
            .arg(path)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["backing-filename"].as_str(),
            Some(snap.join("root.qcow2").to_str().unwrap())
        );
        // The writable private disk is the new VM's own copy (the restored device writes to it).
        assert_eq!(r.extra_disks[0].path, overlay.join("disk0.raw"));
        assert!(!r.extra_disks[0].read_only);
        assert_eq!(
            std::fs::read(&r.extra_disks[0].path).unwrap(),
            vec![7u8; 4096]
        );

        let doc = VmmRuntime::restore_file(&r, Path::new("/run/kobako/vms/copy")).unwrap();
        assert_eq!(
            doc["snapshot_path"],
            snap.join(STATE_FILE).to_str().unwrap()
        );
        assert_eq!(doc["mem_backend"]["backend_type"], "File");
        assert_eq!(
            doc["mem_backend"]["backend_path"],
            snap.join(MEMORY_FILE).to_str().unwrap()
        );
        assert_eq!(doc["resume_vm"], true);
        assert_eq!(doc["network_overrides"][0]["iface_id"], "net00");
        assert_eq!(doc["network_overrides"][0]["host_dev_name"], "tap-orig");
        assert_eq!(
            doc["vsock_override"]["uds_path"],
            "/run/kobako/vms/copy/vmm/vsock.sock"
        );
        assert_eq!(
            doc["serial"]["serial_out_path"],
            "unix:/run/kobako/vms/copy/vmm/console.sock"
        );
        assert_eq!(doc["drive_overrides"][0]["drive_id"], "root");
        assert_eq!(
            doc["drive_overrides"][0]["path_on_host"],
            overlay.join("root.qcow2").to_str().unwrap()
        );
        assert_eq!(doc["drive_overrides"][1]["drive_id"], "disk01");
        // The VMM's own parser takes the document (no unknown field) as a File-backed load.
        let parsed: kobako_vmm::config::SnapshotLoadParams =
            serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(parsed.memory_file().unwrap(), snap.join(MEMORY_FILE));
        assert_eq!(
            (parsed.drive_overrides.len(), parsed.network_overrides.len()),
            (2, 1)
        );
        // The ids are the ones the boot configuration gave the devices.
        let fc = VmmRuntime::config_file(&r, Path::new("/run/kobako/vms/copy"), false).unwrap();
        assert_eq!(
            fc["drives"][1]["drive_id"],
            doc["drive_overrides"][1]["drive_id"]
        );
        assert_eq!(
            fc["network-interfaces"][0]["iface_id"],
            doc["network_overrides"][0]["iface_id"]
        );
        // A VM that is no restore has no such document.
        let e = VmmRuntime::restore_file(&c, Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a restore"), "{e}");
    }

    #[test]
    fn vmm_snapshots_are_refused_with_the_reason() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let c = vm_files(d);
        let (snap, m) = fake_snapshot(d, &c);
        let rt = VmmRuntime::new("/usr/bin/kobako".into());
        let refused = |verify: bool| {
            let e = rt
                .restore_config(&snap, "copy", &d.join("ov"), verify)
                .unwrap_err()
                .to_string();
            assert!(!d.join("ov").exists(), "overlay left behind after: {e}");
            e
        };
        let edit = |f: &dyn Fn(&mut crate::snapshot::Manifest)| {
            let mut m2 = m.clone();
            f(&mut m2);
            write_json(&snap.join("manifest.json"), &m2).unwrap();
        };
        assert!(load(&snap, true).is_ok());

        // Another runtime's snapshot, both ways.
        edit(&|m| m.runtime = "qemu".into());
        let e = refused(false);
        assert!(
            e.contains("made by the 'qemu' runtime") && e.contains("--runtime qemu"),
            "{e}"
        );
        edit(&|_| {});
        let e = crate::snapshot::load(Path::new("/usr/bin/qemu-system-x86_64"), &snap, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("made by the 'vmm' runtime"), "{e}");

        // Another kobako (the VMM's state format).
        edit(&|m| m.kobako_version = "0.0.1-other".into());
        let e = refused(false);
        assert!(
            e.contains("made by kobako 0.0.1-other") && e.contains("take a new snapshot"),
            "{e}"
        );
        edit(&|_| {});

        // The kernel changed: size, then (same size) content with verify.
        std::fs::write(&c.kernel, b"not really a kernel!").unwrap();
        let e = refused(false);
        assert!(e.contains("kernel") && e.contains("changed"), "{e}");
        std::fs::write(&c.kernel, b"NOT really a kernel").unwrap();
        let e = refused(true);
        assert!(e.contains("changed"), "{e}");
        std::fs::write(&c.kernel, b"not really a kernel").unwrap();

        // A truncated memory file.
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open(snap.join(MEMORY_FILE))
            .unwrap();
        mem.set_len(1 << 20).unwrap();
        let e = refused(false);
        assert!(
            e.contains("memory.bin has 1048576 bytes") && e.contains("truncated"),
            "{e}"
        );
        mem.set_len(96 << 20).unwrap();

        // A corrupted state file: found by verify only.
        std::fs::write(snap.join(STATE_FILE), b"KOBAKO-VMSTATE..!").unwrap();
        assert!(load(&snap, false).is_ok());
        let e = refused(true);
        assert!(e.contains("vmstate.bin does not match its checksum"), "{e}");

        // A missing state file, a manifest without one, no manifest at all.
        std::fs::remove_file(snap.join(STATE_FILE)).unwrap();
        let e = refused(false);
        assert!(
            e.contains("vmstate.bin") && e.contains("No such file"),
            "{e}"
        );
        edit(&|m| m.vmstate = None);
        let e = refused(false);
        assert!(
            e.contains("state file (vmstate.bin) is not in the manifest"),
            "{e}"
        );
        let e = rt
            .restore_config(d, "copy", &d.join("ov"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a kobako VM snapshot"), "{e}");
    }
}
