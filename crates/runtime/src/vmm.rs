//! The `vmm` runtime: kobako's own KVM VMM (`kobako vmm`, crate kobako-vmm) as the VM process.
//!
//! The VMM is configured by a Firecracker-format `vmm.json` (`--config-file`, so it boots at once)
//! and keeps its API socket (`api.sock`) for control: pause/resume (`PATCH /vm`), Ctrl-Alt-Del,
//! state, and the guest's boot-complete signal (`GET /kobako/boot-time`). The serial console is
//! the VMM's `unix:` console socket (`console.sock`), which the supervisor copies into
//! `console.log`.
//!
//! Devices: the root disk (initramfs or a raw/qcow2 disk as `/dev/vda`), extra disks, NICs on
//! their taps (the supervisor starts the VMM inside the VM's network namespace, where the taps
//! are), virtio-rng, and vsock, whose host side is Firecracker's (`vsock.sock`, `CONNECT
//! 1024\n`): the supervisor reaches the agent through it, so `vm exec`/`cp`/`shell` and
//! readiness work as with QEMU. The command line also carries `kobako.bootmark=1`: the agent
//! writes 123 to port 0x3f0 first, the VMM records the boot time (`booted.json`), and a guest
//! without AF_VSOCK is still seen booting (readiness falls back to that signal).
//!
//! Resets: guests get `reboot=k` (the i8042 reset, the VMM's exit status 80); the supervisor
//! starts a new VMM process then, like QEMU's reset button, unless `vm stop` is under way.
//! On PVM hosts (kvm_pvm) the command line also gets the PVM-tolerant kernel's workarounds
//! (crates/vmm/guest-pvm), since an unpatched kernel cannot boot there at all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Root, VmConfig};
use crate::qemu::{finish, start_supervised, wait_gone};
use crate::vmdir::{write_json, GuestChannel, Launch, VmDir};
use crate::{io, Console, Result, Runtime, RuntimeError, VmState, VmStatus};

/// The guest's vsock CID (each VM has its own VMM and socket, so all can use the first free one).
pub const GUEST_CID: u32 = 3;
/// The VMM's vsock `uds_path` in the VM directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// Exit status of `kobako vmm` when the guest reset itself (kobako_vmm::EXIT_GUEST_RESET).
pub const EXIT_GUEST_RESET: i32 = 80;

/// Command-line parameters the PVM-tolerant guest kernel needs on a kvm_pvm host (one
/// definition, in kobako-vmm, shared with its Linux tests).
pub use kobako_vmm::PVM_GUEST_CMDLINE as PVM_CMDLINE;

/// The own-VMM runtime.
pub struct VmmRuntime {
    /// The `kobako` executable: re-run as `kobako vm supervise DIR` and as `kobako vmm ...`.
    pub kobako_exe: PathBuf,
}

impl VmmRuntime {
    pub fn new(kobako_exe: PathBuf) -> VmmRuntime {
        VmmRuntime { kobako_exe }
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
            "serial": { "serial_out_path": format!("unix:{}", dir.join("console.sock").display()) },
        }))
    }

    fn api(&self, vm: &VmDir, method: &str, path: &str, body: Option<&str>) -> Result<()> {
        let r = crate::fcapi::request(
            &vm.file("api.sock"),
            method,
            path,
            body,
            Duration::from_secs(5),
        )
        .map_err(io(format!("VMM API of '{}'", vm.name)))?;
        if r.status / 100 == 2 {
            Ok(())
        } else {
            Err(RuntimeError::Invalid(format!(
                "VMM API {method} {path} of '{}': {} {}",
                vm.name, r.status, r.body
            )))
        }
    }
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
        let fc = Self::config_file(cfg, &vm.path, pvm)?;
        std::fs::create_dir_all(&vm.path).map_err(io(format!("create {}", vm.path.display())))?;
        let p = |f: &str| vm.file(f).display().to_string();
        let launch = Launch {
            netns: cfg.netns.clone(),
            argv: vec![
                self.kobako_exe.display().to_string(),
                "vmm".into(),
                "--id".into(),
                cfg.name.clone(),
                "--api-sock".into(),
                p("api.sock"),
                "--config-file".into(),
                p("vmm.json"),
                "--level".into(),
                "Info".into(),
            ],
            channel: GuestChannel::Vsock {
                uds_path: vm.file(VSOCK_SOCKET),
                port: kobako_agent::proto::VSOCK_PORT,
                api_sock: vm.file("api.sock"),
            },
            runtime: "vmm".into(),
            reset_exit_code: Some(EXIT_GUEST_RESET),
            console_log_from: Some(vm.file("console.sock")),
        };
        let r = write_json(&vm.file("vmm.json"), &fc)
            .and_then(|_| write_json(&vm.file("config.json"), cfg))
            .and_then(|_| write_json(&vm.file("launch.json"), &launch));
        if let Err(e) = r {
            let _ = vm.remove();
            return Err(e);
        }
        Ok(vm)
    }

    async fn start(&self, vm: &VmDir) -> Result<()> {
        // A restarted VM (same directory) must not inherit an old stop request.
        let _ = std::fs::remove_file(vm.file("stopping"));
        start_supervised(&self.kobako_exe, vm, "api.sock", "kobako vmm").await
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
        let state = match (pid, &booted) {
            (None, _) => VmState::Exited,
            (Some(_), None) => VmState::Booting,
            (Some(_), Some(_)) => {
                let paused = crate::fcapi::request(
                    &vm.file("api.sock"),
                    "GET",
                    "/",
                    None,
                    Duration::from_secs(2),
                )
                .ok()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
                .is_some_and(|v| v["state"] == "Paused");
                if paused {
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
            boot_ms: booted.map(|b| b.boot_ms),
        })
    }

    fn console(&self, vm: &VmDir) -> Console {
        Console {
            socket: vm.file("console.sock"),
            log: vm.file("console.log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KernelKind;
    use crate::Accel;

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
        assert_eq!(v["serial"]["serial_out_path"], "unix:/run/x/console.sock");
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
        assert_eq!(v["vsock"]["uds_path"], "/run/x/vsock.sock");
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
}
